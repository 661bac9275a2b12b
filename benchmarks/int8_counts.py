"""How an int8 export counts against its fp32 source: dense val before and after `bloodcell calibrate`,
BCCD val mAP@0.5, and red-cell totals against the .pt on BCCD val and test.

    python benchmarks/int8_counts.py FILE.tflite [--source src/bloodcell/weights/cellnet_bccd.pt]

The refit goes into a copy (FILE-refit.tflite and its sidecar); FILE is left as it is. Prints one JSON row.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bloodcell.data.sources import load_dataset
from bloodcell.engine.validate import validate
from bloodcell.export.calibrate import fit_export_counting
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_image

DENSE = "datasets/bccd-dense.yaml"


def red_cells(model: str | Path | None, bccd: str, split: str) -> int:
    predictor = load_predictor(model)
    records = load_dataset(bccd, split).records
    return sum(
        predict_image(predictor, load_image(r.image_path), r.image_path, predictor.conf).counts["RBC"] for r in records
    )


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("model", type=Path, help="an int8 .tflite (or any export)")
    p.add_argument("--source", help="the .pt it came from (default: the shipped model)")
    p.add_argument("--bccd", default="../shared/data/BCCD")
    args = p.parse_args()
    row: dict = {"file": args.model.name}
    inherited = validate(str(args.model), DENSE, "val", out=None)
    row.update(
        dense_rbc_ap=inherited.voc_ap50["RBC"],
        inherited_rbc_mae=inherited.count_mae["RBC"],
        inherited_rbc_total=inherited.count_total_error["RBC"],
    )
    refit = args.model.with_name(args.model.stem + "-refit" + args.model.suffix)
    shutil.copyfile(args.model, refit)
    fitted = fit_export_counting(refit, load_dataset(DENSE, "val").records, DENSE, "val").metrics
    row.update(
        refit_conf=list(fitted.conf),
        refit_rbc_mae=fitted.count_mae["RBC"],
        refit_rbc_total=fitted.count_total_error["RBC"],
        refit_wbc_mae=fitted.count_mae["WBC"],
        refit_platelets_mae=fitted.count_mae["Platelets"],
        dense_map=fitted.voc_map50,
        bccd_val_map=validate(str(refit), args.bccd, "val", out=None).voc_map50,
    )
    for split in ("val", "test"):
        row[f"refit_rbc_vs_source_{split}"] = (
            red_cells(refit, args.bccd, split) / red_cells(args.source, args.bccd, split) - 1
        )
    print(json.dumps(row))


if __name__ == "__main__":
    main()
