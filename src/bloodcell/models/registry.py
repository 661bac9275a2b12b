"""One registry of detector architectures: name -> config type and builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from bloodcell.errors import ConfigError
from bloodcell.models.cellnet import CellNet, CellNetConfig
from bloodcell.models.fasterrcnn import FasterRCNNConfig, build_fasterrcnn


@dataclass(frozen=True)
class ModelEntry:
    config_type: type
    build: Callable[..., nn.Module]
    #: "dense": raw (cls, box) maps decoded by bloodcell.runtime.postprocess (exportable);
    #: "torchvision": returns decoded boxes itself.
    kind: str
    defaults: dict[str, Any]


MODELS: dict[str, ModelEntry] = {
    "cellnet": ModelEntry(CellNetConfig, CellNet, "dense", {"backbone": "efficientnet_lite0"}),
    "cellnet-mnv2": ModelEntry(CellNetConfig, CellNet, "dense", {"backbone": "mobilenet_v2"}),
    "fasterrcnn": ModelEntry(FasterRCNNConfig, build_fasterrcnn, "torchvision", {"backbone": "mobilenet_v2"}),
}


def model_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    entry = MODELS[name]
    known = {f.name for f in fields(entry.config_type)}
    values = {**entry.defaults, **(overrides or {})}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"model {name!r} has no settings {sorted(unknown)}; known: {sorted(known)}")
    # JSON/YAML round trips turn tuples into lists; the frozen configs want tuples.
    values = {k: _tuplify(v) for k, v in values.items()}
    return entry.config_type(**values)


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def build_model(name: str, config: Any = None, pretrained: bool = True, weights: str | None = None) -> nn.Module:
    config = config if config is not None else model_config(name)
    return MODELS[name].build(config, pretrained=pretrained, weights=weights)


def config_dict(config: Any) -> dict[str, Any]:
    return asdict(config)
