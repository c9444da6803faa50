"""iBOT masked-token self-distillation (Zhou et al. 2022) on the encoder's bottleneck token grid."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_xlstm_pretraining.distributed import all_reduce_mean


class IBOTPatchLoss(nn.Module):
    """For every token the student saw masked, cross-entropy between the teacher's centred, sharpened distribution of
    that token (unmasked view) and the student's; averaged over the masked tokens of the batch.

    ``student_tokens``, ``teacher_tokens``: ``(N, T, D)`` logits of the same N global views; ``masks``: ``(N, T)``
    bool. The token centre is an EMA of the teacher's mean token output, like DINO's centre.
    """

    def __init__(self, out_dim: int, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    def forward(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        q = F.softmax((teacher_tokens.detach().float() - self.center) / self.teacher_temp, dim=-1)
        log_p = F.log_softmax(student_tokens.float() / self.student_temp, dim=-1)
        per_token = (-q * log_p).sum(dim=-1)
        loss = (per_token * masks).sum() / masks.sum().clamp_min(1)
        with torch.no_grad():
            batch_center = all_reduce_mean(teacher_tokens.detach().float().mean(dim=(0, 1), keepdim=True))
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
        return loss
