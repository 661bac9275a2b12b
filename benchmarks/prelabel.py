"""How much drawing `bloodcell predict --voc` saves a labeller: its pre-labels against labels that box every cell.

    python benchmarks/prelabel.py [MODEL] [--data ../shared/data/BCCD-dense] [--split val] [--threads 2]

The boxes are those `--voc` writes (each class at the model's operating point), matched one to one to the
true boxes by IoU >= 0.5 regardless of class, best score first (boxes.match_greedy). Per image: boxes
to keep (matched, right class), to relabel (matched, wrong class), to delete (no cell there, or a second
box on one), and cells to draw (none matched); the mean IoU of the kept boxes says how much nudging they
need. On dense val the operating points were chosen on these images (in-sample for the thresholds only;
the weights never trained on val).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bloodcell import boxes as box_ops
from bloodcell.data.sources import load_dataset
from bloodcell.runtime.counting import per_class
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_paths

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("model", nargs="?", help="model file (default: the shipped model)")
    p.add_argument("--data", default=str(REPO / "../shared/data/BCCD-dense"), help="labels that box every cell")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, threads=args.threads)
    records = load_dataset(args.data, args.split).records
    names = tuple(predictor.class_names)
    tally = {key: np.zeros(len(names), int) for key in ("cells", "drawn", "keep", "relabel", "delete", "draw")}
    kept_iou: list[float] = []
    results = predict_paths(predictor, [r.image_path for r in records], keep_image=False)
    for record, result in zip(records, results, strict=True):
        drawn = result.counted
        match = box_ops.match_greedy(drawn.boxes, drawn.scores, record.boxes)
        ious = box_ops.iou_matrix(drawn.boxes, record.boxes)
        np.add.at(tally["cells"], record.labels, 1)
        np.add.at(tally["drawn"], drawn.labels, 1)
        for i, j in enumerate(match):
            if j < 0:
                tally["delete"][drawn.labels[i]] += 1
            elif drawn.labels[i] == record.labels[j]:
                tally["keep"][record.labels[j]] += 1
                kept_iou.append(float(ious[i, j]))
            else:
                tally["relabel"][record.labels[j]] += 1
        missed = np.setdiff1d(np.arange(len(record.boxes)), match[match >= 0])
        np.add.at(tally["draw"], record.labels[missed], 1)

    n = len(records)
    print(f"{args.data} {args.split}: {n} images, pre-labels at operating points {per_class(names, predictor.conf)}")
    print(f"{'class':<10} {'cells':>6} {'drawn':>6} {'keep':>6} {'relabel':>8} {'delete':>7} {'draw':>6}  per image")
    for c, name in [*enumerate(names), (None, "all")]:
        row = {k: (v.sum() if c is None else v[c]) for k, v in tally.items()}
        edits = row["relabel"] + row["delete"] + row["draw"]
        print(
            f"{name:<10} {row['cells']:>6} {row['drawn']:>6} {row['keep']:>6} {row['relabel']:>8} {row['delete']:>7} "
            f"{row['draw']:>6}  {row['cells'] / n:.1f} cells, {edits / n:.2f} edits"
        )
    loose = np.mean(np.array(kept_iou) < 0.75)
    print(f"kept boxes: mean IoU {np.mean(kept_iou):.3f} with the true box, {loose:.1%} under 0.75")


if __name__ == "__main__":
    main()
