"""DistributedDataParallel on CPU (gloo): two processes learn what one process learns from the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def eight_images(bccd_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train + 2 val BCCD images at half size (320x240, boxes scaled): a 320 px crop holds a whole
    image, so no random crop position tells one process's data from another's, and steps are 4x cheaper."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    root = tmp_path_factory.mktemp("voc8")
    split_ids = {s: (bccd_root / "ImageSets/Main" / f"{s}.txt").read_text().split() for s in ("train", "val")}
    ids = {"train": split_ids["train"][:8], "val": split_ids["val"][:2]}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, names in ids.items():
        (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            with Image.open(bccd_root / "JPEGImages" / f"{name}.jpg") as im:
                im.resize((im.width // 2, im.height // 2)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            tree = ET.parse(bccd_root / "Annotations" / f"{name}.xml")
            for tag in ("size/width", "size/height", ".//bndbox/xmin", ".//bndbox/ymin", ".//bndbox/xmax",
                        ".//bndbox/ymax"):  # fmt: skip
                for node in tree.getroot().findall(tag):
                    node.text = str(round(float(node.text) / 2))
            tree.write(root / "Annotations" / f"{name}.xml")
    return root


def _train(data: Path, out: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable,)):
    # Crops as large as the images and no augmentation: every process sees exactly its images.
    # --freeze-bn: torch has no SyncBatchNorm on CPU, and per-process statistics of 2 images
    # would differ from those of 4 (on GPUs, DDP uses SyncBatchNorm instead). It freezes layers that
    # have statistics: the shipped model, fine-tuned, has them in every layer.
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch", "4", "--imgsz", "320",
            "--augment", "none", "--model", "cellnet_bccd.pt", "--freeze-bn", "--seed", "3",
            "--input-size", "320x256"]  # fmt: skip
    done = subprocess.run([*launcher, "-m", "bloodcell", *args, *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one_process_only_rank0_writes_and_resume(eight_images: Path, tmp_path: Path) -> None:
    _train(eight_images, tmp_path / "one", "--device", "cpu")
    two = _train(eight_images, tmp_path / "two", "--devices", "cpu:2")  # bloodcell starts torchrun

    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 made no run folder of its own
    assert two.stdout.count("training ") == 1 and "2 processes (cpu), global batch 4" in two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    a = torch.load(tmp_path / "one/last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "two/last.pt", map_location="cpu", weights_only=False)
    assert a["rows"][0]["loss"] == pytest.approx(b["rows"][0]["loss"], rel=1e-5)  # loss over the global batch
    diffs = torch.cat([(a["model"][k].float() - b["model"][k].float()).abs().flatten() for k in a["model"]])
    # AdamW moves nearly every weight by ~lr per step whatever the gradient's size, so weights fed
    # different data differ by ~5e-4 on average; the same global batch leaves float rounding
    # (and a few sign flips of near-zero gradients).
    assert float(diffs.mean()) < 5e-5 and float((diffs > 1e-4).float().mean()) < 0.05

    # --resume under torchrun: the two-process run goes on for a second epoch.
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")
    done = _train(eight_images, tmp_path / "two", "--device", "cpu", "--resume", "--epochs", "2", launcher=torchrun)
    assert done.stdout.count("resuming") == 1 and "note: the run was trained by" not in done.stdout
    # a one-process run resumed by two processes: allowed, and said
    done = _train(eight_images, tmp_path / "one", "--device", "cpu", "--resume", "--epochs", "2", launcher=torchrun)
    assert "note: the run was trained by 1 process(es) and goes on with 2" in done.stdout
    last = torch.load(tmp_path / "two/last.pt", map_location="cpu", weights_only=False)
    assert [r["epoch"] for r in last["rows"]] == [1, 2] and last["epoch"] == 1


def test_a_workers_error_is_its_one_line_not_torchruns_report(eight_images: Path, tmp_path: Path) -> None:
    """A dataset problem both workers find: one line (the first process says it) and exit code 2, without torchrun's
    logged exit code, traceback and FAILED summary."""
    args = ["train", "--data", str(eight_images), "--out", str(tmp_path / "run"), "--batch", "64", "--devices", "cpu:2"]
    done = subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: {eight_images}: split 'train' gives 8 usable images, fewer than --batch 64; train with --batch 8 "
        "or label more images"
    ]


def test_devices_flag_is_checked() -> None:
    from bloodcell.engine.launch import launch, parse_devices, torchrun_command
    from bloodcell.errors import ConfigError

    assert parse_devices("0,1").gpus == (0, 1) and parse_devices("cpu:2").processes == 2
    for bad in ("cpu:0", "cpu:x", "0,0", "a,b", ""):
        with pytest.raises(ConfigError):
            parse_devices(bad)
    cmd = torchrun_command(parse_devices("cpu:2"), ["--epochs", "3"])
    assert cmd[-6:] == ["bloodcell", "train", "--epochs", "3", "--device", "cpu"]
    for device, devices in (("cuda:1", "0,1"), ("cpu", "0,1"), ("cuda", "cpu:2")):  # refused before torchrun starts
        with pytest.raises(ConfigError, match=f"--device {device} contradicts --devices"):
            launch(parse_devices(devices), [], device)
    if not torch.cuda.is_available():  # GPU indices on a machine without one: the CPU form is named
        with pytest.raises(ConfigError, match=r"none is visible; for 2 CPU processes: --devices cpu:2$"):
            launch(parse_devices("2,3"), [], None)


def test_a_sigterm_to_the_launcher_reaches_torchrun(tmp_path: Path) -> None:
    """A scheduler that stops the PID it started (the launcher) must stop torchrun too, not orphan it."""
    import os
    import signal
    import threading
    import time

    from bloodcell.engine.launch import run_forwarding_sigterm

    ready, got = tmp_path / "ready", tmp_path / "got"
    child = (  # stands in for torchrun: says when it listens, then waits to be stopped
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(sys.argv[2]).write_text('TERM'), sys.exit(143)))\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
    )

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process only, as `kill PID` does

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_when_ready, daemon=True).start()
    code = run_forwarding_sigterm([sys.executable, "-c", child, str(ready), str(got)], dict(os.environ))
    assert code == 143 and got.read_text() == "TERM"
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher's handler is gone with the child


def test_devices_index_the_gpus_a_scheduler_already_made_visible() -> None:
    from bloodcell.engine.launch import visible_devices

    assert visible_devices((0, 1), None) == "0,1"
    assert visible_devices((0, 1), "2,3") == "2,3"  # SLURM gave this job GPUs 2 and 3
    assert visible_devices((1,), "GPU-aa, GPU-bb") == "GPU-bb"


def test_torchruns_stop_line_names_the_run_folder() -> None:
    from bloodcell.engine.torchrun import _option

    assert _option(["-m", "bloodcell", "train", "--out", "runs/a", "--epochs", "3"], "--out") == "runs/a"
    assert _option(["train", "--out=runs/b"], "--out") == "runs/b"
    assert _option(["train", "--epochs", "3"], "--out") is None
