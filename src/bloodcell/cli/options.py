"""Option types and option groups the commands share: every value is checked while parsing, so a bad
one ends in argparse's one-line error (exit 2) before a model or dataset is read."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.errors import ConfigError

if TYPE_CHECKING:
    from bloodcell.config import Choice
    from bloodcell.runtime.predict import Predictor

DATASET_HELP = "VOC dataset folder or dataset YAML (default: --data, $BLOODCELL_DATA, or the cache)"

CONF_HELP = "operating points for counts: one value, or per class like RBC=0.4,WBC=0.5 (default: the model's)"


def sha256_hex(text: str) -> str:
    """--sha256: 64 hexadecimal digits, lower-cased."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 64 hexadecimal digits")
    return text.lower()


def data_root(args: argparse.Namespace) -> Path:
    """The dataset a command reads: PATH or --data (not both), else $BLOODCELL_DATA or the cache."""
    from bloodcell.data.sources import resolve_data_root

    path, data = getattr(args, "path", None), getattr(args, "data", None)
    if path and data:
        raise ConfigError(f"give the dataset once: {path} or --data {data}, not both")
    return resolve_data_root(path or data)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        type=device_text,
        metavar="auto|cpu|cuda[:N]",
        help="where a .pt model runs (default auto: a GPU when there is one; exported models run on the CPU)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=1, help="images per network pass, .pt models (default 1; 16+ on a GPU)"
    )


def device_text(text: str) -> str:
    """auto, cpu, cuda or cuda:N; whether the GPU exists is checked when the model loads."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")


def add_cell_size(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cell-size",
        type=cell_size_text,
        default="auto",
        help="red-cell diameter in pixels in your images, 'auto' (estimate per image, default) or 'none' (as is)",
    )


def conf_text(text: str, flag: str = "--conf") -> str:
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


def nms_iou_text(text: str) -> str:
    return conf_text(text, "--nms-iou")


def host_name(text: str) -> str:
    """--allowed-host: a name or address, optionally with a port; not a URL (it would match no Host header)."""
    name = text.strip()
    if not name or "/" in name or "://" in name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a host name or address like myscope.lab or 10.0.0.5")
    return name


def cell_size_text(text: str) -> float | str | None:
    from bloodcell.runtime.scaling import parse_cell_size

    try:
        return parse_cell_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_conf(text: str | None, predictor: Predictor) -> tuple[float, ...] | None:
    """--conf for this model: None keeps its own operating points."""
    if text is None:
        return None
    from bloodcell.runtime.counting import parse_conf

    return parse_conf(text, tuple(predictor.class_names), predictor.conf)


def check_cell_size(predictor: Predictor, cell_size: float | str | None) -> None:
    """--cell-size against the model's trained cell size (a rescale out of range is refused by name)."""
    from bloodcell.runtime import scaling

    scaling.check_cell_size(predictor, cell_size)


def size_text(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be at least 1")
    return w, h


# Every numeric option is checked here, while parsing: a bad value ends in argparse's one-line
# "argument --flag: ..." and exit code 2, before any model or dataset is loaded.


def number(
    cast: type, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
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


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, low_open=True)
non_negative_float = number(float, 0)
score = number(float, 0, 1)  # [0, 1]
port = number(int, 1, 65535)


def choice(spec: Choice) -> Callable[[str], str]:
    """An argparse ``type=`` for a config.Choice: a bad name fails while parsing, before any data is read."""

    def parse(text: str) -> str:
        problem = spec.problem(text)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
        return text

    return parse
