"""The int8 quantizer's annotation: conv -> ReLU6 observed as one fused op, as TFLite runs it."""

import pytest
import torch

from bloodcell.export.graph import ExportGraph
from bloodcell.export.quantize import make_quantizer
from bloodcell.models.fold import fold_batch_norms
from bloodcell.models.registry import build_model, model_config

RELU6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)


@pytest.mark.parametrize("is_qat", [False, True])
def test_conv_relu6_has_one_range_its_outputs(is_qat):
    """Before: the conv's raw output (about -180..130 in the shipped model's stem) and the [0, 6] after
    the ReLU6 shared one observer, a few int8 levels for the activations (BENCHMARKS.md, ninth session)."""
    from torchao.quantization.pt2e import quantize_pt2e

    torch.manual_seed(0)
    net = build_model("cellnet", model_config("cellnet", {"neck_channels": 16}), pretrained=False).eval()
    net, _ = fold_batch_norms(net)  # as PTQ's export and QAT see it: conv -> ReLU6
    graph = ExportGraph(net, normalized_input=True).eval()
    example = torch.rand(1, 96, 128, 3)
    exported = torch.export.export(graph, (example,)).module()
    prepare = quantize_pt2e.prepare_qat_pt2e if is_qat else quantize_pt2e.prepare_pt2e
    quantizer = make_quantizer(is_qat=is_qat)
    quantizer.STATIC_QAT_ONLY_OPS = []  # batch norms are folded (as export.qat does)
    prepared = prepare(exported, quantizer)
    with torch.no_grad():
        prepared(example)
    fused = 0
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in RELU6:
            continue
        conv = node.args[0]
        if conv.target is not torch.ops.aten.conv2d.default:
            continue
        fused += 1
        # the conv's only user is the ReLU6 (no observer between), and one observer follows the ReLU6
        assert list(conv.users) == [node], conv.name
        [observer] = node.users
        module = getattr(prepared, observer.target)
        seen = getattr(module, "activation_post_process", module)  # QAT: a fake-quant around its observer
        lo, hi = float(seen.min_val), float(seen.max_val)
        assert lo >= 0.0 and hi <= 6.0, (node.name, lo, hi)
    assert fused >= 10  # EfficientNet-Lite0's stem, expansions and depthwise convs
