"""`bloodcell data check|stats|export|download`: Pascal VOC datasets and dataset YAMLs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bloodcell.atomic import atomic_open, check_outputs
from bloodcell.cli.options import DATASET_HELP, data_root, sha256_hex
from bloodcell.errors import ConfigError, first_of


def add_data_commands(sub: argparse._SubParsersAction) -> None:
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
        help="findings as JSON: printed instead of the table when no file is given, or written to FILE "
        "(the table printed too)",
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
    p.add_argument(
        "--format", required=True, type=str.lower, choices=["csv", "coco", "yolo", "tfrecord"], help="output format"
    )
    p.add_argument("--out", required=True, help="output folder (one file or folder per split)")
    p.add_argument("--split", nargs="+", help="splits to export (default: those of train val test it has)")
    p.set_defaults(func=cmd_data_export)

    p = dsub.add_parser("download", help="fetch the public BCCD archive into the cache (sha256-checked)")
    p.add_argument("--out", help="destination folder (default: ~/.cache/bloodcell/BCCD)")
    p.add_argument("--url", help="archive to fetch instead of the pinned GitHub tarball (a mirror, or a file:// URL)")
    p.add_argument(
        "--sha256",
        type=sha256_hex,
        help="expected sha256 of that archive (default: none; the files are checked against the pinned tree hash)",
    )
    p.set_defaults(func=cmd_data_download)


def _refuse_inside_dataset(root: str | Path, outputs: dict[str, str | None]) -> None:
    """An output written into the folders being read would replace a label file or be read as one next time
    (a report named Annotations/x.xml, plots among the images)."""
    from bloodcell.data.sources import read_spec
    from bloodcell.data.voc import VOC_FOLDERS

    folders = [(source.path / sub).resolve() for source in read_spec(root).sources for sub in VOC_FOLDERS]
    for flag, path in outputs.items():
        if not path or path == "-":
            continue
        target = Path(path).resolve()
        for folder in folders:
            if target.is_relative_to(folder):
                raise ConfigError(f"{flag} {path}: is inside {folder}, which the dataset is read from; write elsewhere")


def cmd_data_check(args: argparse.Namespace) -> int:
    from bloodcell.data.check import check_dataset, format_findings

    dataset_file = args.json and Path(args.json).suffix.lower() in (".yaml", ".yml")
    if args.json and args.json != "-" and (Path(args.json).is_dir() or dataset_file):
        if args.path is not None or args.data is not None:  # never written over: a dataset, not a report name
            what = "a dataset file" if dataset_file else "a folder"
            raise ConfigError(f"--json {args.json}: is {what}, not a file to write the report to")
        args.path, args.json = args.json, "-"  # `data check --json DATASET`: the flag as it was, then the dataset
    check_outputs({"--json": None if args.json == "-" else args.json})
    _refuse_inside_dataset(data_root(args), {"--json": args.json})
    report = check_dataset(data_root(args), split=args.split)
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
    _refuse_inside_dataset(data_root(args), {"--out": args.out})
    stats = compute_stats(data_root(args))
    print(stats)
    for warning in (stats.findings_warning(), stats.unlisted_warning()):
        if warning:
            print(warning, file=sys.stderr)
    print(f"wrote {write_stats(stats, args.out)}")
    for path in plot_stats(stats, data_root(args), args.out):
        print(f"wrote {path}")
    left_out = [f"{s.name} {s.skipped}" for s in stats.distinct if s.skipped]
    if left_out:  # a failed input, as in `data check`: said with the exit code, not only as a warning
        root = data_root(args)
        print(
            f"error: {root}: listed images left out ({', '.join(left_out)}); the statistics cover the others: "
            f"`bloodcell data check {shlex.quote(str(root))}` names them",
            file=sys.stderr,
        )
    return 1 if left_out else 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from bloodcell.data.check import findings_note, skipped_note
    from bloodcell.data.export import export_dataset
    from bloodcell.data.sources import unlisted_images
    from bloodcell.data.voc import unknown_classes

    check_outputs({}, {"--out": args.out})
    _refuse_inside_dataset(data_root(args), {"--out": args.out})
    skipped = []  # one line per split that left images out, said again with the exit code

    def report(dataset) -> None:
        note = findings_note(
            dataset,
            "the export leaves those boxes out and cannot mark the images as partly boxed, so a detector trained "
            "on it learns those cells as background",
        )
        if note:
            print(note, file=sys.stderr)
        if left_out := skipped_note(dataset, "error", "the export holds"):
            skipped.append(left_out)
        k = len(dataset.class_names)
        unknown = {Path(file).stem for file in unknown_classes(dataset.findings)}  # findings_note said those
        for c, name in enumerate(dataset.class_names):  # the formats cannot say it: a detector would learn
            # the unboxed cells as background
            partial = sum(not r.exhaustive_mask(k)[c] and r.image_id not in unknown for r in dataset.records)
            if partial:
                print(
                    f"warning: split {dataset.split or 'all'}: {name} is not boxed exhaustively in {partial} of "
                    f"{len(dataset.records)} images; the {args.format} files cannot mark that, and a detector "
                    "trained on this export learns the unboxed cells as background",
                    file=sys.stderr,
                )

    def written(path: Path) -> None:  # as each split finishes: a stopped export has named what it kept
        print(f"wrote {path}", flush=True)

    export_dataset(data_root(args), args.format, args.out, splits=args.split, on_read=report, on_written=written)
    # (splits named with --split: the others are left out on purpose)
    unlisted = unlisted_images(data_root(args)) if args.split is None else []
    if unlisted:
        print(
            f"warning: {data_root(args)}: {len(unlisted)} labelled images are in none of the split lists "
            f"({first_of(unlisted)}); the export leaves them out",
            file=sys.stderr,
        )
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

    if args.out is not None:  # `--out ""` (an unset variable) is refused, not taken for the default cache
        check_outputs({}, {"--out": args.out})
    # Only options given on the command line override download_bccd's pinned defaults.
    options = {k: v for k, v in (("url", args.url), ("sha256", args.sha256)) if v is not None}
    print(f"BCCD ready at {download_bccd(args.out, **options)}")
    return 0
