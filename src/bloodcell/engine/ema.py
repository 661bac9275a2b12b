"""Exponential moving average of weights, with YOLO's warm-up so early averages are not stale."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 200.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        averaged, current = [], []
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                averaged.append(v)
                current.append(msd[k].detach())
            else:
                v.copy_(msd[k])
        # One fused kernel for all tensors (as timm's ModelEmaV3): hundreds of small ones per step
        # otherwise set the pace of a GPU step.
        torch._foreach_lerp_(averaged, current, 1 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
