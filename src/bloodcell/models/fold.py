"""Folding batch norms into the convolutions before them (eval-mode arithmetic, exact).

CPU inference runs the folded network (one pass over memory less per layer), and so does
quantization-aware training: litert-torch's QAT conv+BN annotator fails with this torch/torchao
pair, and without BN the fake-quantized graph trains several times faster on a CPU.
The rule: inside one parent module, a Conv2d directly followed by a BatchNorm2d (timm's
BatchNormAct2d included) is the pair that runs in that order.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _after_bn(bn: nn.BatchNorm2d) -> nn.Module:
    # timm's BatchNormAct2d is BN -> drop -> act; keep the part after the normalization.
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every Conv2d -> BatchNorm2d pair folded; returns (copy, pairs)."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for parent in model.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                w, b = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
                )
                fused = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=True,
                )
                fused.weight, fused.bias = w, b
                setattr(parent, conv_name, fused)
                setattr(parent, bn_name, _after_bn(bn))
                folded += 1
    return model, folded
