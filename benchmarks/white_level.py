"""Background colours (mean RGB of each image's brightest 10% of pixels, `bloodcell.runtime.exposure`) of a
VOC dataset's images per split: where the exposure and white-balance reference comes from.

    python benchmarks/white_level.py [--data ../shared/data/BCCD]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bloodcell.data.sources import load_dataset
from bloodcell.runtime.exposure import background_colour
from bloodcell.runtime.images import load_image

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--data", default=str(REPO / "../shared/data/BCCD"))
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    args = p.parse_args()
    print("| split | images | what | min | 1st pct | median | 99th pct | max |")
    print("|---|---|---|---|---|---|---|---|")
    for split in args.splits:
        records = load_dataset(args.data, split).records
        colours = np.array([background_colour(load_image(r.image_path)) for r in records])
        rows = {f"background {c}": colours[:, i] for i, c in enumerate("RGB")}
        rows["background luminance"] = colours @ np.array([0.299, 0.587, 0.114])
        shares = colours / colours.mean(axis=1, keepdims=True)
        rows |= {f"{c} share of the mean": shares[:, i] for i, c in enumerate("RGB")}
        for what, v in rows.items():
            cells = [v.min(), *np.percentile(v, [1, 50, 99]), v.max()]
            text = " | ".join(f"{x:.3f}" if x < 5 else f"{x:.1f}" for x in cells)
            print(f"| {split} | {len(v)} | {what} | {text} |")
        print(f"{split}: mean background RGB {tuple(round(float(x), 1) for x in colours.mean(axis=0))}")


if __name__ == "__main__":
    main()
