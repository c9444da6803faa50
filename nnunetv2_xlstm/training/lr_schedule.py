"""Learning-rate schedule for fine-tuning a pretrained encoder: linear warm-up with the encoder held back, then poly."""

from __future__ import annotations

from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


class WarmupPolyLR(_LRScheduler):
    """Per epoch ``e`` (nnU-Net calls ``step(current_epoch)``):

    - ``e < warmup``: lr ``initial_lr * (e + 1) / warmup``; param groups named ``"encoder"`` get ``encoder_factor``
      times that (0: frozen);
    - afterwards: nnU-Net's poly decay over the remaining epochs, ``initial_lr * (1 - (e - warmup) / (max - warmup))
      ** 0.9``, for every group;
    - throughout, a group's ``lr_scale`` (default 1) multiplies its lr: a lower lr for pretrained parts, or a
      layer-wise decay over the encoder's stages.

    With ``warmup=0`` it is nnU-Net's ``PolyLRScheduler``. With ``progress`` (a callable returning a possibly
    fractional epoch, e.g. the spent share of a time budget times ``max_epochs``) that epoch replaces nnU-Net's.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, max_epochs: int, warmup: int = 0,
                 encoder_factor: float = 0.0, exponent: float = 0.9,
                 progress: Callable[[], float] | None = None) -> None:
        self.initial_lr, self.max_epochs, self.warmup, self.progress = initial_lr, max_epochs, warmup, progress
        self.encoder_factor, self.exponent = encoder_factor, exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lrs(self, epoch: float) -> tuple[float, float]:
        """``(lr of the encoder groups, lr of the others)`` at ``epoch``."""
        if epoch < self.warmup:
            lr = self.initial_lr * (epoch + 1) / self.warmup
            return lr * self.encoder_factor, lr
        remaining = max(0.0, 1 - (epoch - self.warmup) / max(self.max_epochs - self.warmup, 1))
        lr = self.initial_lr * remaining ** self.exponent
        return lr, lr

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step, self.ctr = self.ctr, self.ctr + 1
        if self.progress is not None:
            current_step = self.progress()
        encoder_lr, lr = self.lrs(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = (encoder_lr if group.get("name") == "encoder" else lr) * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
