"""Smoke training, run-folder contents, and resume after SIGKILL (tiny 6-image dataset)."""

import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from bloodcell.cli import main
from bloodcell.config import TrainConfig
from bloodcell.engine.train import train
from bloodcell.errors import ConfigError
from bloodcell.models.checkpoint import FORMAT_VERSION, load_model, read_training_checkpoint

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["cellnet", "cellnet-mnv2", "fasterrcnn"])
def test_smoke_train_two_iterations_writes_a_complete_run(tiny_voc, tmp_path, model, capsys):
    data = tiny_voc
    if model == "fasterrcnn":  # labels that leave cells out, which its loss cannot leave out of "background"
        data = tmp_path / "partial.yaml"
        data.write_text(f"sources:\n  - path: {tiny_voc}\n    exhaustive: [WBC]\n")
    cfg = TrainConfig(
        model=model,
        data=str(data),
        epochs=1,
        batch=2,
        imgsz=256,
        out=str(tmp_path / "run"),
        threads=2,
        pretrained=False,
    )
    result = train(cfg, progress=False)
    assert json.loads(json.dumps(result.to_dict()))["best"] == str(result.best)  # a pipeline can log it as is
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "results.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0
    _net, info = load_model(result.best)
    assert info.name == model and len(info.conf) == 3 and all(0 < c < 1 for c in info.conf)
    assert "val" in info.metrics
    # last.pt's counting was never fitted (0.5 everywhere, no intervals): a user who loads it is told so
    from bloodcell.runtime.loader import load_predictor

    [note] = load_predictor(run / "last.pt", device="cpu").notes
    assert "a training checkpoint whose counting was not fitted" in note and "bloodcell calibrate" in note
    assert load_predictor(result.best, device="cpu").notes == []
    if model == "cellnet":  # an export of it would count the same way: said before it is made
        pytest.importorskip("onnxruntime")
        from bloodcell.export.exporter import export_model

        export_model(run / "last.pt", "onnx", tmp_path / "last.onnx")
        said = f"warning: {run / 'last.pt'}: a training checkpoint whose counting was not fitted"
        assert said in capsys.readouterr().err
        [note] = load_predictor(tmp_path / "last.onnx").notes  # and the export says it at every load
        assert "last.onnx was exported from a training checkpoint whose counting was not fitted" in note
        # best.pt's export carries the images its counting was fitted on (val's in-sample note reads them)
        written = export_model(result.best, "onnx", tmp_path / "best.onnx")
        assert json.loads(json.dumps(written.to_dict()))["path"] == str(tmp_path / "best.onnx")
        exported = written.path
        val_ids = sorted((tiny_voc / "ImageSets" / "Main" / "val.txt").read_text().split())
        assert load_predictor(exported).metadata.raw["counting_fit"] == {"images": val_ids}
        assert load_predictor(exported).notes == []
    if model == "fasterrcnn":  # fine-tuning its file: CellNet's missing-label settings would be ignored
        said = "training images box some class incompletely (a dataset YAML's `exhaustive:`, or boxes of unknown"
        assert said in capsys.readouterr().err
        again = dataclasses.replace(cfg, model=str(result.best), pretrained=True, missing_labels="pseudo")
        with pytest.raises(ConfigError, match="is a fasterrcnn model, which trains with its own"):
            train(again, progress=False)
        # refused before the data's notes (here: the loss flags had nothing to do on fully boxed data)
        exhaustive = tmp_path / "exhaustive.yaml"
        exhaustive.write_text(f"sources:\n  - path: {tiny_voc}\n    exhaustive: [RBC, WBC, Platelets]\n")
        with pytest.raises(ConfigError, match="is a fasterrcnn model, which trains with its own"):
            train(dataclasses.replace(again, data=str(exhaustive)), progress=False)
        assert "nothing to do" not in capsys.readouterr().err
        given_default = dataclasses.replace(again, missing_labels=TrainConfig().missing_labels)
        with pytest.raises(ConfigError, match="is a fasterrcnn model, which trains with its own"):
            train(given_default, progress=False, explicit={"model", "missing_labels"})  # given, though the default


def test_refuses_nonsense_options(tiny_voc, tmp_path):
    with pytest.raises(ConfigError):
        TrainConfig(imgsz=100)
    with pytest.raises(ConfigError, match="resume"):
        train(TrainConfig(data=str(tiny_voc), out="/nonexistent/run", resume=True), progress=False)
    from bloodcell.errors import DatasetError

    with pytest.raises(DatasetError, match="gives 4 usable images, fewer than --batch 8; train with --batch 4 or"):
        train(TrainConfig(data=str(tiny_voc), out=str(tmp_path / "run"), epochs=1), progress=False)
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    for sub in ("Annotations", "JPEGImages"):
        (unsplit / sub).symlink_to(tiny_voc / sub)
    with pytest.raises(DatasetError, match=r"no split files: write the image ids .* one per line, into .*train\.txt"):
        train(TrainConfig(data=str(unsplit), out=str(tmp_path / "run"), epochs=1), progress=False)
    (unsplit / "ImageSets" / "Main").mkdir(parents=True)  # ids written with their suffix: nothing is usable
    for split in ("train", "val"):
        ids = (tiny_voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        (unsplit / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}.jpg\n" for i in ids))
    with pytest.raises(DatasetError, match=r"gives 0 usable images, .*; the first left out: .*split files list image"):
        train(TrainConfig(data=str(unsplit), out=str(tmp_path / "run"), epochs=1), progress=False)


def test_settings_a_run_would_not_use_are_refused_from_python_too(tiny_voc, tmp_path):
    """What the CLI refuses (a fine-tune's backbone weights), train() refuses: never silently dropped."""
    tuned = TrainConfig(data=str(tiny_voc), model="cellnet_bccd.pt", weights=str(tmp_path / "w.pth"), out=str(tmp_path))
    with pytest.raises(ConfigError, match=r"--model cellnet_bccd\.pt is fine-tuned from its own"):
        train(tuned, progress=False)
    with pytest.raises(ConfigError, match="Faster R-CNN trains with its own"):
        train(TrainConfig(data=str(tiny_voc), model="fasterrcnn", missing_labels="pseudo"), progress=False)


def test_an_input_size_export_would_refuse_is_refused_before_training(tiny_voc, tmp_path):
    """The limits export checks, said before the epochs: BCCD's red cells (about 100 px) need a shorter side
    of 3 of them, at the run's scale; no side may pass 2048."""
    small = TrainConfig(data=str(tiny_voc), input_size=(128, 96), scale=0.5, out=str(tmp_path / "a"), batch=2)
    with pytest.raises(
        ConfigError,
        match=r"--input-size 128x96: the shorter side must hold 3 red cells .* at --scale 0\.5; train at a --scale "
        r"of 0\.3 or less",
    ):
        train(small, progress=False)
    with pytest.raises(ConfigError, match="--input-size 4096x480: sides up to 2048"):
        train(dataclasses.replace(small, input_size=(4096, 480), scale=1.0), progress=False)
    # a fine-tuned model's own input, not given: named as such
    from bloodcell.models.checkpoint import model_payload, save_checkpoint
    from bloodcell.weights import shipped_by_name

    net, info = load_model(shipped_by_name("cellnet_bccd.pt"))
    info.input_size = (224, 160)
    own = tmp_path / "own.pt"
    save_checkpoint(own, model_payload(net, info))
    tuned = TrainConfig(data=str(tiny_voc), model=str(own), out=str(tmp_path / "c"), batch=2)
    with pytest.raises(
        ConfigError, match=r"the input 224x160 \(--input-size sets another\): .*; give a larger --input-"
    ):
        train(tuned, progress=False)
    assert [p.name for p in tmp_path.rglob("*.pt")] == ["own.pt"]  # refused before the first epoch


def _train_cmd(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "bloodcell.cli",
        "train",
        "--data",
        str(data),
        "--epochs",
        "3",
        "--batch",
        "2",
        "--imgsz",
        "128",
        "--val-every",
        "1",
        "--threads",
        "1",
        "--seed",
        "7",
        "--no-pretrained",
        "--out",
        str(out),
        *extra,
    ]


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_voc, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_voc, full), check=True, env=env, capture_output=True, timeout=300)

    proc = subprocess.Popen(
        _train_cmd(tiny_voc, killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:  # kill as epoch 2 starts, right after epoch 1 was saved (its line follows the save)
        if line.startswith("epoch 1/3"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    rows = list(csv.DictReader((killed / "metrics.csv").open()))
    assert len(rows) < 3  # really interrupted

    subprocess.run([*_train_cmd(tiny_voc, killed), "--resume"], check=True, env=env, capture_output=True, timeout=300)
    want = list(csv.DictReader((full / "metrics.csv").open()))
    got = list(csv.DictReader((killed / "metrics.csv").open()))
    assert [r["val_map50"] for r in got] == [r["val_map50"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    a = torch.load(full / "best.pt", weights_only=True)["model"]
    b = torch.load(killed / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_run_says_what_it_keeps_and_how_to_go_on(tiny_voc, tmp_path):
    """SIGTERM (a scheduler's stop) ends a single-process run as Ctrl-C does: exit 130, and which epoch
    last.pt holds, with the command that resumes it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        _train_cmd(tiny_voc, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/3"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"stopped: {out / 'last.pt'} holds epoch 1 of 3; `bloodcell train --resume --out {out}` goes on" in err
    assert "interrupted" not in err and "Traceback" not in err  # said once, as what is kept
    early = tmp_path / "early"  # stopped before its first epoch ended: only its config was written
    early.mkdir()
    shutil.copy(out / "config.yaml", early / "config.yaml")
    done = subprocess.run([*_train_cmd(tiny_voc, early), "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"--resume: {early} holds no finished epoch (no last.pt)" in done.stderr


def test_training_on_fewer_images_than_listed_exits_1_naming_them(tiny_voc, tmp_path, capsys):
    root = tmp_path / "voc"
    root.mkdir()
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).symlink_to(tiny_voc / sub)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        listed = (tiny_voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        extra = ["BloodImage_09999"] if split == "train" else []
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join([*listed, *extra]) + "\n")
    args = ["train", "--data", str(root), "--epochs", "1", "--batch", "2", "--imgsz", "128", "--no-pretrained"]
    assert main([*args, "--out", str(tmp_path / "run"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    said = "split train: 1 listed images left out (1 missing-annotation: BloodImage_09999.xml)"
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if said in line)
    assert lines[first].startswith("warning: ") and "training goes on with the other" in lines[first]  # at the start
    assert lines[-2].startswith("error: ") and said in lines[-2]  # and in the end, with the exit code
    assert lines[-1].startswith(f"the model is written ({tmp_path / 'run' / 'best.pt'})")
    assert (tmp_path / "run" / "best.pt").is_file()  # the model is made, on the images there are


def test_training_says_when_val_holds_training_images_or_a_label_option_has_nothing_to_do(tiny_voc, tmp_path):
    """What `data check` finds in the splits, said at the start of a run too (not refused: it may be meant)."""
    from bloodcell.data.sources import load_dataset
    from bloodcell.engine.train import _split_notes

    train, val = (load_dataset(tiny_voc, s, decode_images=False).records for s in ("train", "val"))
    config = TrainConfig(data=str(tiny_voc))
    assert _split_notes(train, val, config, set()) == []
    leaked = _split_notes(train, [*val, train[0]], config, set())
    assert leaked == [
        f"1 image is in both train and val ({train[0].image_id}): the best epoch and the counting fit are "
        "chosen on images the model learns from"
    ]
    [note] = _split_notes(train, val, config, {"missing_labels"})  # a plain folder: every class exhaustive
    assert note.startswith("--missing-labels / --missing-tau have nothing to do")
    partial = [dataclasses.replace(r, exhaustive=(False, True, False)) for r in train]  # BCCD's XML in a dataset YAML
    assert _split_notes(partial, val, config, {"missing_labels"}) == []
    [same] = _split_notes(train, train, dataclasses.replace(config, val_split="train"), set())
    assert same.startswith("--val-split train is the training split: the best epoch and the counting fit are")


def test_a_stop_that_lands_inside_an_import_is_a_stop(tiny_voc, tmp_path, monkeypatch, capsys):
    """SIGTERM during a C extension's import (matplotlib's Agg, on a run's first plot) reaches the code as
    "ImportError: initialization failed" caused by the KeyboardInterrupt: still a stop, said as one."""
    import bloodcell.engine.train as train_module

    def stopped_inside_import(*_args, **_kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(train_module, "plot_training", stopped_inside_import)
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_voc), "--epochs", "2", "--batch", "2", "--imgsz", "128", "--no-pretrained"]
    assert main([*args, "--out", str(out), "--threads", "1"]) == 130
    err = capsys.readouterr().err
    assert f"stopped: {out / 'last.pt'} holds epoch 1 of 2" in err
    assert "interrupted" not in err and "ImportError" not in err


# --- --resume with flags: the ones that say how the run goes on are honoured, the rest refused ------------


def _tiny_config(data, out, **kw) -> TrainConfig:
    # A short warmup: the second epoch's learning rates depend on the run's length.
    settings = dict(epochs=1, batch=2, imgsz=128, val_every=1, threads=1, seed=7, pretrained=False, warmup_epochs=0.5)
    return TrainConfig(data=data and str(data), out=str(out), **{**settings, **kw})


@pytest.fixture(scope="module")
def one_epoch_run(tiny_voc, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    train(_tiny_config(tiny_voc, out), progress=False)
    return out


def test_resume_with_more_epochs_goes_on_like_an_uninterrupted_run(one_epoch_run, tiny_voc, tmp_path, capsys):
    full = tmp_path / "full"
    train(_tiny_config(tiny_voc, full, epochs=2), progress=False)
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    argv = ["train", "--resume", "--out", str(run), "--epochs", "2", "--device", "cpu", "--val-every", "5"]
    assert main(argv) == 0
    want = list(csv.DictReader((full / "metrics.csv").open()))
    got = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(got) == 2
    for key in ("loss", "val_map50"):  # the rest of the LR schedule runs over the new length
        assert [r[key] for r in got] == [r[key] for r in want], key
    assert got[1]["lr"] == want[1]["lr"]  # (epoch 1's row has the LR at the end of the 1-epoch schedule)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    assert (settings["epochs"], settings["device"], settings["val_every"]) == (2, "cpu", 5)
    saved = read_training_checkpoint(run / "last.pt")  # rewritten by the resumed run, through the same helpers
    assert (saved["format_version"], saved["epoch"], saved["train_config"]["epochs"]) == (FORMAT_VERSION, 1, 2)
    assert "the labels changed" not in capsys.readouterr().err  # the run's own output: the same labels
    assert main(["train", "--resume", "--out", str(run), "--epochs", "1"]) == 2
    assert re.fullmatch(
        r"error: --resume --epochs 1: the run in \S+ already trained 2 epochs; give more to train on\n",
        capsys.readouterr().err,
    )


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lr", "0.01"], "--lr 0.01 differs from the run's 0.002"),
        (["--imgsz", "256"], "--imgsz 256 differs from the run's 128"),
        (["--model", "cellnet-mnv2"], "--model cellnet-mnv2 differs from the run's cellnet"),
        (["--augment", "none"], "--augment none differs"),
        (["--seed", "0"], "--seed 0 differs from the run's 7"),
        (["--batch", "4", "--threads", "2"], "--batch 4 differs"),
        (["--freeze-bn"], "--freeze-bn: the run was started without it, which would change"),
        (["--max-images", "4"], "--max-images 4: the run was started without it, which would change"),
    ],
)
def test_resume_refuses_flags_that_change_the_model_or_data(one_epoch_run, capsys, flags, words):
    before = (one_epoch_run / "last.pt").read_bytes()
    assert main(["train", "--resume", "--out", str(one_epoch_run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(f"^error: --resume: {words}", err), err
    assert (one_epoch_run / "last.pt").read_bytes() == before


def test_last_pt_is_versioned_and_resume_refuses_an_unversioned_one(one_epoch_run, tmp_path, capsys):
    saved = read_training_checkpoint(one_epoch_run / "last.pt")
    header = (saved["format"], saved["format_version"], saved["kind"], saved["epoch"])
    assert header == ("bloodcell-model", FORMAT_VERSION, "training", 0)
    _net, info = load_model(one_epoch_run / "last.pt")  # still a model file: val, predict and --model read it
    assert info.extra["train_config"]["epochs"] == 1
    run = shutil.copytree(one_epoch_run, tmp_path / "old")
    del saved["format_version"]  # as an older bloodcell wrote it
    torch.save(saved, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: \S+last\.pt: training checkpoint has no format version \(an older \w+\);.*\n", err)
    assert (run / "last.pt").read_bytes() == before


def test_resume_in_python_compares_with_the_defaults(one_epoch_run):
    """Without the set of given flags, the settings that differ from TrainConfig's defaults count as given;
    those equal to the run's are fine."""
    with pytest.raises(ConfigError, match=r"--lr 0\.01 differs from the run.s 0\.002"):
        train(TrainConfig(out=str(one_epoch_run), resume=True, lr=0.01), progress=False)
    with pytest.raises(ConfigError, match="--max-images 2: the run was started without it"):
        train(_tiny_config(None, one_epoch_run, resume=True, max_images=2), progress=False)


def test_resume_through_the_api_leaves_a_fine_tuned_models_scale_to_the_run(tmp_path):
    """explicit=None (the Python API): settings left None (a .pt's scale and sizes) are not 'given'."""
    from bloodcell.engine.train import resume_config

    run = TrainConfig(model="runs/a/best.pt", scale=0.75, out=str(tmp_path))
    saved = {"train_config": run.to_dict(), "epoch": 0}
    resumed = resume_config(TrainConfig(model="runs/a/best.pt", out=str(tmp_path), resume=True), saved, tmp_path)
    assert (resumed.scale, resumed.imgsz, resumed.input_size) == (0.75, 352, (480, 384))


def test_a_run_names_its_files_absolutely_and_resume_compares_files(one_epoch_run, tiny_voc, tmp_path, monkeypatch):
    """A run started with --data my.yaml resumes from any folder, and another spelling of the same file
    is the same data (it was refused as a change)."""
    from bloodcell.engine.train import absolute_paths, resume_config

    monkeypatch.chdir(tiny_voc.parent)
    config = absolute_paths(TrainConfig(data=tiny_voc.name, model="cellnet", weights="w.pth"))
    assert (config.data, config.model, config.weights) == (str(tiny_voc), "cellnet", str(tiny_voc.parent / "w.pth"))
    saved = read_training_checkpoint(one_epoch_run / "last.pt")
    monkeypatch.chdir(tmp_path)
    other_spelling = os.path.relpath(tiny_voc, tmp_path) + "/."
    resumed = resume_config(TrainConfig(data=other_spelling, resume=True), saved, one_epoch_run, explicit=["data"])
    assert resumed.data == saved["train_config"]["data"]
    with pytest.raises(ConfigError, match=r"--data .* differs from the run's"):
        resume_config(TrainConfig(data=str(tmp_path), resume=True), saved, one_epoch_run, explicit=["data"])


def test_a_run_without_data_names_the_dataset_the_environment_gave_it(one_epoch_run, tiny_voc, tmp_path, monkeypatch):
    """No --data: $BLOODCELL_DATA's folder is the run's data, recorded; a resume with the variable changed goes on
    with the run's own images (it took the new variable's silently: another dataset mid-run)."""
    from bloodcell.engine.train import absolute_paths, resume_config

    monkeypatch.setenv("BLOODCELL_DATA", str(tiny_voc))
    assert absolute_paths(TrainConfig(model="cellnet")).data == str(tiny_voc)
    monkeypatch.setenv("BLOODCELL_DATA", str(tmp_path))
    saved = read_training_checkpoint(one_epoch_run / "last.pt")
    assert resume_config(TrainConfig(resume=True), saved, one_epoch_run).data == saved["train_config"]["data"]


def test_resume_refuses_a_finished_run_and_finds_the_latest_numbered_run(one_epoch_run, tmp_path, capsys):
    before = (one_epoch_run / "best.pt").read_bytes()
    assert main(["train", "--resume", "--out", str(one_epoch_run)]) == 2  # nothing left: best.pt stays as it is
    assert "finished its 1 epoch; give --epochs N (more) to train on" in capsys.readouterr().err
    assert (one_epoch_run / "best.pt").read_bytes() == before

    from bloodcell.engine.train import _run_to_resume

    runs = tmp_path / "runs"
    first, second = (shutil.copytree(one_epoch_run, runs / name) for name in ("train", "train2"))
    os.utime(first / "last.pt", (1e9, 1e9))  # train2 is the run written last
    config = TrainConfig(out=str(runs / "train"), resume=True)
    assert _run_to_resume(config, explicit=["resume"]) == second
    assert "resuming " in capsys.readouterr().err
    assert _run_to_resume(config, explicit=["resume", "out"]) == first  # --out given: that run


def test_a_new_run_beside_a_used_folder_gets_a_name_no_other_run_has(tmp_path):
    """runs/train -> runs/train2, as Ultralytics names them; runs/t1 -> runs/t1-2, not runs/t12 (run t12's)."""
    from bloodcell.engine.train import CLAIM, _run_dir

    for used in ("train", "t1", "t1-2"):
        (tmp_path / used).mkdir()
        (tmp_path / used / "last.pt").write_bytes(b"x")
    assert _run_dir(TrainConfig(out=str(tmp_path / "train"))) == tmp_path / "train2"
    assert _run_dir(TrainConfig(out=str(tmp_path / "t1"))) == tmp_path / "t1-3"
    assert _run_dir(TrainConfig(out=str(tmp_path / "new"))) == tmp_path / "new"
    # two runs started together into one --out: the first claims it at once (config.yaml), the second moves on
    assert _run_dir(TrainConfig(out=str(tmp_path / "new"))) == tmp_path / "new2"
    (tmp_path / "empty").mkdir()  # an empty folder is a new run's to take
    assert _run_dir(TrainConfig(out=str(tmp_path / "empty"))) == tmp_path / "empty"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "new" / "config.yaml").write_text(CLAIM.format(pid=int(ended.stdout)))  # its run failed, say
    assert _run_dir(TrainConfig(out=str(tmp_path / "new"))) == tmp_path / "new"  # (on its data): free again


def test_freeze_bn_freezes_the_layers_that_have_statistics_only() -> None:
    """--freeze-bn keeps a pretrained backbone's (or a trained model's) statistics; a new head's layers
    have none (mean 0, variance 1) and, frozen, would not normalise: they learn from their batches."""
    from bloodcell.engine.train import bn_with_statistics
    from bloodcell.models.cellnet import CellNet, CellNetConfig
    from bloodcell.weights import shipped_by_name

    def bn_names(model) -> set[str]:
        return {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    fresh = CellNet(CellNetConfig(), pretrained=False)
    assert bn_names(fresh) and bn_with_statistics(fresh) == set()
    pretrained = CellNet(CellNetConfig(), pretrained=True)  # ImageNet backbone from its wheel, new neck and head
    frozen = bn_with_statistics(pretrained)
    assert frozen and all(n.startswith("backbone.") for n in frozen) and bn_names(pretrained) - frozen
    trained, _ = load_model(shipped_by_name("cellnet_bccd.pt"))
    assert bn_with_statistics(trained) == bn_names(trained)


def test_freeze_bn_says_what_it_freezes(tiny_voc, tmp_path, capsys):
    args = ["train", "--data", str(tiny_voc), "--epochs", "1", "--batch", "2", "--imgsz", "128", "--threads", "1"]
    assert main([*args, "--no-pretrained", "--freeze-bn", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"--freeze-bn: 0 of (\d+) batch-norm layers keep their statistics; the other \1 are new", err)


def test_a_resumed_run_says_when_its_labels_changed_since_it_started(tiny_voc, tmp_path):
    """Flags that change the data are refused on --resume; an edited split or annotation cannot be: it is said."""
    from bloodcell.data.voc import load_voc
    from bloodcell.engine.train import labels_changed_note, labels_digest

    root = shutil.copytree(tiny_voc, tmp_path / "voc")
    before = {"train": labels_digest(load_voc(root, "train").records)}
    assert labels_changed_note(before, before) is None and labels_changed_note(None, before) is None
    _, *rest = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(rest) + "\n")  # one image taken out
    xml = root / "Annotations" / f"{rest[0]}.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1) + " ")
    now = {"train": labels_digest(load_voc(root, "train").records)}
    note = labels_changed_note(before, now)
    assert note.startswith("the labels changed since last.pt was written (train: 1 removed, 1 edited images)")
