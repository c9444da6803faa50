"""DINO self-distillation loss with a centred, sharpened teacher (Caron et al. 2021, ``main_dino.py``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_xlstm_pretraining.distributed import all_reduce_mean, all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn_knopp(teacher_out: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp centring: ``(B, K)`` logits -> ``(B, K)`` assignments whose rows sum to 1 and whose
    prototypes share the (global, all-reduced) batch equally."""
    q = torch.exp((teacher_out.float() - teacher_out.float().max()) / temp).t()  # (K, B)
    batch = q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)
        q /= q.shape[0]
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)
        q /= batch
    return (q * batch).t()


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's distribution on each global view and the student's on every other view.

    ``student_out``: ``(n_views * B, D)`` view-major (the 2 global views first); ``teacher_out``: ``(2 * B, D)``.
    Teacher: ``softmax((t - center) / teacher_temp)``; student: ``log_softmax(s / student_temp)``; the loss averages
    ``-sum_d q * log p`` over the batch and over all (teacher view, student view) pairs of different views. The centre
    is an EMA (``center_momentum``) of the teacher's mean output, averaged across processes. With
    ``centering="sinkhorn"`` the teacher distribution is instead :func:`sinkhorn_knopp` of the teacher logits (the
    EMA centre is still tracked, for monitoring).
    """

    def __init__(self, out_dim: int, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_steps: int = 0, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema") -> None:
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.centering = centering
        self.teacher_temp, self.warmup_teacher_temp, self.warmup_steps = teacher_temp, warmup_teacher_temp, warmup_steps
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp_at(self, step: int) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_steps``."""
        if step >= self.warmup_steps:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / self.warmup_steps

    def teacher_probs(self, teacher_out: torch.Tensor, step: int) -> torch.Tensor:
        """Centred and sharpened teacher distribution (no gradient)."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_out.detach(), self.teacher_temp_at(step))
        return F.softmax((teacher_out.detach().float() - self.center) / self.teacher_temp_at(step), dim=-1)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, step: int,
                update_center: bool = True) -> torch.Tensor:
        n_views = student_out.shape[0] // (teacher_out.shape[0] // 2)
        student = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_views)
        teacher = torch.cat([self.teacher_probs(t, step) for t in teacher_out.chunk(2)]).chunk(2)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for iq, q in enumerate(teacher):
            for v, log_p in enumerate(student):
                if v != iq:
                    total = total + (-q * log_p).sum(dim=-1).mean()
                    terms += 1
        if update_center:
            self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = all_reduce_mean(teacher_out.detach().float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
