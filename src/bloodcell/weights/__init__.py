"""The shipped default model: its file, checked against the sha256 in the manifest beside it."""

from __future__ import annotations

import json
from pathlib import Path

from bloodcell.errors import ModelError

WEIGHTS_DIR = Path(__file__).resolve().parent
MANIFEST = WEIGHTS_DIR / "manifest.json"


def default_model() -> tuple[Path, str]:
    """The shipped model file and its sha256 (from the manifest beside it)."""
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{MANIFEST}: shipped model manifest unreadable ({e}); pass --model PATH") from None
    return WEIGHTS_DIR / manifest["file"], manifest["sha256"]


def shipped_info_extra() -> dict:
    """What the manifest adds to the shipped file's ``info.extra``: records made after it shipped (the val images
    its counting was fitted on), kept here because changing the file would change its sha256, by which watch
    folders and batch archives know the model that counted them."""
    try:
        extra = json.loads(MANIFEST.read_text()).get("info_extra", {})
    except (OSError, ValueError):
        return {}
    return extra if isinstance(extra, dict) else {}


def shipped_by_name(path: str | Path) -> Path:
    """``path``, or the shipped model when ``path`` is its bare file name (``cellnet_bccd.pt``) and no
    such file is here: the name works from any folder and any install, as Ultralytics' ``yolo11n.pt``."""
    path = Path(path)
    if path.is_file() or path.parent != Path(".") or path.suffix.lower() != ".pt":
        return path
    shipped = default_model()[0]
    return shipped if path.name == shipped.name else path


def model_file(model: str | Path | None) -> Path:
    """The model file a ``--model`` names: the shipped one when none is given, or when it is named by its
    bare file name (``shipped_by_name``), else the path as given."""
    return default_model()[0] if not model else shipped_by_name(model)
