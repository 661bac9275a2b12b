"""Numeric command-line options are checked while parsing: exit 2, one line naming the flag, nothing run."""

from __future__ import annotations

import argparse

import pytest

from bloodcell.cli import get_args_parser, main

# (command line, the flag the error must name)
BAD_NUMBERS = [
    (["predict", "a.jpg", "--threads", "-3"], "--threads"),
    (["predict", "a.jpg", "--threads", "0"], "--threads"),
    (["predict", "a.jpg", "--threads", "two"], "--threads"),
    (["predict", "a.jpg", "--min-score", "1.5"], "--min-score"),
    (["predict", "a.jpg", "--min-score", "nan"], "--min-score"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "2.5"], "--epochs"),
    (["train", "--batch", "-1"], "--batch"),
    (["train", "--imgsz", "0"], "--imgsz"),
    (["train", "--input-size", "0x480"], "--input-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--missing-tau", "1"], "--missing-tau"),
    (["train", "--val-every", "0"], "--val-every"),
    (["train", "--max-images", "0"], "--max-images"),
    (["export", "--format", "onnx", "--out", "m.onnx", "--calib-images", "0"], "--calib-images"),
    (["export", "--format", "onnx", "--out", "m.onnx", "--imgsz", "640x0"], "--imgsz"),
    (["qat", "--model", "m.pt", "--out", "m.tflite", "--epochs", "-1"], "--epochs"),
    (["qat", "--model", "m.pt", "--out", "m.tflite", "--lr", "-0.0001"], "--lr"),
    (["qat", "--model", "m.pt", "--out", "m.tflite", "--max-images", "0"], "--max-images"),
    (["benchmark", "--threads", "0"], "--threads"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--port", "65536"], "--port"),
    (["serve", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", "--threads", "-2"], "--threads"),
    (["watch", "folder", "--settle", "-1"], "--settle"),
    (["watch", "folder", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_number_exits_2_naming_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"error: argument {flag}: {argv[argv.index(flag) + 1]!r}: " in err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["predict", "a.jpg", "--threads", "4", "--min-score", "0"], "min_score", 0.0),
        (["train", "--lr", "1e-3", "--workers", "0", "--seed", "0"], "lr", 1e-3),
        (["serve", "--port", "65535"], "port", 65535),
        (["watch", "folder", "--settle", "0"], "settle", 0.0),
        (["export", "--format", "onnx", "--out", "m.onnx", "--imgsz", "640X480"], "imgsz", (640, 480)),
    ],
)
def test_good_numbers_parse(argv: list[str], attr: str, value) -> None:
    assert getattr(get_args_parser().parse_args(argv), attr) == value


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subparsers(sub):
                    yield f"{name} {inner}", subsub


def test_no_numeric_option_is_left_unchecked() -> None:
    """A bare type=int or type=float accepts -3, 0, nan and inf: every number needs a checked type."""
    bare = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, sub in _subparsers(get_args_parser())
        for action in sub._actions
        if action.type in (int, float)
    ]
    assert bare == []
