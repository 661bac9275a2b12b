"""`bloodcell train --devices 0,1` (GPUs) or `--devices cpu:2` (gloo processes): torchrun, started for you.

The same as typing `torchrun --standalone --nproc-per-node N -m bloodcell train ...` with the GPUs
made visible; for several machines, run torchrun yourself (README: multi-node rendezvous).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from bloodcell.errors import ConfigError
from bloodcell.runtime.timing import available_cores


@dataclass(frozen=True)
class Devices:
    processes: int
    gpus: tuple[int, ...] = ()  # empty: CPU processes

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def parse_devices(text: str) -> Devices:
    """``0,1`` (GPU indices) or ``cpu:N`` (N CPU processes)."""
    if text.startswith("cpu:"):
        n = text[4:]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--devices {text!r}: cpu:N needs N >= 1 processes")
        return Devices(int(n))
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"--devices {text!r}: give GPU indices like 0,1 or cpu:N")
    return Devices(len(parts), tuple(int(p) for p in parts))


def torchrun_command(devices: Devices, train_argv: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "bloodcell.engine.torchrun", "--standalone", f"--nproc-per-node={devices.processes}",
        "-m", "bloodcell", "train", *train_argv, "--device", devices.device,
    ]  # fmt: skip


def visible_devices(gpus: tuple[int, ...], current: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for ``gpus``, which index the GPUs this process sees: under a scheduler
    that already set CUDA_VISIBLE_DEVICES (SLURM: "2,3"), ``--devices 0,1`` means those two."""
    seen = [d.strip() for d in current.split(",")] if current else None
    return ",".join(seen[i] if seen else str(i) for i in gpus)


def launch(devices: Devices, train_argv: list[str], device_flag: str | None) -> int:
    """Run training under torchrun; ``train_argv``: the train options without --devices/--device."""
    if device_flag not in (None, "auto", devices.device) and not (devices.gpus and device_flag == "cuda"):
        raise ConfigError(f"--device {device_flag} contradicts --devices (which runs on {devices.device})")
    env = dict(os.environ)
    # torchrun would set 1 thread per process, with a banner; each process gets its share of the cores
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // devices.processes)))
    if devices.gpus:
        import torch

        if not torch.cuda.device_count():
            n = len(devices.gpus)
            raise ConfigError(f"--devices names GPUs and none is visible; for {n} CPU processes: --devices cpu:{n}")
        if torch.cuda.device_count() <= max(devices.gpus):
            raise ConfigError(f"--devices: GPU {max(devices.gpus)} not found ({torch.cuda.device_count()} visible)")
        env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return run_forwarding_sigterm(torchrun_command(devices, train_argv), env)


def run_forwarding_sigterm(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` to its end; a SIGTERM sent to this process alone (a scheduler stopping the PID it
    started) goes on to it, so torchrun stops its workers instead of being orphaned. Ctrl-C reaches the
    whole foreground process group, torchrun included: this process only waits for it to finish."""
    proc = subprocess.Popen(command, env=env)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum)) if main_thread else None
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # torchrun got it too and is stopping its workers; its exit code is ours
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
