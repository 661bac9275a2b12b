"""Files shipped inside the package: three BCCD sample images (MIT, see samples/ATTRIBUTION.md)."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_images() -> list[Path]:
    """Paths of the packaged sample blood-smear images (640x480 JPEG), sorted by name."""
    return sorted(SAMPLES_DIR.glob("*.jpg"))
