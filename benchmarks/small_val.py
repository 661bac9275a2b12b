"""How many val images a counting refit needs: interval coverage on new images after refitting on few.

    python benchmarks/small_val.py [--model M.pt] [--sizes 3,4,6,8,9,12,20] [--draws 300]

A lab adapting the model to its microscope may hold out only a handful of labelled val images, and
the refit (`bloodcell calibrate`, or the end of `train --model`) fits the count intervals' conformal
width on them. Split-conformal prediction covers a new image with probability ``ceil(0.9 (n+1)) /
(n+1)`` only when that quantile exists, i.e. from n = 9 images at the 90% level; below it the widest
residual is all there is, covering about n / (n+1). This script measures it: the shipped model
predicts once on dense val seen through a simulated new microscope (``adapt.new_microscope``, so
the model's own calibration is foreign there too); then, per size n, random draws of n images
refit the counting (operating points as `calibrate` fits them) and the other images score the interval
coverage of three calibrations: refitted on the n images (what `calibrate` did on any number before
the twenty-second session), refitted with the model's conformal width kept, and the model's own kept
whole (what it does now below 9 images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import write_voc

from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import MIN_FIT_CELLS, fit_calibration, fit_counting, predict_records, score
from bloodcell.runtime.counting import Calibration
from bloodcell.runtime.loader import load_predictor
from bloodcell.weights import default_model

REPO = Path(__file__).resolve().parent.parent


def coverage(preds, records, names, conf, calibration) -> dict[str, float]:
    m = score(preds, records, names, conf, calibration)
    return {k: float(v) for k, v in m.count_coverage.items()}


def refitted(preds, records, names, prior: Calibration) -> Calibration:
    """The calibration refitted on these images whatever their number, as `calibrate` did before the rule on
    images: a class with fewer than MIN_FIT_CELLS labelled cells keeps the model's, as it did then (every
    class is boxed exhaustively in dense val, so no exhaustive mask is needed here)."""
    cal = fit_calibration(preds, records, names)
    knots, width = dict(cal.knots), dict(cal.width)
    for c, name in enumerate(names):
        if sum(int((r.labels == c).sum()) for r in records) < MIN_FIT_CELLS:
            knots[name], width[name] = prior.knots[name], prior.width.get(name, 1.0)
    return replace(cal, knots=knots, width=width)


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--sizes", default="3,4,6,8,9,12,20")
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--same-microscope", action="store_true", help="dense val as it is (in-sample for the model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model or str(default_model()[0]))
    names = tuple(predictor.class_names)
    prior = (predictor.conf, predictor.calibration)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.dense
        if not args.same_microscope:
            data = Path(tmp) / "their_microscope"
            write_voc(load_dataset(args.dense, "val", decode_images=False).records, data, "val")
        records = load_dataset(data, "val").records
        preds = predict_records(predictor, records, cell_size="auto")
    where = "dense val as it is" if args.same_microscope else "dense val through the simulated new microscope"
    print(f"{len(records)} images ({where}); {args.draws} draws per size; coverage of the 90% intervals on the rest")
    print(f"model's own calibration on all {len(records)}: {coverage(preds, records, names, prior[0], prior[1])}\n")

    rng = np.random.default_rng(args.seed)
    print("| val images | class | refit on them | refit, the model's width kept | the model's calibration kept |")
    print("|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        rows: dict[str, list[list[float]]] = {c: [[], [], []] for c in names}
        for _ in range(args.draws):
            pick = rng.permutation(len(records))
            fit_i, rest_i = pick[:n], pick[n:]
            fit_p, fit_r = [preds[i] for i in fit_i], [records[i] for i in fit_i]
            fit = fit_counting(fit_p, fit_r, names, 1.0, prior)  # the operating points, as calibrate fits them
            refit = refitted(fit_p, fit_r, names, prior[1])
            rest_p, rest_r = [preds[i] for i in rest_i], [records[i] for i in rest_i]
            kept_width = replace(refit, width={**refit.width, **prior[1].width})
            for k, cal in enumerate((refit, kept_width, prior[1])):
                for c, v in coverage(rest_p, rest_r, names, fit.conf, cal).items():
                    rows[c][k].append(v)
        for c in names:
            cells = " | ".join(f"{np.mean(v):.3f} (10th pct {np.percentile(v, 10):.2f})" for v in rows[c])
            print(f"| {n} | {c} | {cells} |")


if __name__ == "__main__":
    main()
