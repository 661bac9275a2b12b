"""DistributedDataParallel plumbing: one process per GPU (NCCL) or per CPU worker (gloo).

Started by torchrun (`torchrun --nproc-per-node N -m bloodcell train ...`), which sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous variables; without them training is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bloodcell.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone validates, prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); one process otherwise.

    Under torchrun each process takes the GPU of its LOCAL_RANK, whatever ``device`` names."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} GPUs on this node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 validates and writes while the others wait at a barrier: allow a long validation.
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=60))
    return DistContext(device, rank, world, local)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP; on GPUs with BatchNorm statistics over the global batch (timm's converter also handles
    BatchNormAct2d). torch's SyncBatchNorm is GPU-only, so CPU processes normalise their own share.
    One process: the model itself."""
    if not ctx.distributed:
        return model
    if ctx.device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    from timm.layers import convert_sync_batchnorm

    return nn.parallel.DistributedDataParallel(convert_sync_batchnorm(model), device_ids=[ctx.device.index])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder it chose)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
