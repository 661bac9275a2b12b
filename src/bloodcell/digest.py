"""sha256 of files, streamed (a model or an image need not sit in memory twice)."""

from __future__ import annotations

import hashlib
import os


def sha256_of(*paths: str | os.PathLike) -> str:
    """Hex sha256 of the files' bytes, one after the other (a model and its sidecar: one digest for both)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
