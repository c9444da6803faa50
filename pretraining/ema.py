"""EMA teacher: the cosine momentum schedule, and the update (shared with semi-supervised training)."""

from __future__ import annotations

import math

from nnunetv2_xlstm.ema import ema_update  # noqa: F401  (the update; this module adds the momentum schedule)


def teacher_momentum(step: int, total_steps: int, base: float, end: float = 1.0) -> float:
    """DINO's cosine schedule, ``end - (end - base) * (cos(pi * step / total) + 1) / 2``: ``base`` at step 0, ``end``
    at the last step (DINO: 1)."""
    return end - (end - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0
