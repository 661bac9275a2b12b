"""Full-integer quantization through PyTorch 2 export (pt2e) and litert-torch's quantizer.

The same quantizer serves post-training quantization (observers calibrated on training
images) and quantization-aware training (fake-quant modules, fine-tuned), so litert-torch
converts both the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def make_quantizer(is_qat: bool = False):
    """litert-torch's symmetric per-channel int8 quantizer, made to cover every residual add."""
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class FullIntegerQuantizer(pt2e_quantizer.PT2EQuantizer):
        # Its add annotator matches adds by source partition and missed timm's residual adds after
        # stage 2; they ran as DEQUANTIZE -> float ADD -> QUANTIZE, so the graph was not full-integer.
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
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


def quantize_ptq(graph: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]):
    """Export ``graph``, observe activations on ``calibration`` inputs; return (quantized graph, quantizer)."""
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = make_quantizer()
    exported = torch.export.export(graph.eval(), (example,)).module()
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), quantizer
