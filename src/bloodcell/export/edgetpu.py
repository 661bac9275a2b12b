"""What the Coral Edge TPU compiler maps onto the TPU, to check an int8 graph before compiling.

The Edge TPU compiler (edgetpu_compiler) runs only on x86-64 Debian/Ubuntu with Google's apt
repository, so it is not a dependency; this list follows Coral's "supported operations" table
(coral.ai/docs/edgetpu/models-intro), in TFLite builtin-operator names.
"""

from __future__ import annotations

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

COMPILE_COMMAND = "edgetpu_compiler -s -o OUT_DIR MODEL_int8.tflite   # writes MODEL_int8_edgetpu.tflite"


def unsupported_ops(ops: list[str]) -> list[str]:
    return sorted(set(ops) - EDGETPU_OPS)
