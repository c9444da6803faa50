"""EMA teacher: cosine momentum schedule towards 1, and the update."""

from __future__ import annotations

import math

import torch
from torch import nn


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """DINO's schedule: ``1 - (1 - base) * (cos(pi * step / total) + 1) / 2``; ``base`` at step 0, 1 at the end."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
