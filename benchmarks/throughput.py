"""Archive throughput: images/s of `predict`, the local engine (1 and 2 workers) and Ray (2 workers).

    python benchmarks/throughput.py [--data ../shared/data/BCCD] [--images 364] [--device cpu] [--threads 1]
        [--configs predict,local1,local2,ray2] [--out runs/throughput]

Every configuration counts the same images (all of BCCD's JPEGImages by default, 640x480) with the
shipped model, from a cold start: the time includes loading the model in each worker (and starting
Ray), and is also given from the first finished image on ("steady"), which is what a long archive
job sees. Workers get one thread each by default, so "2 workers" is against "1 worker, 1 thread";
``--threads 0`` gives each its share of the cores, as ``bloodcell batch`` does (the GPU runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from peers import cpu_info  # benchmarks/ is the script's folder, on sys.path

from bloodcell.app.archive.engines import make_engine
from bloodcell.app.archive.rows import PredictorSpec
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_paths
from bloodcell.weights import default_model


def isa() -> str:
    cpu = cpu_info()
    return f"{cpu['model']}; {' '.join(f for f, on in cpu['flags'].items() if on) or 'no AVX2'}"


def run_engine(name: str, workers: int, threads: int | None, uris: list[str], device: str, batch: int = 1) -> dict:
    spec = PredictorSpec(str(default_model()[0]), "bench", "bench", device, threads or None, batch, None, "auto")
    engine = make_engine(name, spec, workers, None)
    t0 = time.perf_counter()
    first, n = None, 0
    for rows in engine.run(uris):
        n += len(rows)
        if first is None:
            first, first_n = time.perf_counter(), n
    end = time.perf_counter()
    if name == "ray":
        import ray

        ray.shutdown()
    steady = (n - first_n) / (end - first) if first and end > first else float("nan")
    return {"images": n, "wall_s": round(end - t0, 2), "images_per_s": round(n / (end - t0), 2),
            "steady_images_per_s": round(steady, 2)}  # fmt: skip


def run_predict(paths: list[Path], device: str, batch: int) -> dict:
    t0 = time.perf_counter()
    predictor = load_predictor(None, device=device, batch=batch)  # threads: every core, as `bloodcell predict`
    t1 = time.perf_counter()
    n = sum(1 for _ in predict_paths(predictor, paths, keep_image=False, batch=batch, load_workers=2))
    end = time.perf_counter()
    return {"images": n, "wall_s": round(end - t0, 2), "images_per_s": round(n / (end - t0), 2),
            "steady_images_per_s": round(n / (end - t1), 2)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--data", default="../shared/data/BCCD")
    p.add_argument("--images", type=int, default=364)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1, help="images per network pass (GPU)")
    p.add_argument("--configs", default="predict,local1,local2,ray2", help="which to run, comma-separated")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per engine worker (default 1: the CPU comparison's setting; 0: the engine's "
                        "own default, the cores shared out, as `bloodcell batch` does)")  # fmt: skip
    p.add_argument("--out", default="runs/throughput")
    args = p.parse_args()

    paths = sorted((Path(args.data) / "JPEGImages").glob("*.jpg"))[: args.images]
    uris = [str(p.absolute()) for p in paths]
    results = {"machine": isa(), "device": args.device, "images": len(paths), "threads_per_worker": args.threads}
    for config in args.configs.split(","):
        if config == "predict":
            results[config] = run_predict(paths, args.device, args.batch)
        else:
            engine = config.rstrip("0123456789")
            workers = int(config.removeprefix(engine) or 1)
            results[config] = run_engine(engine, workers, args.threads, uris, args.device, args.batch)
        print(config, results[config], flush=True)
    if "local1" in results and "ray2" in results:
        for key in ("images_per_s", "steady_images_per_s"):
            results[f"ray2_vs_local1_{key}"] = round(results["ray2"][key] / results["local1"][key], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(out / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
