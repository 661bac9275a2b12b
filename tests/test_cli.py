"""Numeric command-line options are checked while parsing: exit 2, one line naming the flag, nothing run."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest

from bloodcell.cli import get_args_parser, main
from bloodcell.config import AUGMENT_PRESETS, MISSING_LABEL_METHODS, MODEL_NAMES, TrainConfig, flag_name, show
from bloodcell.errors import ModelError

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


# --- `bloodcell train`: options generated from TrainConfig's fields --------------------------------------


def _train_options() -> dict[str, argparse.Action]:
    train = dict(_subparsers(get_args_parser()))["train"]
    return {a.dest: a for a in train._actions if a.option_strings and a.dest != "help"}


def test_every_train_setting_is_an_option_or_explicitly_not() -> None:
    options = _train_options()
    for f in fields(TrainConfig):
        assert "flag" in f.metadata, f"TrainConfig.{f.name}: no Flag and no explicit metadata={{'flag': None}}"
        if f.metadata["flag"] is None:
            assert f.name not in options
            continue
        action = options.pop(f.name)
        assert action.option_strings == [flag_name(f.name)] and action.help
        assert action.default is None  # cmd_train must see which settings were given (--resume)
    assert set(options) == {"devices"}  # no option that is not a setting, but the torchrun launcher's


def test_a_setting_without_a_flag_breaks_the_parser(monkeypatch) -> None:
    @dataclass
    class Grown(TrainConfig):
        new_setting: int = 1

    monkeypatch.setattr("bloodcell.config.TrainConfig", Grown)
    with pytest.raises(TypeError, match=r"TrainConfig\.new_setting: declare its Flag"):
        get_args_parser()


#: A value that is not the default for every setting: a new setting must be added here to be tested.
NON_DEFAULT = TrainConfig(
    model="cellnet-mnv2", data="voc", train_split="trainval", val_split="test", epochs=3, batch=2, scale=0.5, imgsz=128,
    input_size=(320, 256), lr=1e-3, weight_decay=0.01, warmup_epochs=0.5, min_lr_ratio=0.1, ema_decay=0.99,
    grad_clip=5.0, freeze_bn=True, augment="light", missing_labels="pseudo", missing_tau=0.2, seed=7, workers=1,
    device="cuda:1", threads=3, out="run", val_every=2, pretrained=False, weights="w.pth", max_images=4, resume=True,
)  # fmt: skip


def _capture_train(monkeypatch) -> list:
    """Replaces training with a recorder of (config, explicit): what cmd_train hands on."""
    import bloodcell.engine.train as engine

    calls = []

    def record(config, progress, explicit):
        calls.append((config, explicit))
        return engine.TrainResult(Path("run"), Path("run/best.pt"), 0.0, None, 0.0)

    monkeypatch.setattr(engine, "train", record)
    return calls


def test_command_line_round_trips_to_train_config(monkeypatch) -> None:
    default = TrainConfig()
    assert [f.name for f in fields(TrainConfig) if getattr(NON_DEFAULT, f.name) == getattr(default, f.name)] == []
    argv = []
    for f in fields(TrainConfig):
        value = getattr(NON_DEFAULT, f.name)
        if f.name != "pretrained":  # --no-pretrained with --weights is refused: on its own below
            argv += [flag_name(f.name)] if isinstance(value, bool) else [flag_name(f.name), show(value)]
    calls = _capture_train(monkeypatch)
    assert main(["train", *argv]) == 0
    assert main(["train", "--no-pretrained"]) == 0
    assert main(["train"]) == 0
    every = {f.name for f in fields(TrainConfig)}
    assert calls == [
        (replace(NON_DEFAULT, pretrained=True), every - {"pretrained"}),
        (TrainConfig(pretrained=False), {"pretrained"}),
        (default, set()),
    ]


BAD_CHOICES = [
    ("--augment", "strong", AUGMENT_PRESETS),
    ("--model", "cellnet2", (*MODEL_NAMES, "FILE.pt")),
    ("--model", "model.pth", (*MODEL_NAMES, "FILE.pt")),
    ("--missing-labels", "guess", MISSING_LABEL_METHODS),
    ("--device", "gpu", ("auto", "cpu", "cuda", "cuda:N")),
]


@pytest.mark.parametrize(("flag", "value", "choices"), BAD_CHOICES, ids=[f"{f} {v}" for f, v, _ in BAD_CHOICES])
def test_bad_choice_fails_while_parsing_naming_the_choices(flag, value, choices, monkeypatch, capsys) -> None:
    calls = _capture_train(monkeypatch)
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "/nonexistent/slow/share", flag, value])
    assert info.value.code == 2 and calls == []
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"bloodcell train: error: argument {flag}: {value!r}: choose from ")
    assert all(choice in err for choice in choices), err


@pytest.mark.parametrize("argv", [["report", "r.json"], ["data", "check"], ["predict", "a.jpg"]])
def test_an_unknown_option_is_refused_with_its_commands_usage(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--bogus"])
    err = capsys.readouterr().err
    command = " ".join(a for a in argv if not a.endswith((".json", ".jpg")))
    assert info.value.code == 2 and err.startswith(f"usage: bloodcell {command} [-h]")
    assert err.splitlines()[-1] == f"bloodcell {command}: error: unrecognized arguments: --bogus"


def test_bad_choice_fails_before_torch_or_the_data_load() -> None:
    """In a fresh interpreter: the error comes while torch (needed to decode any image) is not even imported."""
    code = (
        "import sys\n"
        "from bloodcell.cli import main\n"
        "try:\n"
        "    main(['train', '--data', '/nonexistent/slow/share', '--augment', 'strong'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2 and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"bloodcell train: error: argument --augment: 'strong': choose from {', '.join(AUGMENT_PRESETS)}"
    )


def test_settings_checked_together_fail_before_training(monkeypatch, capsys) -> None:
    calls = _capture_train(monkeypatch)
    assert main(["train", "--data", "/nonexistent/slow/share", "--imgsz", "100"]) == 2
    assert calls == [] and capsys.readouterr().err == "error: --imgsz 100: expected a multiple of 32\n"


def test_train_help_shows_defaults_and_choices(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in ("--epochs EPOCHS training epochs (default 60)", "--input-size WxH", "the 640x480 field at --scale",
                 "--scale SCALE magnification the model learns and runs at",
                 "--augment {train,train-mild,train-v1,light,none}", "--no-pretrained", "--device {auto,cpu,cuda,",
                 "--model {cellnet,cellnet-mnv2,fasterrcnn,FILE.pt}"):  # fmt: skip
        assert part in text, part


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--format", "onnx", "--out", "m.onnx", "--calib-images", "5"], "--calib-images is for int8"),
        (["export", "--format", "onnx", "--out", "m.onnx", "--data", "/nope"], "--data is for int8"),
        (["calibrate", "--model", "m.onnx", "--data", "d", "--out", "x.pt"], "an export's fit goes to its sidecar"),
        (["calibrate", "--model", "m.caffemodel", "--data", "d", "--out", "x.pt"], "calibrate re-fits a .pt model or"),
        (["calibrate", "--model", "m.pt", "--data", "d"], "--out: name the new .pt model file"),
        (["calibrate", "--model", "m.pt", "--data", "d", "--out", "x.onnx"], "calibrate writes a .pt model file"),
        (["benchmark", "--model", "m.tflite", "--data", "d"], "benchmark exports a .pt model"),
        (["train", "--model", "m.pt", "--no-pretrained"], "is fine-tuned from its own"),
        (["train", "--model", "m.pt", "--weights", "w.pth"], "is fine-tuned from its own"),
        (["train", "--no-pretrained", "--weights", "w.pth"], "contradict each other"),
        (["train", "--model", "fasterrcnn", "--missing-labels", "plain"], "Faster R-CNN trains with its own"),
        (["train", "--missing-labels", "plain", "--missing-tau", "0.2"], "--missing-labels plain does not use it"),
        (["predict", "a.jpg", "--min-score", "0.1"], "--min-score sets the lowest score listed in --json"),
        (["data", "check", "/a", "--data", "/b"], "give the dataset once: /a or --data /b, not both"),
        (["qat", "--model", "m.pt", "--out", "q.tflite", "--imgsz", "32"], "multiple of 32 from 64 to 4096"),
        (["qat", "--model", "m.pt", "--out", "q.tflite", "--batch", "300"], "at most 256"),
        (["qat", "--model", "m.pt", "--out", ".tflite"], "QAT writes a .tflite file; name it like"),  # before training
        (["export", "--format", "onnx", "--out", "o/.onnx"], "an onnx file must end in .onnx; name it like model.onnx"),
    ],
)
def test_flags_that_would_do_nothing_are_refused(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "abc", "0" * 63])
def test_download_hash_must_be_a_sha256(value: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["data", "download", "--sha256", value])
    assert "expected 64 hexadecimal digits" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["val", "--json", "{file}/m.json"],
            "--json {file}/m.json: cannot write there ({file} is a file, not a folder)",
        ),
        (["val", "--out", "{file}"], "--out {file}: is a file, expected a folder"),
        (["calibrate", "--model", "m.pt", "--data", "d", "--out", "{file}/x.pt"], "--out {file}/x.pt: cannot write"),
        (["export", "--format", "onnx", "--out", "{dir}"], "--out {dir}: cannot write there (is a folder"),
        (["qat", "--model", "m.pt", "--out", "{file}/q.tflite"], "--out {file}/q.tflite: cannot write there"),
        (["benchmark", "--out", "{file}"], "--out {file}: is a file, expected a folder"),
        (["data", "stats", "d", "--out", "{file}"], "--out {file}: is a file, expected a folder"),
        (["report", "r.json", "--out", "{dir}"], "--out {dir}: cannot write there (is a folder"),
        (["train", "--data", "d", "--out", "{file}"], "--out {file}: is a file, expected a run folder"),
        (
            ["train", "--data", "d", "--out", "{file}/r"],
            "--out {file}/r: cannot make the run folder {file}/r ({file} is",
        ),
        (["val", "--model", "{file}", "--json", "{file}"], "--json {file}: is the model file; it would be overwritten"),
        (["val", "--out", "{dir}", "--json", "{dir}/pr_curves.png"], "--json {dir}/pr_curves.png: is where --out puts"),
    ],
)
def test_outputs_are_checked_before_the_work(argv: list[str], message: str, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    where = {"file": tmp_path / "file", "dir": tmp_path}
    assert main([a.format(**where) for a in argv]) == 2  # before any model or dataset is read
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(**where)}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["predict", "a.jpg", "--source", ""], "--source: the value is empty"),
        (["predict", "a.jpg", "--model", ""], "--model: the value is empty"),
        (["predict", "a.jpg", ""], "SOURCE: an empty argument"),
        (["watch", ""], "FOLDER: an empty argument"),  # it watched the current folder
        (["serve", "--host", ""], "--host: the value is empty"),  # it listened on every interface
        (["report", "r.json", "--images", ""], "--images: the value is empty"),
        (["batch", "imgs", "--out", ""], "--out: the path is empty; name a folder"),
        (["data", "check", "--data", ""], "--data: the value is empty"),
        (["benchmark", "--extra", "a.onnx", ""], "--extra: the value is empty"),
        (["data", "download", "--out", ""], "--out: the path is empty; name a folder"),  # it took the cache
        (["train", "--resume", "--out", ""], "--out: the path is empty; name the run folder"),  # the current one
        (["predict", "a.jpg", "--json", " "], "--json: the path is empty; name a file"),  # a file named " "
    ],
)
def test_an_empty_value_is_refused_not_taken_as_not_given(argv, said, capsys) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {said}")


def test_calibrate_does_not_write_over_a_file_that_is_not_a_model(tmp_path, capsys) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes")
    assert main(["calibrate", "--model", "cellnet_bccd.pt", "--data", "d", "--out", str(notes)]) == 2
    assert f"--out {notes}: exists and is not a bloodcell model file" in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_a_refused_command_leaves_no_output_folders(tmp_path, capsys) -> None:
    """The output checks make the folders they probe and remove them: a command refused after them
    (here: no such model) leaves nothing behind; a file named as the output folder is refused."""
    out = tmp_path / "runs" / "val1"
    assert main(["val", "--model", str(tmp_path / "missing.pt"), "--out", str(out), "--json", str(out / "m.json")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(["val", "--out", str(out), "--json", str(out)]) == 2
    assert f"--json {out}: cannot write there (it is the --out folder; expected a file name)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "stops"),
    [
        (["val"], {}, True),
        (["data", "export", "d", "--format", "csv", "--out", "o"], {}, True),
        (["train"], {}, True),  # one process: as Ctrl-C
        (["train", "--devices", "cpu:2"], {}, False),  # the launcher: torchrun stops its workers
        (["train"], {"LOCAL_RANK": "0"}, False),  # a torchrun worker
        (["serve"], {}, False),  # uvicorn's own handlers
        (["batch", "s", "--out", "o"], {}, True),  # as Ctrl-C: finished rows and the run record written
    ],
)
def test_which_commands_a_sigterm_stops_as_ctrl_c(argv, env, stops, monkeypatch) -> None:
    from bloodcell.cli import _stops_on_sigterm, get_args_parser

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _stops_on_sigterm(get_args_parser().parse_args(argv)) == stops


def _raising(error: BaseException, turned_into: BaseException, suppress: bool = False):
    def command(_args) -> int:
        try:
            raise error
        except BaseException as e:
            raise turned_into from (None if suppress else e)

    return command


@pytest.mark.parametrize(
    ("error", "turned_into", "suppress", "code"),
    [
        (KeyboardInterrupt(), ImportError("initialization failed"), False, 130),  # a C extension's import
        (KeyboardInterrupt(), ModelError("ONNX export failed: ..."), True, 130),  # the exporter's, `from None`
        (ValueError("a bug"), ModelError("ONNX export failed: a bug"), True, 2),  # a real fault: said, its code
        (ValueError("a bug"), ImportError("a bug"), False, None),  # a bug keeps its traceback
    ],
)
def test_a_stop_turned_into_another_error_is_still_a_stop(error, turned_into, suppress, code, monkeypatch, capsys):
    """Ctrl-C or SIGTERM inside a C extension's import surfaces as an ImportError caused by the
    KeyboardInterrupt (seen in CI: a run stopped at its first plot exited 1 with a traceback)."""
    from bloodcell import cli

    monkeypatch.setattr(cli.model, "cmd_val", _raising(error, turned_into, suppress))
    if code is None:
        with pytest.raises(ImportError):
            cli.main(["val"])
        return
    assert cli.main(["val"]) == code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "interrupted" if code == 130 else last.startswith("error: ")


def test_calibrate_names_a_missing_model_before_reading_the_data(tmp_path, capsys) -> None:
    args = ["calibrate", "--model", str(tmp_path / "nope.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "x.pt")]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'nope.pt'}: model file not found"]


def test_no_dataset_anywhere_says_how_to_get_one(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty cache
    monkeypatch.delenv("BLOODCELL_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert main(["data", "stats", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "error: no dataset given, and none at the default" in err and "`bloodcell data download`" in err
    assert main(["data", "stats", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: dataset folder not found"


def test_a_bad_model_or_option_is_said_before_the_datas_notes(bccd_root, tmp_path, capsys):
    """BCCD's label findings and the plain-folder note are long: a command that cannot run says only why."""
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    runs = [
        ["train", "--model", str(tmp_path / "gone.pt"), "--data", str(bccd_root), "--out", str(tmp_path / "r")],
        ["train", "--model", str(junk), "--data", str(bccd_root), "--out", str(tmp_path / "r")],
        ["calibrate", "--model", str(junk), "--data", str(bccd_root), "--out", str(tmp_path / "f.pt")],
        ["calibrate", "--model", "cellnet_bccd.pt", "--data", str(bccd_root), "--out", str(tmp_path / "f.pt"),
         "--nms-iou", "Foo=0.3"],
    ]  # fmt: skip
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_a_broken_pipe_is_said_as_an_error_where_stdout_cannot_be_polled(monkeypatch, capsys):
    """Windows has no poll: a BrokenPipeError there may be a socket's or a child's, so it is not hidden."""
    import select

    from bloodcell import cli

    monkeypatch.delattr(select, "poll", raising=False)
    args = argparse.Namespace(command="predict")
    assert cli._failed(BrokenPipeError(32, "Broken pipe"), args) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("command", [["data", "export", "DATA", "--format", "csv"], ["train", "--data", "DATA"]])
def test_an_empty_out_is_refused_not_taken_for_the_current_folder(command, tiny_voc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(tiny_voc) if a == "DATA" else a for a in command]
    assert main([*argv, "--out", ""]) == 2
    assert "--out: the path is empty; name a" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written where the command ran


@pytest.mark.parametrize(("best", "said"), [(0.0, True), (0.41, False)])
def test_a_run_whose_best_epoch_finds_nothing_says_so(monkeypatch, capsys, best, said) -> None:
    import bloodcell.engine.train as engine

    result = engine.TrainResult(Path("run"), Path("run/best.pt"), best, object(), 0.0)  # type: ignore[arg-type]
    monkeypatch.setattr(engine, "train", lambda config, progress, explicit: result)
    assert main(["train"]) == 0  # the run worked and wrote its model: a warning, not a failure
    err = capsys.readouterr().err
    assert ("warning: the best epoch's val mAP@0.5 is 0: run/best.pt finds no labelled cell yet" in err) == said
