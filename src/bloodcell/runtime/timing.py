"""Per-stage wall time of a predictor (letterbox, network, decode), summed until taken."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimes:
    """``with times.stage("network"): ...`` adds to that stage; ``take()`` returns and resets, so one
    image's total covers every pass it needed (scale probes, tiles)."""

    def __init__(self) -> None:
        self._ms: defaultdict[str, float] = defaultdict(float)

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


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
