"""Masked feature distillation: the student's predictions regress the EMA teacher's features at masked positions.

Targets are the teacher's stage outputs, each instance-normalised per channel without affine parameters (data2vec
2.0's per-layer normalisation; no batch statistics, so any batch size works). The loss per stage is smooth-L1
(I-JEPA) summed over channels and scaled by ``1/sqrt(C)``, averaged over the masked positions of that stage's grid.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def normalise_target(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` -> the same, each sample's channels normalised over space (mean 0, variance 1)."""
    return F.instance_norm(features.float())


def masked_distillation_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             beta: float = 2.0) -> torch.Tensor:
    """Smooth-L1(``prediction``, ``target``) summed over channels / sqrt(C), mean over positions where ``mask``.

    ``prediction``, ``target``: ``(B, C, *spatial)``; ``mask``: ``(B, 1, *spatial)`` of 0/1 (the block mask at this
    stage's resolution). Zero if nothing is masked."""
    per_position = F.smooth_l1_loss(prediction.float(), target, beta=beta, reduction="none").sum(1, keepdim=True)
    per_position = per_position / prediction.shape[1] ** 0.5
    return (per_position * mask).sum() / mask.sum().clamp_min(1)
