"""Full-integer ONNX through onnxruntime's static quantization: uint8 activations, int8 per-channel weights.

Why a second int8 format: on CPUs without AVX-512 VNNI, XNNPACK's int8 kernels (TFLite) run no faster than
its fp32 ones, while onnxruntime's u8s8 kernels do (BENCHMARKS.md, fifteenth session: an AVX2-only CPU).

The graph takes uint8 pixels' levels, not floats: quantize_static puts a QuantizeLinear on the normalized
input, which is removed here, so the runtime maps each pixel to its level with one 256-entry table per
channel (normalization and quantization in one lookup), as for int8 TFLite. ``onnx_input`` in the
metadata carries that input's scale and zero point.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto

#: Ops between the graph input and its QuantizeLinear that only move values (type-agnostic).
_DATA_MOVEMENT = ("Transpose", "Reshape", "Identity")


def quantize_onnx(
    model: ModelProto, calibration: Sequence[np.ndarray], input_name: str = "images"
) -> tuple[ModelProto, tuple[float, int]]:
    """(int8 ONNX ModelProto with a uint8 input, (input scale, input zero point)) from the float ``model``.

    ``model``'s input must be normalized pixels (export.graph's ``normalized_input``); ``calibration``
    holds (1, H, W, 3) float32 inputs that set the activation ranges (onnxruntime's MinMax calibration).
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="bloodcell-onnx-int8-") as tmp:
        source, quantized = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, source)
        quantize_qdq(source, quantized, [{input_name: x} for x in calibration])
        return integer_input(onnx.load(quantized), input_name)


def quantize_qdq(source: Path, out: Path, feeds: Sequence[dict[str, np.ndarray]], prepare: bool = True) -> None:
    """onnxruntime's static quantization of the ONNX file ``source`` into ``out``: QDQ, uint8 activations, int8
    per-channel weights, MinMax ranges from ``feeds`` (one input dict per pass). The recipe of bloodcell's int8
    ONNX and of benchmarks/peers.py's peer int8 files. ``prepare``: shape inference and graph clean-up first,
    as onnxruntime recommends (a graph it cannot prepare raises; False quantizes the graph as it is)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="bloodcell-qdq-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        if prepare:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared if prepare else source),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def integer_input(model: ModelProto, input_name: str = "images") -> tuple[ModelProto, tuple[float, int]]:
    """``model`` (QDQ) with its input's QuantizeLinear removed and the input typed uint8; also returns that
    QuantizeLinear's (scale, zero point). ValueError if the input does not reach a QuantizeLinear."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved = [input_name]  # tensors that carry the input's values before the QuantizeLinear
    while True:
        users = consumers.get(moved[-1], [])
        if len(users) != 1:
            raise ValueError(
                f"input {input_name!r} feeds {len(users)} nodes after {moved[-1]!r}, not one QuantizeLinear"
            )
        node = users[0]
        if node.op_type == "QuantizeLinear":
            break
        if node.op_type not in _DATA_MOVEMENT:
            raise ValueError(f"input {input_name!r} reaches {node.op_type} before any QuantizeLinear")
        moved.append(node.output[0])
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scale, zero = (constants.get(name) for name in node.input[1:3])
    if scale is None or zero is None or scale.size != 1 or zero.dtype != np.uint8:
        raise ValueError("the input's QuantizeLinear has no per-tensor uint8 scale and zero point")
    for user in consumers.get(node.output[0], []):
        user.input[:] = [moved[-1] if name == node.output[0] else name for name in user.input]
    graph.node.remove(node)
    graph.input[[i.name for i in graph.input].index(input_name)].type.tensor_type.elem_type = TensorProto.UINT8
    for info in [v for v in graph.value_info if v.name in moved[1:]]:  # typed float before: now uint8
        graph.value_info.remove(info)
    return model, (float(scale.reshape(())), int(zero.reshape(())))
