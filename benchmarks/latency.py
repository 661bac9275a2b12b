"""Median per-image latency of a model on 640x480 BCCD images (after warm-up).

    python benchmarks/latency.py [--model PATH] [--threads 2] [--images 50]

Times the whole predictor call (letterbox, network, decode + NMS at the operating threshold)
and reports the median and 90th percentile in ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import numpy as np

from bloodcell.data.voc import load_voc
from bloodcell.export.benchmark import latencies_ms
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", default="../shared/data/BCCD")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()

    # threads go to the model's own runtime; torch's pool is not touched for .onnx/.tflite models
    predictor = load_predictor(args.model, threads=args.threads)
    records = load_voc(args.data, split=args.split, decode_images=False).records[: args.images]
    images = [load_image(r.image_path) for r in records]
    times = latencies_ms(predictor, images, args.warmup)
    torch = sys.modules.get("torch")
    result = {
        "model": str(args.model or "shipped"),
        "input": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "threads": args.threads,
        "images": len(times),
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(float(np.percentile(times, 90)), 1),
        "torch": torch.__version__ if "torch" in sys.modules else None,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
