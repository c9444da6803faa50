"""Training schedules: how long a trainer trains and with which optimiser. A trainer subclass picks one with a
one-line ``schedule = ...``; ``*_short`` / ``*_smoke`` / ``*_cpu`` / ``*_gpu15min`` / ``*_cpulong`` name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CPU", "CPU_LONG", "FINE_TUNING_WARMUP", "GPU15MIN", "SHORT", "SMOKE", "Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Training length and optimiser; a trainer with ``schedule = None`` keeps nnU-Net's."""

    epochs: int
    iterations: int
    val_iterations: int
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    mirror_tta: bool = True  # test-time mirroring in the final validation and nnUNetv2_predict (8 passes in 3D)
    minutes: float | None = None  # a training-time budget; the epochs become a cap (NNUNETV2_XLSTM_MINUTES overrides)


# AdamW, not nnU-Net's SGD (lr 0.01, momentum 0.99): on the phantoms SGD still predicted only background and aorta
# after 225 iterations, where AdamW segments most structures within 60
SHORT = Schedule(epochs=16, iterations=25, val_iterations=3)  # about 7 min on 2 CPU cores at the demo's 48^3 patch
SMOKE = Schedule(epochs=2, iterations=4, val_iterations=2, mirror_tta=False)  # checks a pipeline, learns nothing
# the benchmark presets' (nnunetv2_xlstm.benchmark.presets): about 10 min per arm on 2 CPU cores at ACDC's CPU size
# (2.2-3 s per iteration at patch 10x128x112, batch 2, plus start-up and validation), about 5 min per arm on one
# H100 (estimated from reference step times of ResEnc-M on an H100, not measured)
CPU = Schedule(epochs=8, iterations=20, val_iterations=2, mirror_tta=False)
GPU15MIN = Schedule(epochs=20, iterations=50, val_iterations=5, mirror_tta=False)
# 20 minutes of training (bf16: about 2000 stock / 1100 XLSTMUNet iterations at ACDC's CPU size); the epochs are a cap
CPU_LONG = Schedule(epochs=1000, iterations=25, val_iterations=2, mirror_tta=False, minutes=20)


FINE_TUNING_WARMUP = 0.1  # share of the epochs (or of the time budget) with the lr warm-up and the encoder frozen
