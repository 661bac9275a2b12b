"""bloodcell: detect and count red cells, white cells and platelets in blood-smear images.

The Python API behind the ``bloodcell`` command (heavy modules load on first use)::

    import bloodcell
    report = bloodcell.check_dataset("path/to/BCCD")            # bloodcell data check
    result = bloodcell.train(bloodcell.TrainConfig(epochs=40))  # bloodcell train
    metrics = bloodcell.validate(None, "path/to/BCCD")          # bloodcell val (shipped model)
    predictor = bloodcell.load_predictor()                      # bloodcell predict
    for r in bloodcell.predict_paths(predictor, paths): print(r.counts)
"""

from importlib import import_module
from typing import Any

from bloodcell.errors import BloodcellError, ConfigError, DatasetError, ImageError, ModelError
from bloodcell.types import CLASS_NAMES, Detections

__version__ = "0.1.0"

_LAZY = {
    "load_voc": "bloodcell.data.voc",
    "check_dataset": "bloodcell.data.check",
    "export_dataset": "bloodcell.data.export",
    "compute_stats": "bloodcell.data.stats",
    "TrainConfig": "bloodcell.config",
    "train": "bloodcell.engine.train",
    "validate": "bloodcell.engine.validate",
    "evaluate": "bloodcell.engine.evaluate",
    "load_predictor": "bloodcell.runtime.loader",
    "predict_paths": "bloodcell.runtime.predict",
}

__all__ = [
    "CLASS_NAMES",
    "BloodcellError",
    "ConfigError",
    "DatasetError",
    "Detections",
    "ImageError",
    "ModelError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bloodcell' has no attribute {name!r}")
