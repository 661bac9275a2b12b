"""bloodcell: detect and count red cells, white cells and platelets in blood-smear images."""

from bloodcell.errors import BloodcellError, DatasetError, ImageError, ModelError
from bloodcell.types import CLASS_NAMES, Detections

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES",
    "BloodcellError",
    "DatasetError",
    "Detections",
    "ImageError",
    "ModelError",
    "__version__",
]
