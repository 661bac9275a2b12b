"""The network input sizes a model may have: checked when training sets one and when an export sets another."""

from __future__ import annotations

import math

from bloodcell.errors import ConfigError

#: The largest network input side: larger images are tiled at prediction, so a larger input only costs
#: memory (a 4800x3840 ONNX export took more than 24 GB).
MAX_INPUT_SIDE = 2048
#: The shorter side must hold this many red cells of the model's trained size: below it the cell-size
#: estimate and the counts fail (a 160x128 input miscounted white cells; 256x224 counted as 480x384).
MIN_CELLS_ACROSS = 3


def check_input_size(size: tuple[int, int], cell_size: float | None, what: str) -> None:
    """ConfigError for a network input too large to export or too small for red cells of ``cell_size`` px
    (None: not known, not checked); ``what`` names the size in the message (``--imgsz 64x64``)."""
    width, height = size
    if max(width, height) > MAX_INPUT_SIDE:
        raise ConfigError(
            f"{what}: sides up to {MAX_INPUT_SIDE} (larger images are cut into tiles of the model's input "
            "when predicting; a larger input only costs memory)"
        )
    if cell_size and min(width, height) < MIN_CELLS_ACROSS * cell_size:
        need = 32 * math.ceil(MIN_CELLS_ACROSS * cell_size / 32)
        raise ConfigError(
            f"{what}: the shorter side must hold {MIN_CELLS_ACROSS} red cells of the model's trained size "
            f"({cell_size:g} px), so {need} or more"
        )
