"""White levels (99th-percentile luminance, `bloodcell.runtime.exposure.white_level`) of a VOC dataset's
images per split: where the exposure reference of `bloodcell.runtime.exposure` comes from.

    python benchmarks/white_level.py [--data ../shared/data/BCCD]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bloodcell.data.sources import load_dataset
from bloodcell.runtime.exposure import white_level
from bloodcell.runtime.images import load_image

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "../shared/data/BCCD"))
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    args = p.parse_args()
    print("| split | images | min | 1st pct | 5th pct | median | max |")
    print("|---|---|---|---|---|---|---|")
    for split in args.splits:
        levels = np.array([white_level(load_image(r.image_path)) for r in load_dataset(args.data, split).records])
        cells = [levels.min(), *np.percentile(levels, [1, 5, 50]), levels.max()]
        print(f"| {split} | {len(levels)} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
