"""What the Coral Edge TPU compiler maps onto the TPU, to check an int8 graph before compiling.

The Edge TPU compiler (edgetpu_compiler) runs only on x86-64 Debian/Ubuntu with Google's apt
repository, so it is not a dependency; this list follows Coral's "supported operations" table
(coral.ai/docs/edgetpu/models-intro), in TFLite builtin-operator names.
"""

from __future__ import annotations

from pathlib import Path

EDGETPU_OPS = frozenset(
    {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
        "FULLY_CONNECTED", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D",
        "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU",
        "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE",
        "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM",
        "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip


def unsupported_ops(ops: list[str]) -> list[str]:
    """The graph's ops that the Edge TPU cannot run (the compiler leaves them, and all after them, on the CPU)."""
    return sorted(set(ops) - EDGETPU_OPS)


def edgetpu_note(path: Path, ops: list[str]) -> str:
    """What an int8 TFLite export means for a Coral Edge TPU: compile it, or which ops would stay on the CPU."""
    compiled = path.with_name(f"{path.stem}_edgetpu{path.suffix}")
    if missing := unsupported_ops(ops):
        return (
            f"Edge TPU: {', '.join(missing)} not among its supported ops: the compiler would leave them, and "
            "every op after them, on the CPU"
        )
    return f"Edge TPU: every op maps onto it; compile with `edgetpu_compiler -s {path}` (writes {compiled.name})"
