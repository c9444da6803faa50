"""The exponential moving average that makes a teacher of a student (pretraining and semi-supervised training),
and pretraining's cosine momentum schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def teacher_momentum(step: int, total_steps: int, base: float, end: float = 1.0) -> float:
    """DINO's cosine schedule, ``end - (end - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0, ``end``
    at the last step (DINO: 1)."""
    return end - (end - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0
