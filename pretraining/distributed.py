"""torchrun/DDP helpers. Every collective is guarded, so a single process needs no launcher."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: torch.device) -> None:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (the tensor itself when not distributed)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (the tensor itself when not distributed)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (so that all of them stop together)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([int(flag)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, so every rank holds the same."""
    if is_distributed():
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(all_reduce_mean(b))
