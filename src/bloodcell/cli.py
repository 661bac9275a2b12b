"""The ``bloodcell`` command: parses arguments, builds typed settings, calls one API function.

Every failure the user can fix ends in one line on stderr and a non-zero exit code:
2 for unusable input (dataset, model, options), 1 for "ran, but some items failed".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.atomic import atomic_open, check_outputs
from bloodcell.errors import BloodcellError, ConfigError, StopSaid, describe_os_error, is_interrupt, missing_model

if TYPE_CHECKING:  # config is imported lazily below, like every other bloodcell module
    from bloodcell.config import Choice, TrainConfig
    from bloodcell.export.exporter import ExportResult

#: Packages that only the training / export extras install; a missing one gets an install hint.
EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "pycocotools": "eval",
    "matplotlib": "eval",
    "pyarrow": "cluster",
    "ray": "cluster",
    "onnx": "export",
    "litert_torch": "export",
    "torchao": "export",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "watchdog": "serve",
}


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check, describe, export and download Pascal VOC datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{check,stats,export,download}")

    p = dsub.add_parser("check", help="report every label fault (and what the repair does)")
    p.add_argument("path", nargs="?", help=DATASET_HELP)
    p.add_argument("--data", help="VOC dataset folder or dataset YAML")
    p.add_argument("--split", help="check only ImageSets/Main/<split>.txt (default: every annotation)")
    p.add_argument("--strict", action="store_true", help="every finding is an error (exit 1)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="findings as JSON instead of a table: to this file, or printed when no file is given",
    )
    p.set_defaults(func=cmd_data_check)

    p = dsub.add_parser("stats", help="per split and class: images, boxes, box sizes; PNG plots")
    p.add_argument("path", nargs="?", help=DATASET_HELP)
    p.add_argument("--data", help="VOC dataset folder or dataset YAML (the same as PATH)")
    p.add_argument("--out", help="folder for the plots and stats.json (default: runs/stats)", default="runs/stats")
    p.set_defaults(func=cmd_data_stats)

    p = dsub.add_parser("export", help="write the (repaired) labels as CSV, COCO, YOLO or TFRecord")
    p.add_argument("path", nargs="?", help=DATASET_HELP)
    p.add_argument("--data", help="VOC dataset folder or dataset YAML (the same as PATH)")
    p.add_argument("--format", required=True, choices=["csv", "coco", "yolo", "tfrecord"], help="output format")
    p.add_argument("--out", required=True, help="output folder (one file or folder per split)")
    p.add_argument("--split", nargs="+", help="splits to export (default: those of train val test it has)")
    p.set_defaults(func=cmd_data_export)

    p = dsub.add_parser("download", help="fetch the public BCCD archive into the cache (sha256-checked)")
    p.add_argument("--out", help="destination folder (default: ~/.cache/bloodcell/BCCD)")
    p.add_argument("--url", help="archive to fetch instead of the pinned GitHub tarball (a mirror, or a file:// URL)")
    p.add_argument(
        "--sha256",
        type=_sha256,
        help="expected sha256 of that archive (default: none; the files are checked against the pinned tree hash)",
    )
    p.set_defaults(func=cmd_data_download)


REFIT_HINT = (
    "int8: refit its counting: bloodcell calibrate --model {path} --data DATA, DATA a val split with every cell "
    "boxed (e.g. datasets/bccd-dense.yaml)"
)
#: calibrate's and val's note on a plain folder: ``done`` is what happens to counting, ``do`` what to do instead
PLAIN_FOLDER_NOTE = (
    "note: {root} is a plain VOC folder, so {done} as if every cell in it is boxed; if its labels leave cells "
    "out (BCCD's XML misses about 40% of red cells), {do} on a dataset YAML that says which classes are "
    "exhaustive (e.g. datasets/bccd-dense.yaml)"
)
DATASET_HELP = "VOC dataset folder or dataset YAML (default: --data, $BLOODCELL_DATA, or the cache)"


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 64 hexadecimal digits")
    return text.lower()


def _data_root(args: argparse.Namespace):
    from bloodcell.data.sources import resolve_data_root

    path, data = getattr(args, "path", None), getattr(args, "data", None)
    if path and data:
        raise ConfigError(f"give the dataset once: {path} or --data {data}, not both")
    return resolve_data_root(path or data)


def cmd_data_check(args: argparse.Namespace) -> int:
    from bloodcell.data.check import check_dataset, format_findings

    dataset_file = args.json and Path(args.json).suffix.lower() in (".yaml", ".yml")
    if args.json and args.json != "-" and (Path(args.json).is_dir() or dataset_file):
        if args.path is not None or args.data is not None:  # never written over: a dataset, not a report name
            what = "a dataset file" if dataset_file else "a folder"
            raise ConfigError(f"--json {args.json}: is {what}, not a file to write the report to")
        args.path, args.json = args.json, "-"  # `data check --json DATASET`: the flag as it was, then the dataset
    check_outputs({"--json": None if args.json == "-" else args.json})
    report = check_dataset(_data_root(args), split=args.split)
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.json:
        with atomic_open(args.json) as f:
            f.write(json.dumps(report.to_dict(), indent=2) + "\n")
        print(format_findings(report))
        print(f"wrote {args.json}")
    else:
        print(format_findings(report))
    # Repaired labels are findings (errors only with --strict); an image that cannot be used at all is a failed input.
    skipped = any(f.skips_image or f.falls_back or f.kind == "unreadable-split" for f in report.findings)
    return 1 if skipped or (args.strict and report.findings) else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    import matplotlib  # noqa: F401  (the plots' extra is said before anything is written, not after stats.json)

    from bloodcell.data.stats import compute_stats, plot_stats, write_stats

    check_outputs({}, {"--out": args.out})  # before the table, not after it
    stats = compute_stats(_data_root(args))
    print(stats)
    warning = stats.findings_warning()
    if warning:
        print(warning, file=sys.stderr)
    print(f"wrote {write_stats(stats, args.out)}")
    for path in plot_stats(stats, _data_root(args), args.out):
        print(f"wrote {path}")
    left_out = [f"{s.name} {s.skipped}" for s in stats.splits if s.skipped]
    if left_out:  # a failed input, as in `data check`: said with the exit code, not only as a warning
        root = _data_root(args)
        print(
            f"error: {root}: listed images left out ({', '.join(left_out)}); the statistics cover the others: "
            f"`bloodcell data check {shlex.quote(str(root))}` names them",
            file=sys.stderr,
        )
    return 1 if left_out else 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from bloodcell.data.check import findings_note, skipped_note
    from bloodcell.data.export import export_dataset

    check_outputs({}, {"--out": args.out})
    skipped = []  # one line per split that left images out, said again with the exit code

    def report(dataset) -> None:
        note = findings_note(dataset)
        if note:
            print(note, file=sys.stderr)
        if left_out := skipped_note(dataset, "error", "the export holds"):
            skipped.append(left_out)
        k = len(dataset.class_names)
        for c, name in enumerate(dataset.class_names):  # the formats cannot say it: a detector would learn
            partial = sum(not r.exhaustive_mask(k)[c] for r in dataset.records)  # the unboxed cells as background
            if partial:
                print(
                    f"warning: split {dataset.split or 'all'}: {name} is not boxed exhaustively in {partial} of "
                    f"{len(dataset.records)} images; the {args.format} files cannot mark that, and a detector "
                    "trained on this export learns the unboxed cells as background",
                    file=sys.stderr,
                )

    def written(path: Path) -> None:  # as each split finishes: a stopped export has named what it kept
        print(f"wrote {path}", flush=True)

    export_dataset(_data_root(args), args.format, args.out, splits=args.split, on_read=report, on_written=written)
    if args.format == "yolo":
        _warn_incomplete_yolo_yaml(Path(args.out) / "data.yaml")
    for line in skipped:  # an image left out of the export is a failed input, as in `data check`
        print(line, file=sys.stderr)
    return 1 if skipped else 0


def _warn_incomplete_yolo_yaml(path: Path) -> None:
    """Ultralytics refuses a data.yaml without train and val (`yolo val` too): one split exported alone."""
    import yaml

    missing = [k for k in ("train", "val") if k not in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})]
    if missing:
        splits = " and ".join(missing)
        print(
            f"warning: {path} names no {splits} split yet; Ultralytics needs both: export {splits} into the same "
            f"--out (--split {' '.join(missing)})",
            file=sys.stderr,
        )


def cmd_data_download(args: argparse.Namespace) -> int:
    from bloodcell.data.download import download_bccd

    # Only options given on the command line override download_bccd's pinned defaults.
    options = {k: v for k, v in (("url", args.url), ("sha256", args.sha256)) if v is not None}
    print(f"BCCD ready at {download_bccd(args.out, **options)}")
    return 0


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    # No defaults here: cmd_train sees which settings were given (--resume keeps the run's for the others).
    p = sub.add_parser("train", help="train a detector on a VOC dataset")
    _add_train_options(p)
    p.add_argument(
        "--devices",
        metavar="0,1|cpu:N",
        help="train with DistributedDataParallel on these GPUs or N CPU processes (runs torchrun for you)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "calibrate", help="re-fit a model's per-class operating points, count intervals and cell size on val"
    )
    p.add_argument("--model", required=True, help=".pt model file, or an .onnx/.tflite export (into its sidecar)")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML whose val split is fitted on")
    p.add_argument("--split", default="val", help="the split fitted on (default: val)")
    p.add_argument(
        "--out",
        help="the new .pt model file (required for a .pt; may be --model itself); an export's fit goes into the file "
        "and its <file>.json sidecar (leave --out out)",
    )
    p.add_argument(
        "--nms-iou",
        type=_nms_iou_text,
        help="NMS IoU threshold(s) to store: one value, or per class like WBC=0.3 (others keep the model's); "
        "the operating points are then fitted with them",
    )
    p.add_argument("--threads", type=_positive_int, help="CPU threads for the model (default: every core)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("val", help="score a model: VOC mAP@0.5, COCO AP, count error, plots")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML")
    p.add_argument("--split", default="val", help="the split scored (default: val)")
    p.add_argument("--conf", type=_conf_text, help=CONF_HELP)
    _add_cell_size(p)
    _add_device(p)
    p.add_argument("--threads", type=_positive_int, help="CPU threads for the model (default: every core)")
    p.add_argument("--json", help="write the metrics as JSON to this file")
    p.add_argument(
        "--out", default="runs/val", help="folder for PR curves and the confusion matrix (default: runs/val; '': none)"
    )
    p.set_defaults(func=cmd_val)

    p = sub.add_parser("predict", help="detect and count cells in images, a video or a camera")
    p.add_argument(
        "source", nargs="*", help="image files, folders (their own images, not subfolders) or globs (** for any depth)"
    )
    p.add_argument("--source", dest="stream", metavar="0|VIDEO|URL", help="camera index, video file or stream URL")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=_conf_text, help=CONF_HELP)
    _add_cell_size(p)
    p.add_argument(
        "--min-score",
        type=_score,
        help="lowest score listed in --json, which it needs (default: the lowest operating point)",
    )
    p.add_argument("--out", help="folder for annotated images (with --source: the annotated video and counts CSV)")
    p.add_argument("--json", help="write one record per image to this JSON file")
    p.add_argument("--csv", help="write per-image counts to this CSV file")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for the model (default: every core)")
    _add_device(p)
    p.add_argument("--edgetpu", action="store_true", help="run a compiled .tflite model on a Coral Edge TPU")
    p.add_argument(
        "--verbose", action="store_true", help="per image, time per stage: load, letterbox, network, decode, the rest"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a model to ONNX or TFLite (fp32 or full-integer int8)")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--format", required=True, help="onnx or tflite")
    p.add_argument(
        "--int8",
        action="store_true",
        help="full-integer int8: int8 weights and activations (TFLite: int8 I/O, the fastest with AVX-512 VNNI "
        "and on Edge TPU; ONNX: uint8 input, the fastest on AVX2-only CPUs)",
    )
    p.add_argument(
        "--calib-images",
        type=_positive_int,
        help="with --int8: training images that set int8 ranges (default: 32)",
    )
    p.add_argument("--imgsz", type=_size, help="static input size WxH (default: the model's, 480x384 when shipped)")
    p.add_argument("--data", help="with --int8: VOC dataset folder or YAML for the calibration images")
    p.add_argument("--out", required=True, help="output file (.onnx or .tflite); metadata goes to <out>.json")
    p.add_argument("--verbose", action="store_true", help="show the TFLite converter's log (shown anyway if it fails)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("qat", help="quantization-aware fine-tuning, then export a full-integer int8 TFLite")
    p.add_argument("--model", required=True, help="trained .pt model to start from")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML (train split)")
    p.add_argument("--epochs", type=_positive_int, default=2, help="fine-tuning epochs (default: 2)")
    p.add_argument("--batch", type=_positive_int, default=8, help="images per step (default: 8)")
    p.add_argument(
        "--imgsz", type=_positive_int, default=384, help="side of the square training crops, one number (default: 384)"
    )
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="learning rate (default: 1e-4)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's, all cores)")
    p.add_argument("--max-images", type=_positive_int, help="fine-tune on the first N images only (quick checks)")
    p.add_argument("--out", required=True, help="output .tflite file; metadata goes to <out>.json")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("benchmark", help="size, mAP@0.5 and latency of every export format of a model")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML")
    p.add_argument("--split", default="val", help="split to score and time on (default: val)")
    p.add_argument("--threads", type=_positive_int, default=2, help="inference threads (default: 2)")
    p.add_argument("--extra", nargs="+", default=[], help="more model files to include (e.g. a QAT .tflite)")
    p.add_argument(
        "--out", default="runs/benchmark", help="folder for the exports and benchmark.csv (default: runs/benchmark)"
    )
    p.set_defaults(func=cmd_benchmark)


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page and JSON API: drop images, see boxes, download counts")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this computer only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-upload-mb", type=_positive_float, default=20, help="largest accepted upload (default: 20 MB)")
    p.add_argument("--conf", type=_conf_text, help=CONF_HELP + "; the page's slider shifts them")
    _add_cell_size(p)
    p.add_argument("--threads", type=_positive_int, help="CPU threads for the model (default: every core)")
    p.add_argument(
        "--max-megapixels",
        type=_positive_float,
        default=50,
        help="largest accepted image in megapixels, under Pillow's bomb limit of 89 (default: 50)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        type=_host_name,
        default=[],
        metavar="NAME",
        help="another name or address the page is reached under (e.g. behind a proxy); repeatable",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("watch", help="count cells in each image dropped into a folder (once each, restart-safe)")
    p.add_argument("folder", help="folder the microscope camera writes images into (top level only)")
    p.add_argument("--out", help="folder for counts.csv, annotated/ and the state file (default: FOLDER/bloodcell)")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=_conf_text, help=CONF_HELP)
    _add_cell_size(p)
    p.add_argument(
        "--settle", type=_non_negative_float, default=1.0, help="seconds a file must stay unchanged (default: 1)"
    )
    p.add_argument("--once", action="store_true", help="process what is in the folder now, then exit")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for the model (default: every core)")
    p.set_defaults(func=cmd_watch)


def _add_batch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="count cells in an archive of images into a resumable Parquet dataset (local or Ray)"
    )
    p.add_argument(
        "source",
        nargs="+",
        help="folders (recursive), globs, .txt/.lst lists of paths, or s3:// gs:// hdfs:// file:// URIs",
    )
    p.add_argument("--out", required=True, help="folder or URI of the Parquet dataset (a rerun skips what is there)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument("--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: a local Ray")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="processes or Ray actors, one model each (default: 1)"
    )
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=_conf_text, help=CONF_HELP)
    _add_cell_size(p)
    _add_device(p)
    p.add_argument("--threads", type=_positive_int, help="threads per worker (default: the cores shared out)")
    p.add_argument("--part-rows", type=_positive_int, default=256, help="rows per Parquet part file (default 256)")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from bloodcell.app.archive import run_batch

    summary = run_batch(
        args.source,
        args.out,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        device=args.device,
        model=args.model,
        threads=args.threads,
        batch=args.batch,
        conf=args.conf,
        cell_size=args.cell_size,
        part_rows=args.part_rows,
        progress=sys.stderr.isatty(),  # no progress bars in logs
    )
    print(summary)
    return 1 if summary.failed else 0


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a slide from `predict --json` or watch")
    p.add_argument(
        "results",
        help="JSON file of `bloodcell predict --json`, or a counts CSV (watch's counts.csv, predict --csv); "
        "one record or row per field of view",
    )
    p.add_argument(
        "--images",
        help="folder holding the images named in the records (default: the input paths predict recorded, "
        "else the JSON's folder; for a CSV, the annotated/ folder beside it)",
    )
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--title", help="page title (default: the JSON file's name)")
    p.set_defaults(func=cmd_report)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        type=_device,
        metavar="auto|cpu|cuda[:N]",
        help="where a .pt model runs (default auto: a GPU when there is one; exported models run on the CPU)",
    )
    p.add_argument(
        "--batch", type=_positive_int, default=1, help="images per network pass, .pt models (default 1; 16+ on a GPU)"
    )


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; whether the GPU exists is checked when the model loads."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")


def _add_cell_size(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cell-size",
        type=_cell_size,
        default="auto",
        help="red-cell diameter in pixels in your images, 'auto' (estimate per image, default) or 'none' (as is)",
    )


CONF_HELP = "operating points for counts: one value, or per class like RBC=0.4,WBC=0.5 (default: the model's)"


def _conf_text(text: str, flag: str = "--conf") -> str:
    """Checks the form of --conf now (numbers in (0, 1]); class names are checked once the model is loaded."""
    from bloodcell.runtime.counting import parse_conf
    from bloodcell.types import CLASS_NAMES

    # per-class names are checked against the model later; a plain list's error shows BCCD's names
    names = [part.partition("=")[0].strip() for part in text.split(",")] if "=" in text else CLASS_NAMES
    try:
        parse_conf(text, names, 0.5, flag)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _nms_iou_text(text: str) -> str:
    return _conf_text(text, "--nms-iou")


def _host_name(text: str) -> str:
    """--allowed-host: a name or address, optionally with a port; not a URL (it would match no Host header)."""
    name = text.strip()
    if not name or "/" in name or "://" in name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a host name or address like myscope.lab or 10.0.0.5")
    return name


def _cell_size(text: str) -> float | str | None:
    from bloodcell.runtime.scaling import parse_cell_size

    try:
        return parse_cell_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _resolve_conf(text: str | None, predictor) -> tuple[float, ...] | None:
    """--conf for this model: None keeps its own operating points."""
    if text is None:
        return None
    from bloodcell.runtime.counting import parse_conf

    return parse_conf(text, tuple(predictor.class_names), predictor.conf)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be at least 1")
    return w, h


# Every numeric option is checked here, while parsing: a bad value ends in argparse's one-line
# "argument --flag: ..." and exit code 2, before any model or dataset is loaded.


def _number(cast: type, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type=`` for a finite int or float in [low, high] (``*_open``: the bound itself excluded)."""
    if high is None:
        interval = f"{'>' if low_open else '>='} {low:g}"
    else:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    what = "an integer" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value) and (value > low if low_open else value >= low)
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what} {interval}")
        return value

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0, low_open=True)
_non_negative_float = _number(float, 0)
_probability = _number(float, 0, 1, low_open=True)  # (0, 1]
_open_probability = _number(float, 0, 1, low_open=True, high_open=True)  # (0, 1)
_score = _number(float, 0, 1)  # [0, 1]
_port = _number(int, 1, 65535)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, from its ``Flag``: name, check and help are declared once, there."""
    from dataclasses import fields

    from bloodcell.config import Choice, Number, Size, TrainConfig, flag_name, show

    for f in fields(TrainConfig):
        if "flag" not in f.metadata:
            raise TypeError(f"TrainConfig.{f.name}: declare its Flag, or metadata={{'flag': None}} if not an option")
        flag = f.metadata["flag"]
        if flag is None:
            continue
        if isinstance(f.default, bool):  # a switch; default None (not given) like every other option
            p.add_argument(flag_name(f.name), dest=f.name, action="store_const", const=not f.default, help=flag.help)
            continue
        check = flag.check
        if isinstance(check, Number):  # the same parse-time validators as every other numeric option
            kind = _number(check.cast, check.low, check.high, low_open=check.low_open, high_open=check.high_open)
        elif isinstance(check, Size):
            kind = _size
        elif isinstance(check, Choice):
            kind = _choice(check)
        else:
            kind = None
        p.add_argument(
            flag_name(f.name),
            dest=f.name,
            type=kind,
            metavar=flag.metavar or (check.metavar if isinstance(check, Choice) else None),
            help=flag.help if f.default is None else f"{flag.help} (default {show(f.default)})",
        )


def _choice(choice: Choice) -> Callable[[str], str]:
    """An argparse ``type=`` for a config.Choice: a bad name fails while parsing, before any data is read."""

    def parse(text: str) -> str:
        problem = choice.problem(text)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
        return text

    return parse


def _train_config(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """TrainConfig from the options given (None: not given; TrainConfig's defaults), and their names."""
    from dataclasses import fields

    from bloodcell.config import TrainConfig

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = TrainConfig(**given)
    config.refuse_unused(given)
    return config, set(given)


def cmd_train(args: argparse.Namespace) -> int:
    config, given = _train_config(args)  # checked before torch loads or any image is read
    if args.devices:
        from bloodcell.engine.launch import launch, parse_devices

        devices = parse_devices(args.devices)
        return launch(devices, _without(args.argv[1:], ("--devices", "--device")), args.device)
    from bloodcell.engine.train import train

    result = train(config, progress=sys.stderr.isatty(), explicit=given)  # no progress bars in logs
    for note in result.skipped:  # trained, but on fewer images than the splits list: a failed input
        print(note, file=sys.stderr)
    if result.skipped:
        print(f"the model is written ({result.best}); exit 1 says that listed images were left out", file=sys.stderr)
    return 1 if result.skipped else 0


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less the given options and their values (``--flag value`` or ``--flag=value``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not arg.startswith(tuple(f"{f}=" for f in flags)):
            out.append(arg)
    return out


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bloodcell.data.check import findings_note, skipped_note
    from bloodcell.data.sources import load_dataset
    from bloodcell.runtime.metadata import MODEL_FORMATS, sidecar_path
    from bloodcell.weights import shipped_by_name

    model, suffix = Path(args.model), Path(args.model).suffix.lower()
    if suffix in MODEL_FORMATS:  # an export: its fit goes where the runtime reads it first
        sidecar = sidecar_path(model)
        if args.out is not None and Path(args.out).resolve() != sidecar.resolve():
            raise ConfigError(f"--out {args.out}: an export's fit goes to its sidecar {sidecar} (leave --out out)")
        args.out = str(sidecar)
    elif suffix != ".pt":
        raise ConfigError(f"--model {args.model}: calibrate re-fits a .pt model or an .onnx/.tflite export")
    elif args.out is None:
        raise ConfigError("--out: name the new .pt model file (it may be --model itself)")
    elif Path(args.out).suffix.lower() != ".pt":
        raise ConfigError(f"--out {args.out}: calibrate writes a .pt model file; name it so")
    check_outputs({"--out": args.out})
    if not (found := shipped_by_name(model)).is_file():  # before the data is read and its notes printed
        raise missing_model(found)
    if suffix == ".pt" and args.nms_iou is not None:  # a bad file or --nms-iou: said before the data's notes
        from bloodcell.models.checkpoint import load_model
        from bloodcell.runtime.counting import parse_nms_iou

        info = load_model(found)[1]
        parse_nms_iou(args.nms_iou, info.class_names, info.iou_threshold)
    elif suffix == ".pt":
        from bloodcell.models.checkpoint import read_checkpoint

        read_checkpoint(found)  # not a model file: ModelError now
    root = _data_root(args)
    dataset = load_dataset(root, split=args.split)
    records = dataset.records
    if not records:
        raise ConfigError(f"{root}: split {args.split!r} has no usable images")
    if note := findings_note(dataset):
        print(note, file=sys.stderr)
    if Path(root).is_dir():
        print(PLAIN_FOLDER_NOTE.format(root=root, done="counting is fitted", do="fit"), file=sys.stderr)
    if suffix == ".pt":
        import torch

        from bloodcell.engine.train import fit_counting_file

        if args.threads:
            torch.set_num_threads(args.threads)
        fit_counting_file(model, records, out=Path(args.out), nms_iou=args.nms_iou)
    else:
        from bloodcell.export.calibrate import fit_export_counting
        from bloodcell.runtime.counting import per_class

        fit = fit_export_counting(model, records, str(root), args.split, args.nms_iou, args.threads)
        print(fit.metrics)
        names, points = fit.metrics.class_names, per_class(fit.metrics.class_names, fit.metrics.conf)
        print(
            f"wrote {fit.sidecar} and the metadata inside {model.name} (operating points {points}; "
            f"NMS IoU {per_class(names, fit.iou_threshold)})"
        )
    if note := skipped_note(dataset):  # the fit is written, but over fewer images than the split lists
        print(note, file=sys.stderr)
        return 1
    return 0


def cmd_val(args: argparse.Namespace) -> int:
    from bloodcell.data.check import skipped_note
    from bloodcell.engine.validate import validate

    check_outputs({"--json": args.json}, {"--out": args.out or None})  # --out '': no plots, as its help says
    skipped: list[str] = []
    root = _data_root(args)
    if Path(root).is_dir():  # after the table would be too late to read the counts right
        print(PLAIN_FOLDER_NOTE.format(root=root, done="counts are scored", do="score counts"), file=sys.stderr)
    metrics = validate(
        args.model,
        root,
        split=args.split,
        conf=args.conf,
        out=args.out,
        json_path=args.json,
        cell_size=args.cell_size,
        device=args.device,
        batch=args.batch,
        threads=args.threads,
        on_read=lambda dataset: skipped.extend(filter(None, [skipped_note(dataset)])),
    )
    print(metrics)
    if args.out:
        print(f"plots: {Path(args.out) / 'pr_curves.png'}, {Path(args.out) / 'confusion_matrix.png'}")
    for note in skipped:  # after the table, where it is seen: these scores are not the whole split's
        print(note, file=sys.stderr)
    return 1 if skipped else 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.source and args.stream:
        raise ConfigError("predict: give image files or --source 0|VIDEO|URL, not both")
    if not args.source and not args.stream:
        raise ConfigError("predict: give image files, folders or globs, or --source 0|VIDEO|URL")
    if args.stream:
        return _predict_stream(args)
    if args.min_score is not None and not args.json:
        raise ConfigError("--min-score sets the lowest score listed in --json; add --json FILE")
    from bloodcell.app.predict_job import run_predict

    return run_predict(
        args.source,
        model=args.model,
        conf=args.conf,
        cell_size=args.cell_size,
        min_score=args.min_score,
        out=args.out,
        json_path=args.json,
        csv_path=args.csv,
        threads=args.threads,
        edgetpu=args.edgetpu,
        device=args.device,
        batch=args.batch,
        verbose=args.verbose,
    )


def _predict_stream(args: argparse.Namespace) -> int:
    for flag in ("json", "csv", "min_score"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} is for images; --source writes <out>/<name>_counts.csv")
    if args.batch != 1:
        raise ConfigError("--batch is for image files; --source takes frames one by one as they arrive")
    if args.verbose:
        raise ConfigError("--verbose is for image files (per-stage times); --source prints its frame rate at the end")
    from bloodcell.app.video import DEFAULT_OUT, run_stream
    from bloodcell.runtime.loader import load_predictor, print_model_notes

    out = DEFAULT_OUT if args.out is None else args.out
    check_outputs({}, {"--out": out})  # an unwritable folder: now, not after the video
    predictor = load_predictor(args.model, device=args.device, threads=args.threads, edgetpu=args.edgetpu)
    print_model_notes(predictor)
    _check_cell_size(predictor, args.cell_size)
    conf = _resolve_conf(args.conf, predictor)
    summary = run_stream(predictor, args.stream, out, conf=conf, cell_size=args.cell_size)
    print(summary)
    return 130 if summary.interrupted else 0 if summary.complete else 1


def cmd_export(args: argparse.Namespace) -> int:
    from bloodcell.export.exporter import calibration_shortfall, export_model
    from bloodcell.export.formats import CALIB_IMAGES

    for flag, value in (("--calib-images", args.calib_images), ("--data", args.data)):
        if value is not None and not args.int8:
            raise ConfigError(f"{flag} is for int8 calibration; add --int8 or leave it out")
    if args.verbose and args.format != "tflite":
        raise ConfigError("--verbose shows the TFLite converter's log; the ONNX export prints none")
    check_outputs({"--out": args.out})
    result = export_model(
        args.model,
        args.format,
        args.out,
        int8=args.int8,
        calib_images=args.calib_images or CALIB_IMAGES,
        imgsz=args.imgsz,
        data=args.data,
        verbose=args.verbose,
    )
    _print_written(result, int8=args.int8)
    if shortfall := calibration_shortfall(result, args.calib_images or CALIB_IMAGES):
        print(f"note: {shortfall}")
    if "ops" in result.metadata:
        print(f"ops: {', '.join(result.metadata['ops'])}")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    from bloodcell.export.qat import QATConfig, qat_finetune

    if not args.out.endswith(".tflite"):
        raise ConfigError(f"--out {args.out}: QAT writes a .tflite file")
    check_outputs({"--out": args.out})
    config = QATConfig(
        model=args.model,
        out=args.out,
        data=args.data,
        epochs=args.epochs,
        batch=args.batch,
        imgsz=args.imgsz,
        lr=args.lr,
        seed=args.seed,
        max_images=args.max_images,
        threads=args.threads,
    )
    _print_written(qat_finetune(config, progress=sys.stderr.isatty()), int8=True)  # no progress bars in logs
    return 0


def _print_written(result: ExportResult, int8: bool) -> None:
    print(f"wrote {result.path} ({result.size_bytes / 2**20:.2f} MB) and {result.metadata_path}")
    if result.replaced_fit:
        print(f"note: the {result.path.name} replaced had been refit by `bloodcell calibrate`; refit this one too")
    if int8:  # quantized scores can shift: refit on val with every cell boxed (README, "int8 counting")
        print(REFIT_HINT.format(path=result.path))


def cmd_benchmark(args: argparse.Namespace) -> int:
    from bloodcell.export.benchmark import benchmark, format_table

    check_outputs({}, {"--out": args.out})
    rows = benchmark(
        args.model, _data_root(args), split=args.split, threads=args.threads, out=args.out, extra=args.extra
    )
    print(format_table(rows, args.split, args.threads))
    print(f"wrote {args.out}/benchmark.csv")
    return 1 if any(r.error for r in rows) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bloodcell.app.server import create_app
    from bloodcell.runtime.loader import load_predictor, print_model_notes
    from bloodcell.runtime.metadata import model_ref
    from bloodcell.weights import default_model, model_file

    predictor = load_predictor(args.model, threads=args.threads)
    print_model_notes(predictor)
    _check_cell_size(predictor, args.cell_size)
    conf = _resolve_conf(args.conf, predictor)
    name = Path(args.model).name if args.model else default_model()[0].name
    app = create_app(  # checks its settings: a bad one is one line before "serving ..." is said
        predictor,
        args.max_upload_mb,
        model_name=name,
        model_ref=model_ref(model_file(args.model)),
        cell_size=args.cell_size,
        conf=conf,
        max_pixels=int(args.max_megapixels * 1e6),
        host=args.host,
        allowed_hosts=args.allowed_host,
    )
    sock = _listening_socket(args.host, args.port)  # a busy port too
    if args.host not in ("127.0.0.1", "localhost", "::1"):  # once it is known to be an address here
        print(f"warning: --host {args.host} lets other computers reach this server (no login)", file=sys.stderr)
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    if args.host in ("0.0.0.0", "::"):  # every address: not one a browser opens
        url = f"every address of this computer, port {args.port} (here: http://127.0.0.1:{args.port}/)"
    print(f"serving {name} at {url} (Ctrl+C stops)", file=sys.stderr)
    _run_server(app, sock, host=args.host, port=args.port, server_header=False)
    return 0


def _run_server(app, sock, **settings) -> None:
    """uvicorn on the socket bound already (so a busy port was a clean error before any message)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, **settings)).run(sockets=[sock])


def _check_cell_size(predictor, cell_size) -> None:
    from bloodcell.runtime.scaling import check_cell_size

    check_cell_size(predictor, cell_size)


def _listening_socket(host: str, port: int):
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:  # the host is the fault, not the port
            raise ConfigError(
                f"--host {host}: not an address of this computer ({reason}); use 127.0.0.1 (this computer only) "
                "or 0.0.0.0 (every network)"
            ) from None
        hint = "ports below 1024 need root; " if e.errno == errno.EACCES else ""
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({reason}); {hint}try another --port"
        ) from None
    return sock


def cmd_watch(args: argparse.Namespace) -> int:
    import threading
    from pathlib import Path

    from bloodcell.app.predict_job import processed_line
    from bloodcell.app.watch import Watcher
    from bloodcell.runtime.counting import conf_override
    from bloodcell.runtime.loader import load_predictor, print_model_notes
    from bloodcell.runtime.metadata import counted_by, model_digest
    from bloodcell.weights import model_file

    if not Path(args.folder).is_dir():
        raise ConfigError(f"{args.folder}: not a folder")
    out = str(Path(args.folder) / "bloodcell") if args.out is None else args.out
    check_outputs({}, {"--out": out})  # a file there: said now, naming the option
    predictor = load_predictor(args.model, threads=args.threads)
    print_model_notes(predictor)
    _check_cell_size(predictor, args.cell_size)
    conf = _resolve_conf(args.conf, predictor)
    path = model_file(args.model)
    override = conf_override(conf, predictor.conf, len(predictor.class_names))
    model = counted_by(path.name, model_digest(path), override, args.cell_size)
    watcher = Watcher(
        predictor,
        args.folder,
        out,
        conf=conf,
        settle=args.settle,
        log=sys.stdout,
        cell_size=args.cell_size,
        model=model,
    )
    with watcher:  # holds the --out folder's lock until done
        if args.once:
            watcher.drain()
        else:
            print(f"watching {args.folder}, writing {out}/counts.csv (Ctrl+C stops)", file=sys.stderr)
            try:
                watcher.run(threading.Event())
            except BaseException as e:  # Ctrl-C or SIGTERM
                if not is_interrupt(e):
                    raise
                print("stopped", file=sys.stderr)
                if left := watcher.not_yet_counted():  # not lost: the next watch on this folder counts them
                    names = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
                    print(
                        f"note: {len(left)} file(s) not counted yet ({names}); the next watch counts them",
                        file=sys.stderr,
                    )
    earlier = watcher.failed_earlier()
    if earlier:  # a cron user would otherwise hear of a bad file only on the run that first met it
        names = ", ".join(earlier[:5]) + (", ..." if len(earlier) > 5 else "")
        print(f"note: {len(earlier)} unchanged file(s) failed in an earlier run, not retried: {names}", file=sys.stderr)
    print(processed_line(watcher.processed, watcher.failed), file=sys.stderr if watcher.failed else sys.stdout)
    return 1 if watcher.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bloodcell.app.report import build_report

    check_outputs({"--out": args.out})  # a folder there, an unwritable place: said as for every output
    if Path(args.out).suffix.lower() not in (".html", ".htm"):  # never over the results or an image
        raise ConfigError(f"--out {args.out}: the report is an HTML page; name it .html")
    if args.title is not None and not args.title.strip():
        raise ConfigError("--title is empty; give the slide's name, or leave --title out for the file's")
    summary = build_report(args.results, images_dir=args.images, out=args.out, title=args.title)
    print(summary)
    print(f"wrote {summary.path}")
    return 1 if summary.missing_images or summary.failed_images else 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodcell",
        description="Detect and count RBC, WBC and platelets in blood-smear images.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_serve_command(sub)
    _add_report_command(sub)
    _add_batch_command(sub)
    return parser


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: an option it does not know is refused with that command's usage (argparse hands
    unknown options up to `bloodcell`'s own parser, whose usage lists the commands, not the options)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if extra and self._subparsers is None:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace, extra


def _version() -> str:
    from bloodcell import __version__

    return f"bloodcell {__version__}"


OWN_STOP = ("serve",)  # commands that keep SIGTERM's default (see main); others stop as on Ctrl-C


def _stops_on_sigterm(args: argparse.Namespace) -> bool:
    if args.command == "train":  # one process stops as on Ctrl-C; torchrun and its launcher stop workers themselves
        return not getattr(args, "devices", None) and "LOCAL_RANK" not in os.environ
    return args.command not in OWN_STOP


def _other_rank() -> bool:
    """A distributed worker other than its machine's first (local rank 0). Every process checks the same
    settings and data, so the first one's error or stop is theirs too: only it says it, once per
    machine (a fault of one machine's data is still said there)."""
    return os.environ.get("LOCAL_RANK", "0") != "0"


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a scheduler's SIGTERM ends a command as Ctrl-C does: finished work is kept


def _threads_note(threads: int | None) -> str | None:
    """--threads above the cores this process may use: honoured, but the runtimes then fight over the cores
    (16 threads on 2 cores ran the network 5-10x slower than 2)."""
    from bloodcell.runtime.timing import available_cores

    cores = available_cores()
    if threads is None or threads <= cores:
        return None
    return f"--threads {threads} is more than the {cores} cores this process may use: slower, not faster"


def _reader_gone(stream) -> bool:
    """Whether ``stream``'s reader has closed its pipe (not a socket's peer: poll says so of the stream
    itself). If so, the stream is pointed at devnull, as Python's signal docs advise, so that the flush at
    exit does not fail a second time."""
    import select

    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor (pytest's capture)
        return False
    if not hasattr(select, "poll"):  # Windows: not known to be this stream's pipe, so said as any other error
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # a pipe with no reader left: POLLERR on Linux, POLLHUP on macOS
    if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
        return False
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


def _failed(error: BaseException, args: argparse.Namespace) -> int:
    """The exit code of a command that failed, its reason said on one line; an unexpected error (a bug)
    is raised again with its traceback."""
    if isinstance(error, BloodcellError):
        if not _other_rank():
            print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    # `bloodcell data check --json - | head` (or stderr's reader gone, `2>&1 | head`)
    if isinstance(error, BrokenPipeError) and (_reader_gone(sys.stdout) or _reader_gone(sys.stderr)):
        return 141  # as a Unix tool killed by SIGPIPE: quiet, the reader has what it wanted
    if isinstance(error, OSError):  # unwritable --out, a file where a folder is expected, full disk, ...
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    top = (getattr(error, "name", None) or "").split(".")[0]
    if isinstance(error, ModuleNotFoundError) and top in EXTRAS:
        extra = "export" if args.command in ("export", "qat", "benchmark") else EXTRAS[top]  # torch and the converters
        command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))  # `data stats`
        print(f"error: `bloodcell {command}` needs {top}: pip install 'bloodcell[{extra}]'", file=sys.stderr)
        return 2
    raise error


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    args.argv = argv  # the command as given: `train --devices` hands it on to torchrun
    import signal
    import threading

    # A scheduler's stop ends a command as Ctrl-C does: predict writes the results of the finished images,
    # watch ends between files, batch writes its finished rows and run record, and a file being written is
    # removed, not left as a hidden temporary. Not distributed train (torchrun and its launcher stop workers
    # with SIGTERM themselves), nor serve (uvicorn's own handlers).
    if note := _threads_note(getattr(args, "threads", None)):
        print(f"warning: {note}", file=sys.stderr)
    ours = _stops_on_sigterm(args) and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if ours else None
    try:
        return int(args.func(args) or 0)
    except BaseException as e:
        if not is_interrupt(e):
            return _failed(e, args)
        # Ctrl-C or SIGTERM, also where it landed inside code that turned it into its own error (a C
        # extension's import, an exporter's "export failed"): a stop, not a fault
        if not _other_rank() and not isinstance(e, StopSaid):  # a command that said how it stopped: once
            print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
