"""Counts under another microscope, simulated: the dense val images (every cell boxed) rescaled,
re-cropped, stained, blurred, compressed and noised, and tiled into a large frame of small cells.

    python benchmarks/robustness.py [MODEL ...] [--cell-size auto|none|PX] [--only NAME ...]

Per transform: total count error per class (predicted boxes / true cells - 1), red-cell count MAE
per image, white-cell precision (share of counted WBC boxes that are real white cells, IoU >= 0.5:
a false WBC is the worst error a pathologist can get) and the median scale the pipeline chose.
Re-crops keep a true box when at least half of it stays in the frame; a cell cut to less than
half is "don't care" (as VOC's truncated objects): a detection on it is neither counted nor wrong.
Magnified fields of view ("corners") are the four corner 640x480 fields of each magnified image:
together they cover all of it (at 2x they tile it, so a cell on the centre lines is cut in every
field; at 1.5x they overlap, so central cells count in up to four). Wider fields of view ("mosaic")
are val images side by side. A cell that its source image truncates at an edge that becomes an
inner seam of the mosaic lies abutting another image's content, which no microscope produces: by
default (``--seam-cells ignore``) it is "don't care", however much of it is visible; ``count`` keeps
it a true cell, as the identity transform keeps the cells truncated at the frame's outer edge.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from bloodcell import boxes as box_ops
from bloodcell.data.sources import load_dataset
from bloodcell.runtime import scaling
from bloodcell.runtime.counting import above
from bloodcell.runtime.exposure import Exposure, background_colour
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.scaling import detect_cells
from bloodcell.types import Detections

REPO = Path(__file__).resolve().parent.parent
Sample = tuple[np.ndarray, Detections, np.ndarray]  # image, true cells, don't-care boxes (N, 4)
DONT_CARE_IOU = 0.3


def rescale(sample: Sample, s: float) -> Sample:
    im, gt, ignore = sample
    h, w = im.shape[:2]
    size = (round(w * s), round(h * s))
    out = np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR, reducing_gap=3.0))
    return out, Detections(gt.boxes * np.float32(s), gt.labels), ignore * np.float32(s)


def crop(
    sample: Sample, width: int, height: int, min_visible: float = 0.5, at: tuple[int, int] | None = None
) -> Sample:
    """Crop at ``at`` = (left, top), default central; boxes clipped, kept when at least
    ``min_visible`` of their area remains."""
    im, gt, ignore = sample
    h, w = im.shape[:2]
    left, top = at if at is not None else ((w - width) // 2, (h - height) // 2)
    shift = np.array([left, top, left, top], np.float32)
    b = gt.boxes - shift
    clipped = box_ops.clip(b, width, height)
    area = box_ops.area(clipped)
    keep = area >= min_visible * np.maximum(box_ops.area(b), 1e-6)
    cut = ~keep & (area > 0)
    old = box_ops.clip(ignore - shift, width, height)
    ignore = np.concatenate([old[box_ops.area(old) > 0], clipped[cut]])
    return im[top : top + height, left : left + width], Detections(clipped[keep], gt.labels[keep]), ignore


SEAM_CELLS = ("ignore", "count")


def on_seam(boxes: np.ndarray, w: int, h: int, sides: tuple[bool, bool, bool, bool], tol: float) -> np.ndarray:
    """Boxes within ``tol`` px of the image's left, top, right or bottom edge where ``sides`` says
    that edge is a seam."""
    left, top, right, bottom = sides
    return (
        (left & (boxes[:, 0] <= tol))
        | (top & (boxes[:, 1] <= tol))
        | (right & (boxes[:, 2] >= w - tol))
        | (bottom & (boxes[:, 3] >= h - tol))
    )


def mosaic(samples: list[Sample], cols: int, rows: int, seam_cells: str = "ignore", tol: float = 2.0) -> Sample:
    """Images side by side (all the same size), boxes shifted with them; cells within ``tol`` px of
    an inner seam become "don't care" unless ``seam_cells`` is "count"."""
    if seam_cells not in SEAM_CELLS:
        raise ValueError(f"seam_cells {seam_cells!r}: expected one of {SEAM_CELLS}")
    h, w = samples[0][0].shape[:2]
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    boxes, labels, ignores = [], [], []
    for k, (im, gt, ignore) in enumerate(samples[: cols * rows]):
        row, col = divmod(k, cols)
        y, x = row * h, col * w
        canvas[y : y + h, x : x + w] = im
        shift = np.array([x, y, x, y], np.float32)
        cut = np.zeros(len(gt), bool)
        if seam_cells == "ignore":
            cut = on_seam(gt.boxes, w, h, (col > 0, row > 0, col < cols - 1, row < rows - 1), tol)
        boxes.append(gt.boxes[~cut] + shift)
        labels.append(gt.labels[~cut])
        ignores.append(np.concatenate([ignore, gt.boxes[cut]]) + shift)
    return canvas, Detections(np.concatenate(boxes), np.concatenate(labels)), np.concatenate(ignores)


def pixels(fn: Callable[[Image.Image], Image.Image]) -> Callable[[Sample], Sample]:
    return lambda s: (np.asarray(fn(Image.fromarray(s[0])).convert("RGB")), s[1], s[2])


def jpeg(im: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def noise(sample: Sample, sigma: float = 12.0, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    im = sample[0].astype(np.float32) + rng.normal(0, sigma, sample[0].shape)
    return np.clip(im, 0, 255).astype(np.uint8), sample[1], sample[2]


def hue(sample: Sample, shift: float) -> Sample:
    from torchvision.transforms.v2 import functional as F

    t = torch.from_numpy(sample[0].copy()).permute(2, 0, 1)
    return F.adjust_hue(t, shift).permute(1, 2, 0).numpy(), sample[1], sample[2]


def channels(sample: Sample, gains: tuple[float, float, float]) -> Sample:
    im = sample[0].astype(np.float32) * np.array(gains, np.float32)
    return np.clip(im, 0, 255).astype(np.uint8), sample[1], sample[2]


def corners(sample: Sample, width: int = 640, height: int = 480) -> list[tuple[int, int]]:
    """(left, top) of the distinct ``width`` x ``height`` fields in the image's four corners."""
    h, w = sample[0].shape[:2]
    if w < width or h < height:
        raise ValueError(f"a {w}x{h} image has no {width}x{height} corner fields")
    return list(dict.fromkeys((left, top) for top in (0, h - height) for left in (0, w - width)))


def transforms(samples: list[Sample], seam_cells: str = "ignore") -> Iterator[tuple[str, list[Sample]]]:
    n = len(samples)

    def quads(s: float) -> list[Sample]:  # 2x2 mosaics (cyclic), so a zoomed-out frame has more cells
        return [
            mosaic([rescale(samples[(i + k) % n], s) for k in range(4)], 2, 2, seam_cells, tol=2.0 * s)
            for i in range(n)
        ]

    yield "identity", samples
    for s in (0.5, 0.75, 1.5, 2.0):
        yield f"scale {s}x whole", [rescale(x, s) for x in samples]
    for s in (0.5, 0.75):
        yield f"scale {s}x 640x480 mosaic", [crop(q, 640, 480) for q in quads(s)]
    for s in (1.5, 2.0):
        zoomed = [rescale(x, s) for x in samples]
        yield f"scale {s}x 640x480 corners", [crop(z, 640, 480, at=a) for z in zoomed for a in corners(z)]
    yield "hue +0.06", [hue(x, 0.06) for x in samples]
    yield "hue -0.06", [hue(x, -0.06) for x in samples]
    yield (
        "pale stain (sat 0.5)",
        [pixels(lambda im: Image.blend(im.convert("L").convert("RGB"), im, 0.5))(x) for x in samples],
    )
    yield "warm white balance", [channels(x, (1.12, 1.0, 0.85)) for x in samples]
    yield "cool white balance", [channels(x, (0.88, 1.0, 1.12)) for x in samples]
    for gain in (0.7, 0.5, 0.35, 0.25, 0.1, 0.05):  # under-exposure: a dimmer lamp, a shorter exposure
        yield f"dim ({gain:g})", [channels(x, (gain, gain, gain)) for x in samples]
    yield "blur sigma 2", [pixels(lambda im: im.filter(ImageFilter.GaussianBlur(2)))(x) for x in samples]
    yield "jpeg q30", [pixels(jpeg)(x) for x in samples]
    yield "noise sigma 12", [noise(x, 12.0, i) for i, x in enumerate(samples)]
    # 2592x1944 camera frames with small cells (0.6x): 7x7 fields of view each, cropped to the sensor.
    frames = []
    for f in range(3):
        order = [samples[(f * 17 + k) % n] for k in range(49)]
        frames.append(crop(mosaic([rescale(x, 0.6) for x in order], 7, 7, seam_cells, tol=1.2), 2592, 1944, 0.5))
    yield "2592x1944 frame (mosaic), 0.6x cells", frames


def wbc_precision(pred: Detections, gt: Detections, wbc: int = 1) -> tuple[int, int]:
    """(counted WBC boxes, those matching a true WBC one to one at IoU >= 0.5)."""
    p, g = pred.boxes[pred.labels == wbc], gt.boxes[gt.labels == wbc]
    return len(p), int((box_ops.match_greedy(p, pred.scores[pred.labels == wbc], g) >= 0).sum())


def run(predictor, samples: list[Sample], cell_size) -> dict:
    k = len(predictor.class_names)
    pred_n, true_n, scales, wbc = np.zeros((len(samples), k)), np.zeros((len(samples), k)), [], [0, 0]
    for i, (im, gt, ignore) in enumerate(samples):
        out = detect_cells(predictor, im, 0.05, cell_size, predictor.cell_size)
        counted = above(out.detections, predictor.conf, k)
        if len(ignore) and len(counted):
            counted = counted[box_ops.iou_matrix(counted.boxes, ignore).max(axis=1) < DONT_CARE_IOU]
        pred_n[i] = np.bincount(counted.labels, minlength=k)
        true_n[i] = np.bincount(gt.labels, minlength=k)
        scales.append(out.scale)
        a, b = wbc_precision(counted, gt)
        wbc = [wbc[0] + a, wbc[1] + b]
    total = pred_n.sum(0) / np.maximum(true_n.sum(0), 1) - 1
    return {
        "images": len(samples),
        "total_error": dict(zip(predictor.class_names, np.round(total, 4).tolist(), strict=True)),
        "rbc_mae": round(float(np.abs(pred_n[:, 0] - true_n[:, 0]).mean()), 2),
        "wbc_precision": round(wbc[1] / wbc[0], 4) if wbc[0] else None,
        "wbc_predicted": wbc[0],
        "median_scale": round(float(np.median(scales)), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("models", nargs="*", help="model files (default: the shipped model)")
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--split", default="val")
    p.add_argument("--cell-size", default="auto", help="auto, none, or a red-cell diameter in pixels")
    p.add_argument(
        "--seam-cells",
        choices=SEAM_CELLS,
        default="ignore",
        help="cells cut at a mosaic's inner seams: don't care (default) or true cells",
    )
    p.add_argument("--only", nargs="+", help="run only transforms whose name starts with one of these")
    p.add_argument(
        "--as-is",
        action="store_true",
        help="detect on the pixels as given, without the exposure and white-balance step (to compare with it)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.as_is:
        scaling.normalize_exposure = lambda image: (image, Exposure(background_colour(image)))
    cell_size = (
        {"auto": "auto", "none": None}.get(args.cell_size.lower())
        if not args.cell_size[0].isdigit()
        else float(args.cell_size)
    )
    records = load_dataset(args.dense, args.split).records
    samples = [(load_image(r.image_path), r.targets, np.zeros((0, 4), np.float32)) for r in records]
    results: dict = {"settings": {"cell_size": args.cell_size, "seam_cells": args.seam_cells, "split": args.split}}
    for model in args.models or [None]:
        predictor = load_predictor(model)
        name = Path(model).stem if model else "shipped"
        print(f"\n=== {name} (cell size {args.cell_size}, reference {predictor.cell_size} px, ", end="")
        print(f"seam cells {args.seam_cells}{', pixels as given' if args.as_is else ''})")
        print("| transform | RBC total | WBC total | Plt total | RBC MAE | WBC precision (n) | scale |")
        print("|---|---|---|---|---|---|---|")
        for label, items in transforms(samples, args.seam_cells):
            if args.only and not any(label.startswith(o) for o in args.only):
                continue
            r = run(predictor, items, cell_size)
            results.setdefault(name, {})[label] = r
            t = r["total_error"]
            prec = "n/a" if r["wbc_precision"] is None else f"{r['wbc_precision']:.3f}"
            print(
                f"| {label} | {t['RBC']:+.1%} | {t['WBC']:+.1%} | {t['Platelets']:+.1%} | {r['rbc_mae']:.2f} "
                f"| {prec} ({r['wbc_predicted']}) | {r['median_scale']:.2f} |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
