"""Per-stage wall time of a predictor (letterbox, network, decode), summed until taken."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimes:
    """``with times.stage("network"): ...`` adds to that stage; ``take()`` returns and resets, so one
    image's total covers every pass it needed (scale probes, tiles). Kept per thread: one predictor shared
    by two threads times each thread's images (one sum mixed them up)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def _ms(self) -> defaultdict[str, float]:
        if not hasattr(self._local, "ms"):
            self._local.ms = defaultdict(float)
        return self._local.ms

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._ms[name] += (time.perf_counter() - t0) * 1000

    def take(self) -> dict[str, float]:
        out = dict(self._ms)
        self._ms.clear()
        return out


def check_threads(threads: object) -> None:
    """ConfigError unless ``threads`` is None (every core) or a whole number >= 1 (numpy's too)."""
    from numbers import Integral

    from bloodcell.errors import ConfigError

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1):
        raise ConfigError(f"--threads {threads!r}: expected a whole number >= 1 (leave it out for every core)")


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
