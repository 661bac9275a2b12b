"""Accuracy of a model on BCCD val and test: VOC mAP@0.5 per class, COCO AP, count error.

    python benchmarks/accuracy.py [--model PATH] [--splits val test]

Thresholds come from the model file (chosen on val); test is only reported.
"""

from __future__ import annotations

import argparse
import json

import torch

from bloodcell.data.voc import load_voc
from bloodcell.engine.evaluate import evaluate
from bloodcell.runtime.loader import load_predictor


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", default="../shared/data/BCCD")
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model)
    for split in args.splits:
        metrics = evaluate(predictor, load_voc(args.data, split=split).records)
        print(f"== {split}")
        print(metrics)
        print(json.dumps({"model": str(args.model or "shipped"), "split": split, **metrics.to_dict()}))


if __name__ == "__main__":
    main()
