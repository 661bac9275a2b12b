"""Where the red-cell count error comes from: is it the NMS overlap, or seed-to-seed variance?

    python benchmarks/count_floor.py MODEL.pt [MODEL.pt ...] [--nms-iou 0.4 0.5 ...]

On the dense val images (every cell boxed), with `--cell-size auto` as `bloodcell predict` runs:

- per NMS IoU threshold, the first model's per-class count MAE with operating points refitted
  (in-sample, as `bloodcell calibrate` does) and 2-fold (fitted on one half of the images, scored
  on the other), and mAP@0.5;
- with two or more models (same architecture and input, e.g. seeds of one recipe), their ensemble:
  class probabilities and box distances averaged before decoding, scored the same way. An ensemble
  removes most seed variance; if it counts no better than one model, more seeds will not either;
- with ``--soft-nms SIGMA ...``: Gaussian soft-NMS for red cells (scores of overlapping boxes decay by
  exp(-IoU^2 / sigma) instead of the boxes being dropped; other classes keep the model's NMS), on the
  first model's candidates, scored the same way, and once nested: on each half of the images sigma
  and the red-cell operating point are chosen, then scored on the other half (is sigma's gain real?);
- with ``--edge-extent PX ...``: red-cell boxes that touch the image edge (within 8 px) and show less
  than PX pixels across (their shorter side) are dropped before counting, operating points refitted:
  does a labelling convention for cut cells (BCCD-dense boxes a cut red cell once about 44 px of it is
  visible) explain the edge errors?
- with ``--expected-count``: the first model's red-cell count as the expected number of real cells
  (the sum of calibrated probabilities, the intervals' centre) instead of boxes over the operating point,
  calibration fitted on one half of the images and scored on the other (2-fold), as is and rounded;
- with ``--edge-points``: two red-cell operating points, one for boxes touching the image edge (within
  8 px) and one for the rest, chosen together (least MAE; ties: the lowest points) in-sample and 2-fold,
  beside one point chosen by the same rule;
- the first model's red-cell errors at its own operating point: missed cells and extra boxes (greedy
  one-to-one matching at IoU >= 0.5), how many touch the image edge (within 8 px), and how much the
  extra boxes overlap a true cell.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bloodcell import boxes as box_ops
from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import choose_conf, fit_calibration, predict_records, score
from bloodcell.runtime.loader import load_predictor
from bloodcell.types import Detections

REPO = Path(__file__).resolve().parent.parent


class MeanOfModels(nn.Module):
    """Dense CellNet-like models averaged: mean sigmoid scores (as logits) and mean box log-distances."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.strides = models[0].strides

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.members]
        probs = torch.stack([cls.sigmoid() for cls, _ in outs]).mean(0)  # fp32: the models run on the CPU
        return torch.logit(probs, eps=1e-6), torch.stack([box for _, box in outs]).mean(0)


class FlipMean(nn.Module):
    """Test-time flips of one dense CellNet-like model: each flipped input's maps flipped back (left and
    right box distances swapped under a horizontal flip, top and bottom under a vertical one), then
    averaged as ``MeanOfModels`` averages models (mean sigmoid scores, mean box log-distances)."""

    def __init__(self, model: nn.Module, flips: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.model, self.flips = model, flips
        self.strides = model.strides

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, boxes = [], []
        for dims in [(), *self.flips]:
            maps = self.model.level_maps(x.flip(dims) if dims else x)
            cls = torch.cat([(c.flip(dims) if dims else c).flatten(2) for c, _ in maps], 2).transpose(1, 2)
            box = torch.cat([(b.flip(dims) if dims else b).flatten(2) for _, b in maps], 2).transpose(1, 2)
            if 3 in dims:  # (l, t, r, b): a horizontal flip swaps left and right
                box = box[..., [2, 1, 0, 3]]
            if 2 in dims:
                box = box[..., [0, 3, 2, 1]]
            probs.append(cls.sigmoid())
            boxes.append(box)
        return torch.logit(torch.stack(probs).mean(0), eps=1e-6), torch.stack(boxes).mean(0)


def soft_nms_red_cells(d: Detections, sigma: float, iou_threshold, floor: float = 0.05) -> Detections:
    """Gaussian soft-NMS (Bodla et al. 2017) for class 0, plain NMS at the model's threshold(s) for the rest."""
    limits = np.broadcast_to(np.asarray(iou_threshold, dtype=np.float64), (3,))
    parts = []
    for c in np.unique(d.labels):
        sel = d[d.labels == c]
        if c != 0:
            parts.append(sel[box_ops.nms(sel.boxes, sel.scores, limits[c])])
            continue
        boxes, scores = sel.boxes.astype(np.float64), sel.scores.astype(np.float64).copy()
        left, kept = np.arange(len(scores)), []
        while len(left):
            i = left[np.argmax(scores[left])]
            if scores[i] < floor:
                break
            kept.append(i)
            left = left[left != i]
            if len(left):
                scores[left] *= np.exp(-(box_ops.iou_matrix(boxes[i : i + 1], boxes[left])[0] ** 2) / sigma)
        kept_idx = np.asarray(kept, dtype=np.int64)
        parts.append(Detections(sel.boxes[kept_idx], sel.labels[kept_idx], scores[kept_idx].astype(np.float32)))
    return Detections.concat(parts) if parts else d


def nested_choice(soft: dict, hard: list, records) -> str:
    """Per half of the images: sigma and the red-cell operating point chosen there, red-cell MAE on the
    other half, beside the model's own NMS with its operating point chosen the same way."""
    truth = np.array([int((r.labels == 0).sum()) for r in records])

    def fitted(preds, fit: list[int], rest: list[int]) -> tuple[float, float]:
        conf = choose_conf([preds[i] for i in fit], [records[i] for i in fit], 3)[0]
        err = [
            abs(int(((preds[i].labels == 0) & (preds[i].scores >= conf)).sum()) - truth[i]) for i in range(len(truth))
        ]
        return float(np.mean([err[i] for i in fit])), float(np.mean([err[i] for i in rest]))

    lines = []
    for half in (0, 1):
        fit = [i for i in range(len(records)) if i % 2 == half]
        rest = [i for i in range(len(records)) if i % 2 != half]
        best = min(soft, key=lambda s: fitted(soft[s], fit, rest)[0])
        lines.append(
            f"half {half}: sigma {best} chosen, held-out RBC MAE {fitted(soft[best], fit, rest)[1]:.3f} "
            f"(the model's NMS: {fitted(hard, fit, rest)[1]:.3f})"
        )
    return "nested: " + "; ".join(lines)


def counts(preds, conf) -> np.ndarray:
    k = len(conf)
    return np.array([[int(((d.labels == c) & (d.scores >= conf[c])).sum()) for c in range(k)] for d in preds])


def summary(preds, records, class_names) -> dict:
    truth = np.array([[int((r.labels == c).sum()) for c in range(len(class_names))] for r in records])
    conf = choose_conf(preds, records, len(class_names))
    crossed = np.zeros_like(truth)
    for half in (0, 1):  # fit on one half, score the other
        fit = [i for i in range(len(records)) if i % 2 == half]
        rest = [i for i in range(len(records)) if i % 2 != half]
        half_conf = choose_conf([preds[i] for i in fit], [records[i] for i in fit], len(class_names))
        crossed[rest] = counts([preds[i] for i in rest], half_conf)
    return {
        "conf": conf,
        "mae": np.abs(counts(preds, conf) - truth).mean(0),
        "mae_2fold": np.abs(crossed - truth).mean(0),
        "map50": score(preds, records, tuple(class_names), conf).voc_map50,
    }


def row(label: str, s: dict) -> str:
    mae, cv = s["mae"], s["mae_2fold"]
    return (
        f"| {label} | {mae[0]:.3f} | {cv[0]:.3f} | {cv[1]:.3f} | {cv[2]:.3f} | {s['map50']:.4f} "
        f"| {', '.join(f'{c:.2f}' for c in s['conf'])} |"
    )


def at_edge(b: np.ndarray, size: tuple[int, int], edge: float) -> np.ndarray:
    w, h = size
    return (b[:, 0] <= edge) | (b[:, 1] <= edge) | (b[:, 2] >= w - edge) | (b[:, 3] >= h - edge)


def drop_edge_slivers(d: Detections, size: tuple[int, int], extent: float, edge: float = 8.0) -> Detections:
    shorter = np.minimum(d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1])
    return d[~((d.labels == 0) & at_edge(d.boxes, size, edge) & (shorter < extent))]


def red_cell_errors(preds, records, threshold: float, edge: float = 8.0) -> str:
    missed = extra = missed_edge = extra_edge = 0
    overlaps: list[float] = []
    for d, r in zip(preds, records, strict=True):
        truth = r.boxes[r.labels == 0]
        sel = (d.labels == 0) & (d.scores >= threshold)
        boxes, scores = d.boxes[sel], d.scores[sel]
        ious = box_ops.iou_matrix(boxes, truth)
        matched = box_ops.match_greedy(boxes, scores, truth)
        hit, used = matched >= 0, np.isin(np.arange(len(truth)), matched)
        size = (r.width, r.height)
        missed, missed_edge = missed + int((~used).sum()), missed_edge + int(at_edge(truth[~used], size, edge).sum())
        extra, extra_edge = extra + int((~hit).sum()), extra_edge + int(at_edge(boxes[~hit], size, edge).sum())
        overlaps += ious[~hit].max(axis=1).tolist() if len(truth) else [0.0] * int((~hit).sum())
    near = sum(0.2 <= o < 0.5 for o in overlaps)
    total = sum(int((r.labels == 0).sum()) for r in records)
    return (
        f"red cells at the operating point {threshold:.2f}: {missed} of {total} missed ({missed_edge} at the edge), "
        f"{extra} extra boxes ({extra_edge} at the edge; {near} overlap a true cell at IoU 0.2-0.5)"
    )


def expected_count_line(preds, records, class_names) -> str:
    """Red cells counted as the sum of calibrated probabilities (fitted on the other half) vs thresholded."""
    truth = np.array([int((r.labels == 0).sum()) for r in records])
    n = len(records)
    expected, counted = np.zeros(n), np.zeros(n)
    for half in (0, 1):
        fit = [i for i in range(n) if i % 2 == half]
        rest = [i for i in range(n) if i % 2 != half]
        conf = choose_conf([preds[i] for i in fit], [records[i] for i in fit], len(class_names))[0]
        cal = fit_calibration([preds[i] for i in fit], [records[i] for i in fit], tuple(class_names))
        for i in rest:
            scores = preds[i].scores[preds[i].labels == 0]
            expected[i] = cal.plain_interval(class_names[0], scores)[0]
            counted[i] = int((scores >= conf).sum())
    return (
        f"red cells, 2-fold: expected count MAE {np.abs(expected - truth).mean():.3f} "
        f"(rounded {np.abs(np.round(expected) - truth).mean():.3f}), total {expected.sum() / truth.sum() - 1:+.1%}; "
        f"boxes over the operating point MAE {np.abs(counted - truth).mean():.3f}"
    )


def edge_points_line(preds, records, edge: float = 8.0) -> str:
    """One red-cell operating point for boxes at the image edge and one inside, vs one for all."""
    grid = np.round(np.arange(0.30, 0.91, 0.01), 3)
    truth = np.array([int((r.labels == 0).sum()) for r in records])
    inner, outer = [], []
    for d, r in zip(preds, records, strict=True):
        sel = d.labels == 0
        at = at_edge(d.boxes[sel], (r.width, r.height), edge)
        inner.append(d.scores[sel][~at])
        outer.append(d.scores[sel][at])
    ci = np.array([[int((s >= t).sum()) for s in inner] for t in grid])  # (thresholds, images)
    co = np.array([[int((s >= t).sum()) for s in outer] for t in grid])

    def fit(idx: list[int], two: bool) -> tuple[float, int, int]:
        pairs = [(a, b) for a in range(len(grid)) for b in (range(len(grid)) if two else [a])]
        errs = [np.abs(ci[a, idx] + co[b, idx] - truth[idx]).mean() for a, b in pairs]
        a, b = pairs[int(np.argmin(errs))]  # the first minimum: the lowest points
        return float(min(errs)), a, b

    n, parts = len(records), []
    for two in (False, True):
        mae, a, b = fit(list(range(n)), two)
        held = np.zeros(n)
        for half in (0, 1):
            fitted = [i for i in range(n) if i % 2 == half]
            rest = [i for i in range(n) if i % 2 != half]
            _, fa, fb = fit(fitted, two)
            held[rest] = np.abs(ci[fa, rest] + co[fb, rest] - truth[rest])
        name = f"inside {grid[a]:.2f} / edge {grid[b]:.2f}" if two else f"one point {grid[a]:.2f}"
        parts.append(f"{name}: MAE {mae:.3f}, 2-fold {held.mean():.3f}")
    return "red-cell operating points (first minimum): " + "; ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("models", nargs="+", help=".pt models; the first is swept, all together are the ensemble")
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--nms-iou", type=float, nargs="+", default=[0.4, 0.45, 0.5, 0.55, 0.6, 0.7])
    p.add_argument("--soft-nms", type=float, nargs="*", default=[], metavar="SIGMA", help="soft-NMS sigmas to try")
    p.add_argument("--edge-extent", type=float, nargs="*", default=[], metavar="PX", help="edge-sliver rules to try")
    p.add_argument("--expected-count", action="store_true", help="count red cells as the sum of probabilities")
    p.add_argument("--edge-points", action="store_true", help="separate red-cell points at the edge and inside")
    p.add_argument("--flip-tta", action="store_true", help="the first model with test-time flips, averaged")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    records = load_dataset(args.dense, "val").records
    predictors = [load_predictor(m, device="cpu") for m in args.models]
    first = predictors[0]
    names = tuple(first.class_names)
    dense = all(getattr(q, "kind", None) == "dense" for q in predictors)
    if len(predictors) > 1 and not (
        dense and all((q.input_size, q.model.strides) == (first.input_size, first.model.strides) for q in predictors)
    ):
        raise SystemExit("an ensemble needs CellNet .pt models with one input size and the same strides")
    print(f"dense val ({len(records)} images); RBC MAE in-sample and 2-fold, WBC and platelet MAE 2-fold")
    print("| setting | RBC MAE | RBC MAE 2-fold | WBC 2-fold | Plt 2-fold | mAP@0.5 | operating points |")
    print("|---|---|---|---|---|---|---|")
    stored = first.post
    own = None
    for iou in args.nms_iou:
        first.post = replace(stored, iou_threshold=iou)
        preds = predict_records(first, records, cell_size="auto")
        own = preds if np.all(np.asarray(stored.iou_threshold) == iou) else own
        print(row(f"{Path(args.models[0]).stem}, NMS IoU {iou}", summary(preds, records, names)), flush=True)
    if args.soft_nms:  # every candidate above 0.05, no suppression: soft-NMS decides
        first.post = replace(stored, iou_threshold=1.0, max_detections=stored.pre_nms_topk)
        raw = [d[d.scores >= 0.05] for d in predict_records(first, records, cell_size="auto")]
        soft = {}
        for sigma in args.soft_nms:
            soft[sigma] = [soft_nms_red_cells(d, sigma, stored.iou_threshold) for d in raw]
            label = f"{Path(args.models[0]).stem}, soft-NMS for red cells, sigma {sigma}"
            print(row(label, summary(soft[sigma], records, names)), flush=True)
        first.post = stored
        print(nested_choice(soft, predict_records(first, records, cell_size="auto"), records))
    first.post = stored
    if own is None:
        own = predict_records(first, records, cell_size="auto")
    own_nms = "/".join(f"{t:g}" for t in np.atleast_1d(stored.iou_threshold))
    for extent in args.edge_extent:  # on the model's own NMS thresholds, not the swept ones: said in the row
        cut = [drop_edge_slivers(d, (r.width, r.height), extent) for d, r in zip(own, records, strict=True)]
        label = f"{Path(args.models[0]).stem}, NMS IoU {own_nms} (its own), edge red cells under {extent:g} px dropped"
        print(row(label, summary(cut, records, names)))
    if len(predictors) > 1:
        first.model = MeanOfModels([q.model for q in predictors])
        preds = predict_records(first, records, cell_size="auto")
        nms = "/".join(f"{t:g}" for t in np.atleast_1d(stored.iou_threshold))
        label = f"ensemble of {len(predictors)}, NMS IoU {nms} (the first model's)"
        print(row(label, summary(preds, records, names)), flush=True)
    if args.flip_tta:
        single = first.model
        for flips, label in (([(3,)], "horizontal flip"), ([(3,), (2,), (2, 3)], "all four flips")):
            first.model = FlipMean(single, flips)
            preds = predict_records(first, records, cell_size="auto")
            print(
                row(f"{Path(args.models[0]).stem} with {label}, averaged", summary(preds, records, names)), flush=True
            )
        first.model = single
    if args.expected_count:
        print(expected_count_line(own, records, names))
    if args.edge_points:
        print(edge_points_line(own, records))
    print(red_cell_errors(own, records, float(np.atleast_1d(first.conf)[0])))


if __name__ == "__main__":
    main()
