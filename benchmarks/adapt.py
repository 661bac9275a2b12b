"""Your own microscope: adapt the shipped model from ~20 labelled images on a CPU, then count.

    python benchmarks/adapt.py [--images 20] [--epochs 12] [--threads 2]

"The new microscope" is simulated with a change the model never saw in training: a stain whose
hue is shifted by 0.15 (training jitters hue by at most 0.08), a bluish lamp and 0.8x
magnification, applied to BCCD-dense images. Its "lab" labels 20 train images and keeps the
42 val images for choosing operating points and for scoring. The script scores the shipped model
on them, fine-tunes it exactly as a user would (`bloodcell train --model <shipped .pt> --data
their.yaml`, which refits the operating points and calibration on their val at the end), and
scores again, with the wall time of the fine-tune.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from bloodcell.config import TrainConfig
from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import evaluate
from bloodcell.engine.train import train
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.types import CLASS_NAMES
from bloodcell.weights import default_model

REPO = Path(__file__).resolve().parent.parent
SCALE, HUE, LAMP = 0.8, 0.15, (0.92, 1.0, 1.12)


def new_microscope(image: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(image.copy()).permute(2, 0, 1)
    t = F.adjust_hue(t, HUE).float() * torch.tensor(LAMP).view(3, 1, 1)
    out = t.clamp(0, 255).byte().permute(1, 2, 0).numpy()
    h, w = out.shape[:2]
    return np.asarray(Image.fromarray(out).resize((round(w * SCALE), round(h * SCALE)), Image.BILINEAR))


def write_voc(records, root: Path, split: str) -> None:
    """The records' images through ``new_microscope``, boxes scaled with them, as a VOC split."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for r in records:
        image = new_microscope(load_image(r.image_path))
        Image.fromarray(image).save(root / "JPEGImages" / f"{r.image_id}.jpg", quality=92)
        objects = "".join(
            f"<object><name>{CLASS_NAMES[lab]}</name><bndbox><xmin>{b[0]:.1f}</xmin><ymin>{b[1]:.1f}</ymin>"
            f"<xmax>{b[2]:.1f}</xmax><ymax>{b[3]:.1f}</ymax></bndbox></object>"
            for b, lab in zip(r.boxes * SCALE, r.labels, strict=True)
        )
        h, w = image.shape[:2]
        (root / "Annotations" / f"{r.image_id}.xml").write_text(
            f"<annotation><filename>{r.image_id}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
        ids.append(r.image_id)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def line(name: str, m) -> str:
    return (
        f"| {name} | {m.voc_map50:.4f} | {m.count_mae['RBC']:.2f} | {m.count_total_error['RBC']:+.1%} "
        f"| {m.count_mae['WBC']:.3f} | {m.count_total_error['WBC']:+.1%} | {m.count_mae['Platelets']:.3f} "
        f"| {m.count_coverage.get('RBC', float('nan')):.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--dense", default=str(REPO / "../shared/data/BCCD-dense"))
    p.add_argument("--model", help="model to adapt (default: the shipped model)")
    p.add_argument("--images", type=int, default=20, help="labelled images of the new microscope")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/adapt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or str(default_model()[0])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "their_microscope"
        train_records = load_dataset(args.dense, "train", decode_images=False).records[: args.images]
        write_voc(train_records, root, "train")
        write_voc(load_dataset(args.dense, "val", decode_images=False).records, root, "val")
        val = load_dataset(root, "val").records

        before = evaluate(load_predictor(model), val, cell_size="auto")
        t0 = time.time()
        config = TrainConfig(
            model=model, data=str(root), epochs=args.epochs, batch=4, lr=args.lr,  # crops: 448 x the model's scale
            warmup_epochs=1.0, threads=args.threads, val_every=args.epochs, out=args.out,
        )  # fmt: skip
        result = train(config, progress=False)
        minutes = (time.time() - t0) / 60
        after = evaluate(load_predictor(result.best), val, cell_size="auto")
    print(f"\nnew microscope: hue +{HUE}, lamp {LAMP}, {SCALE}x; {args.images} train images, 42 val images")
    print(f"fine-tune: {args.epochs} epochs, lr {args.lr}, {args.threads} threads: {minutes:.1f} min\n")
    print("| model | mAP@0.5 | RBC MAE | RBC total | WBC MAE | WBC total | Plt MAE | RBC 90% cover |")
    print("|---|---|---|---|---|---|---|---|")
    print(line("shipped, as is", before))
    print(line(f"adapted ({args.images} images, {minutes:.1f} min)", after))


if __name__ == "__main__":
    main()
