"""`bloodcell train|calibrate|val|predict|export|qat|benchmark`: a model from data to deployed file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.atomic import check_outputs
from bloodcell.cli.options import (
    CONF_HELP,
    add_cell_size,
    add_device,
    check_cell_size,
    choice,
    conf_text,
    data_root,
    nms_iou_text,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    resolve_conf,
    score,
    size_text,
)
from bloodcell.errors import ConfigError

REFIT_HINT = (
    "int8: refit its counting: bloodcell calibrate --model {path} --data DATA, DATA a val split with every cell "
    "boxed (e.g. datasets/bccd-dense.yaml)"
)

if TYPE_CHECKING:  # config is imported lazily below, like every other bloodcell module
    from bloodcell.config import TrainConfig
    from bloodcell.export.exporter import ExportResult


#: calibrate's and val's note on a plain folder: ``done`` is what happens to counting, ``do`` what to do instead
PLAIN_FOLDER_NOTE = (
    "note: {root} is a plain VOC folder, so {done} as if every cell in it is boxed (images with boxes of unknown "
    "classes aside); if its labels leave cells "
    "out (BCCD's XML misses about 40% of red cells), {do} on a dataset YAML that says which classes are "
    "exhaustive (e.g. datasets/bccd-dense.yaml)"
)


class _OneSource(argparse.Action):
    """--source given twice is refused: one stream per run, and the first would be dropped without a word."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"--source given twice ({getattr(namespace, self.dest)}, {values}): one video or camera per run"
            )
        setattr(namespace, self.dest, values)


def add_model_commands(sub: argparse._SubParsersAction) -> None:
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
        type=nms_iou_text,
        help="NMS IoU threshold(s) to store: one value, or per class like WBC=0.3 (others keep the model's); "
        "the operating points are then fitted with them",
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: every core)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("val", help="score a model: VOC mAP@0.5, COCO AP, count error, plots")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML")
    p.add_argument("--split", default="val", help="the split scored (default: val)")
    p.add_argument("--conf", type=conf_text, help=CONF_HELP)
    add_cell_size(p)
    add_device(p)
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: every core)")
    p.add_argument("--json", help="write the metrics as JSON to this file")
    p.add_argument(
        "--out", default="runs/val", help="folder for PR curves and the confusion matrix (default: runs/val; '': none)"
    )
    p.set_defaults(func=cmd_val)

    p = sub.add_parser("predict", help="detect and count cells in images, a video or a camera")
    p.add_argument(
        "source", nargs="*", help="image files, folders (their own images, not subfolders) or globs (** for any depth)"
    )
    p.add_argument(
        "--source",
        dest="stream",
        metavar="0|VIDEO|URL",
        action=_OneSource,
        help="camera index, video file or stream URL",
    )
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=conf_text, help=CONF_HELP)
    add_cell_size(p)
    p.add_argument(
        "--min-score",
        type=score,
        help="lowest score listed in --json, which it needs (default: the lowest operating point)",
    )
    p.add_argument("--out", help="folder for annotated images (with --source: the annotated video and counts CSV)")
    p.add_argument("--json", help="write one record per image to this JSON file")
    p.add_argument("--csv", help="write per-image counts to this CSV file")
    p.add_argument(
        "--voc",
        metavar="FOLDER",
        help="write each image's counted boxes as Pascal VOC XML (FOLDER/<image id>.xml), labels to correct in "
        "a labelling tool and train on; files already there are kept",
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: every core)")
    add_device(p)
    p.add_argument("--edgetpu", action="store_true", help="run a compiled .tflite model on a Coral Edge TPU")
    p.add_argument(
        "--verbose", action="store_true", help="per image, time per stage: load, letterbox, network, decode, the rest"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a model to ONNX or TFLite (fp32 or full-integer int8)")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--format", required=True, type=str.lower, help="onnx or tflite")
    p.add_argument(
        "--int8",
        action="store_true",
        help="full-integer int8: int8 weights and activations (TFLite: int8 I/O, the fastest with AVX-512 VNNI "
        "and on Edge TPU; ONNX: uint8 input, the fastest on AVX2-only CPUs)",
    )
    p.add_argument(
        "--calib-images",
        type=positive_int,
        help="with --int8: training images that set int8 ranges (default: 32)",
    )
    p.add_argument("--imgsz", type=size_text, help="static input size WxH (default: the model's, 480x384 when shipped)")
    p.add_argument("--data", help="with --int8: VOC dataset folder or YAML for the calibration images")
    p.add_argument("--out", required=True, help="output file (.onnx or .tflite); metadata goes to <out>.json")
    p.add_argument("--verbose", action="store_true", help="show the TFLite converter's log (shown anyway if it fails)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("qat", help="quantization-aware fine-tuning, then export a full-integer int8 TFLite")
    p.add_argument("--model", required=True, help="trained .pt model to start from")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML (train split)")
    p.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs (default: 2)")
    p.add_argument("--batch", type=positive_int, default=8, help="images per step (default: 8)")
    p.add_argument(
        "--imgsz", type=positive_int, default=384, help="side of the square training crops, one number (default: 384)"
    )
    p.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (default: 1e-4)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's, all cores)")
    p.add_argument("--max-images", type=positive_int, help="fine-tune on the first N images only (quick checks)")
    p.add_argument("--out", required=True, help="output .tflite file; metadata goes to <out>.json")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser("benchmark", help="size, mAP@0.5 and latency of every export format of a model")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--data", help="VOC dataset folder or dataset YAML")
    p.add_argument("--split", default="val", help="split to score and time on (default: val)")
    p.add_argument("--threads", type=positive_int, default=2, help="inference threads (default: 2)")
    p.add_argument(
        "--extra", nargs="+", action="extend", default=[], help="more model files to include (e.g. a QAT .tflite)"
    )
    p.add_argument(
        "--out", default="runs/benchmark", help="folder for the exports and benchmark.csv (default: runs/benchmark)"
    )
    p.set_defaults(func=cmd_benchmark)


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
            kind = number(check.cast, check.low, check.high, low_open=check.low_open, high_open=check.high_open)
        elif isinstance(check, Size):
            kind = size_text
        elif isinstance(check, Choice):
            kind = choice(check)
        else:
            kind = None
        p.add_argument(
            flag_name(f.name),
            dest=f.name,
            type=kind,
            metavar=flag.metavar or (check.metavar if isinstance(check, Choice) else None),
            help=flag.help if f.default is None else f"{flag.help} (default {show(f.default)})",
        )


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
    if result.metrics is not None and result.best_map50 == 0:  # ran, and a model is written: but it finds nothing
        print(
            f"warning: the best epoch's val mAP@0.5 is 0: {result.best} finds no labelled cell yet (too few epochs, a "
            "learning rate too high, or labels that do not match the images: `bloodcell data check` lists faults)",
            file=sys.stderr,
        )
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
    from bloodcell.data.check import skipped_note
    from bloodcell.export.calibrate import calibrate

    root = data_root(args)
    skipped: list[str] = []

    def read(dataset) -> None:
        if Path(root).is_dir():
            print(PLAIN_FOLDER_NOTE.format(root=root, done="counting is fitted", do="fit"), file=sys.stderr)
        skipped.extend(filter(None, [skipped_note(dataset)]))

    calibrate(args.model, root, args.out, args.split, args.nms_iou, args.threads, on_read=read)
    for note in skipped:  # the fit is written, but over fewer images than the split lists
        print(note, file=sys.stderr)
    return 1 if skipped else 0


def cmd_val(args: argparse.Namespace) -> int:
    from bloodcell.data.check import skipped_note
    from bloodcell.engine.validate import PLOTS, validate

    check_outputs({"--json": args.json}, {"--out": args.out or None})  # --out '': no plots, as its help says
    skipped: list[str] = []
    root = data_root(args)
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
        print(f"plots: {', '.join(str(Path(args.out) / name) for name in PLOTS)}")
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
        voc=args.voc,
        threads=args.threads,
        edgetpu=args.edgetpu,
        device=args.device,
        batch=args.batch,
        verbose=args.verbose,
    )


def _predict_stream(args: argparse.Namespace) -> int:
    for flag in ("json", "csv", "voc", "min_score"):
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
    check_cell_size(predictor, args.cell_size)
    conf = resolve_conf(args.conf, predictor)
    summary = run_stream(predictor, args.stream, out, conf=conf, cell_size=args.cell_size)
    print(summary)
    return 130 if summary.interrupted else 0 if summary.complete else 1


def cmd_export(args: argparse.Namespace) -> int:
    from bloodcell.export.exporter import calibration_shortfall, export_model
    from bloodcell.export.formats import CALIB_IMAGES

    check_outputs({"--out": args.out})
    result = export_model(
        args.model,
        args.format,
        args.out,
        int8=args.int8,
        calib_images=args.calib_images,
        imgsz=args.imgsz,
        data=args.data,
        verbose=args.verbose,
    )
    _print_written(result, int8=args.int8)
    if shortfall := calibration_shortfall(result, args.calib_images or CALIB_IMAGES):
        print(f"note: {shortfall}")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    from bloodcell.export.qat import QATConfig, qat_finetune

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
    check_outputs({"--out": args.out})
    _print_written(qat_finetune(config, progress=sys.stderr.isatty()), int8=True)  # no progress bars in logs
    return 0


def _print_written(result: ExportResult, int8: bool) -> None:
    from bloodcell.export.edgetpu import edgetpu_note

    print(f"wrote {result.path} ({result.size_bytes / 2**20:.2f} MB) and {result.metadata_path}")
    if result.replaced_fit:
        print(f"note: the {result.path.name} replaced had been refit by `bloodcell calibrate`; refit this one too")
    if int8:  # quantized scores can shift: refit on val with every cell boxed (README, "int8 counting")
        print(REFIT_HINT.format(path=result.path))
    if ops := result.metadata.get("ops"):  # TFLite files list theirs
        print(f"ops: {', '.join(ops)}")
        if int8:
            print(edgetpu_note(result.path, ops))


def cmd_benchmark(args: argparse.Namespace) -> int:
    from bloodcell.export.benchmark import benchmark, format_table

    check_outputs({}, {"--out": args.out})
    rows = benchmark(
        args.model, data_root(args), split=args.split, threads=args.threads, out=args.out, extra=args.extra
    )
    print(format_table(rows, args.split, args.threads))
    print(f"wrote {args.out}/benchmark.csv")
    return 1 if any(r.error for r in rows) else 0
