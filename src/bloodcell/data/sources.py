"""Where the dataset comes from: --data, else $BLOODCELL_DATA, else the user cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bloodcell"


def default_data_root() -> Path:
    return cache_dir() / "BCCD"


def resolve_data_root(path: str | os.PathLike | None = None) -> Path:
    """The dataset folder to use: an explicit path wins, then BLOODCELL_DATA, then the cache."""
    if path:
        return Path(path)
    env = os.environ.get("BLOODCELL_DATA")
    if env:
        return Path(env)
    return default_data_root()
