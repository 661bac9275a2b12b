"""bloodcell: detect and count red cells, white cells and platelets in blood-smear images.

The Python API behind the ``bloodcell`` command (heavy modules load on first use)::

    import bloodcell
    predictor = bloodcell.load_predictor()                      # the shipped model (or a file)
    for r in bloodcell.predict(predictor, ["a.jpg", array, pil_image]):
        print(r.counts, r.intervals) if r.ok else print(r.error)
    bloodcell.annotate(r).save("a_counted.jpg")                 # bloodcell predict --out
    report = bloodcell.check_dataset("path/to/BCCD")            # bloodcell data check
    val = bloodcell.load_dataset("datasets/bccd-dense.yaml", split="val")
    metrics = bloodcell.evaluate(predictor, val, cell_size="auto")  # bloodcell val, on loaded records
    result = bloodcell.train(bloodcell.TrainConfig(epochs=40))  # bloodcell train
    bloodcell.export_model(result.best, "tflite", "cellnet_int8.tflite", int8=True)  # bloodcell export
    bloodcell.calibrate("cellnet_int8.tflite", "datasets/bccd-dense.yaml")  # bloodcell calibrate
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from bloodcell.errors import EXTRAS, BloodcellError, ConfigError, DatasetError, ImageError, ModelError
from bloodcell.types import CLASS_NAMES, Detections

__version__ = "0.1.0"

_LAZY = {
    "load_voc": "bloodcell.data.voc",
    "load_dataset": "bloodcell.data.sources",
    "check_dataset": "bloodcell.data.check",
    "export_dataset": "bloodcell.data.export",
    "compute_stats": "bloodcell.data.stats",
    "TrainConfig": "bloodcell.config",
    "train": "bloodcell.engine.train",
    "validate": "bloodcell.engine.validate",
    "evaluate": "bloodcell.engine.evaluate",
    "export_model": "bloodcell.export.exporter",
    "calibrate": "bloodcell.export.calibrate",
    "load_predictor": "bloodcell.runtime.loader",
    "Predictor": "bloodcell.runtime.predict",
    "ImageResult": "bloodcell.runtime.predict",
    "predict": "bloodcell.runtime.predict",
    "predict_paths": "bloodcell.runtime.predict",
    "annotate": "bloodcell.app.annotate",
}

if TYPE_CHECKING:  # what type checkers and editors see; at run time the modules load on first use
    from bloodcell.app.annotate import annotate
    from bloodcell.config import TrainConfig
    from bloodcell.data.check import check_dataset
    from bloodcell.data.export import export_dataset
    from bloodcell.data.sources import load_dataset
    from bloodcell.data.stats import compute_stats
    from bloodcell.data.voc import load_voc
    from bloodcell.engine.evaluate import evaluate
    from bloodcell.engine.train import train
    from bloodcell.engine.validate import validate
    from bloodcell.export.calibrate import calibrate
    from bloodcell.export.exporter import export_model
    from bloodcell.runtime.loader import load_predictor
    from bloodcell.runtime.predict import ImageResult, Predictor, predict, predict_paths

__all__ = [  # the names above and _LAZY's (written out: linters and type checkers read a literal list)
    "CLASS_NAMES",
    "BloodcellError",
    "ConfigError",
    "DatasetError",
    "Detections",
    "ImageError",
    "ImageResult",
    "ModelError",
    "Predictor",
    "TrainConfig",
    "__version__",
    "annotate",
    "calibrate",
    "check_dataset",
    "compute_stats",
    "evaluate",
    "export_dataset",
    "export_model",
    "load_dataset",
    "load_predictor",
    "load_voc",
    "predict",
    "predict_paths",
    "train",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            module = import_module(_LAZY[name])
        except ModuleNotFoundError as e:  # the lite install has no torch: say which extra brings it
            top = (e.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            hint = f"bloodcell.{name} needs {top}: pip install 'bloodcell[{EXTRAS[top]}]'"
            raise ModuleNotFoundError(hint, name=e.name) from e
        return getattr(module, name)
    raise AttributeError(f"module 'bloodcell' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, "errors", "types"})
