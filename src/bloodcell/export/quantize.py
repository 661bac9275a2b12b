"""Full-integer quantization through PyTorch 2 export (pt2e) and litert-torch's quantizer.

The same quantizer serves post-training quantization (observers calibrated on training
images) and quantization-aware training (fake-quant modules, fine-tuned), so litert-torch
converts both the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchao.quantization.pt2e.quantizer import Quantizer


def make_quantizer(is_qat: bool = False) -> Quantizer:
    """litert-torch's symmetric per-channel int8 quantizer, made to cover every residual add."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class FullIntegerQuantizer(pt2e_quantizer.PT2EQuantizer):
        # Its add annotator matches adds by source partition and missed timm's residual adds after
        # stage 2; they ran as DEQUANTIZE -> float ADD -> QUANTIZE, so the graph was not full-integer.
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            _annotate_conv_relu6(model, self.global_config)
            model = super().annotate(model)
            act_in, act_out = get_input_act_qspec(self.global_config), get_output_act_qspec(self.global_config)
            for node in model.graph.nodes:
                if node.target is not torch.ops.aten.add.Tensor or "quantization_annotation" in node.meta:
                    continue
                inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                if len(inputs) == 2:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=dict.fromkeys(inputs, act_in), output_qspec=act_out, _annotated=True
                    )
            return model

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
    return FullIntegerQuantizer().set_global(config)


def _annotate_conv_relu6(model: torch.fx.GraphModule, config) -> None:
    """Conv -> ReLU6 as one fused op: only the ReLU6's output is observed, as TFLite runs it (CONV_2D with
    a fused RELU6). litert's annotators fuse conv -> ReLU but take ReLU6 (hardtanh) as an op that shares
    its input's range, so the conv's raw output range (about -180..130 in the stem) was also the range of
    the [0, 6] activations after it: a few int8 levels for them. The shipped model's int8 file lost
    ranking and counts to it (dense-val RBC AP 0.971, the fp32 model's 0.988; fused: 0.982, BENCHMARKS.md)."""
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    relu6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    convs = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in relu6 or tuple(node.args[1:3]) != (0.0, 6.0):
            continue
        conv = node.args[0]
        if not isinstance(conv, torch.fx.Node) or conv.target not in convs or len(conv.users) != 1:
            continue
        if "quantization_annotation" in conv.meta or "quantization_annotation" in node.meta:
            continue
        inputs = {conv.args[0]: get_input_act_qspec(config), conv.args[1]: get_weight_qspec(config)}
        if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
            inputs[conv.args[2]] = get_bias_qspec(config)
        conv.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(config), _annotated=True
        )


def quantize_ptq(
    graph: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]
) -> tuple[torch.fx.GraphModule, Quantizer]:
    """Export ``graph``, observe activations on ``calibration`` inputs; return (quantized graph, quantizer)."""
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = make_quantizer()
    exported = torch.export.export(graph.eval(), (example,)).module()
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), quantizer
