"""Counting accuracy side by side: BCCD val with its original labels (the 2019 seed's metric), the
dense relabelling of val (every cell boxed), and BCCD test as the untouched hold-out.

    python benchmarks/counting.py MODEL.pt [MODEL.pt ...] [--refit] [--json FILE]

--refit fits each model's per-class operating points and score calibration on the val split of
--fit-data (dense labels where they exist) before scoring, as `bloodcell train` does at its end;
without it the model file's own are used. Coverage is the share of images whose 90% count
interval holds the true count; "coverage (2-fold)" fits the calibration on the other half of the
dense val images, so it is not scored on the images it was fitted on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import choose_conf, fit_calibration, predict_records, score
from bloodcell.runtime.counting import class_thresholds
from bloodcell.runtime.loader import load_predictor

REPO = Path(__file__).resolve().parent.parent


def two_fold_coverage(preds, records, dense_names, class_names, conf) -> dict[str, float]:
    """Coverage on each half of the dense images with calibration fitted on the rest of val."""
    names = sorted(dense_names)
    folds = [set(names[0::2]), set(names[1::2])]
    hits: dict[str, list[float]] = {c: [] for c in class_names}
    for fold in folds:
        fit = [i for i, r in enumerate(records) if r.image_path.name not in fold]
        test = [i for i, r in enumerate(records) if r.image_path.name in fold]
        cal = fit_calibration([preds[i] for i in fit], [records[i] for i in fit], class_names)
        m = score([preds[i] for i in test], [records[i] for i in test], class_names, conf, cal)
        for c in class_names:
            if c in m.count_coverage:
                hits[c].append(m.count_coverage[c] * m.count_images[c])
    n = len(names)
    return {c: float(np.sum(v) / n) for c, v in hits.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("models", nargs="+")
    p.add_argument("--bccd", default=str(REPO / "../shared/data/BCCD"))
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--fit-data", default=str(REPO / "datasets/bccd-dense.yaml"))
    p.add_argument("--refit", action="store_true", help="fit operating points and calibration on --fit-data val")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write all results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    merged = load_dataset(args.fit_data, "val").records
    bccd_val = load_dataset(args.bccd, "val").records
    bccd_test = load_dataset(args.bccd, "test").records
    dense_val = load_dataset(args.dense, "val").records
    dense_names = {r.image_path.name for r in dense_val}
    out = {}
    for model in args.models:
        predictor = load_predictor(model)
        class_names = tuple(predictor.class_names)
        preds = predict_records(predictor, merged)
        by_name = {r.image_path.name: p for r, p in zip(merged, preds, strict=True)}
        if args.refit:
            conf = choose_conf(preds, merged, len(class_names))
            calibration = fit_calibration(preds, merged, class_names)
        else:
            conf, calibration = predictor.conf, predictor.calibration
        results = {
            "bccd_val": score([by_name[r.image_path.name] for r in bccd_val], bccd_val, class_names, conf, calibration),
            "dense_val": score(
                [by_name[r.image_path.name] for r in dense_val], dense_val, class_names, conf, calibration
            ),
            "bccd_test": score(predict_records(predictor, bccd_test), bccd_test, class_names, conf, calibration),
        }
        cover2 = two_fold_coverage(preds, merged, dense_names, class_names, conf)
        points = np.round(class_thresholds(conf, len(class_names)), 3).tolist()
        print(f"\n=== {model}  operating points {dict(zip(class_names, points, strict=True))}")
        for key, m in results.items():
            print(f"-- {key}\n{m}")
        print(f"-- dense val 90% coverage with 2-fold calibration: { {k: round(v, 3) for k, v in cover2.items()} }")
        out[model] = {k: m.to_dict() for k, m in results.items()} | {"dense_val_coverage_2fold": cover2}
    print(
        "\n| model | BCCD val mAP@0.5 | BCCD test mAP@0.5 | dense val mAP@0.5 | dense RBC MAE | RBC total "
        "| Plt MAE | WBC MAE (BCCD val: every white cell boxed) | cover RBC/WBC/Plt (2-fold) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, r in out.items():
        d = r["dense_val"]
        cov = r["dense_val_coverage_2fold"]
        print(
            f"| {Path(model).stem} | {r['bccd_val']['voc_map50']:.4f} | {r['bccd_test']['voc_map50']:.4f} "
            f"| {d['voc_map50']:.4f} | {d['count_mae']['RBC']:.2f} | {d['count_total_error']['RBC']:+.1%} "
            f"| {d['count_mae']['Platelets']:.3f} | {r['bccd_val']['count_mae']['WBC']:.3f} "
            f"| {cov.get('RBC', float('nan')):.2f}/{cov.get('WBC', float('nan')):.2f}/"
            f"{cov.get('Platelets', float('nan')):.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
