"""One module per export format; each has ``write(datasets, out) -> list[Path]`` (see ``bloodcell.data.export``)."""

from __future__ import annotations

import numpy as np


def plain_number(value: float) -> int | float:
    """260.0 -> 260; otherwise the shortest decimal that round-trips the float32 label value."""
    value = float(value)
    if value.is_integer():
        return int(value)
    return float(str(np.float32(value)))
