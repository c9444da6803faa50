"""Benchmark trainers: the fine-tuning recipe for any network the plans name, so that a benchmark's arms differ
only in their plans (stock nnU-Net's PlainConvUNet, ResEnc, XLSTMUNet)."""

from __future__ import annotations

from nnunetv2_xlstm.training.scheduled import ScheduledTrainer
from nnunetv2_xlstm.training.schedules import CPU, CPU_LONG, FINE_TUNING_WARMUP, GPU15MIN, SMOKE

__all__ = ["nnUNetTrainerBenchmark", "nnUNetTrainerBenchmark_cpu", "nnUNetTrainerBenchmark_cpulong",
           "nnUNetTrainerBenchmark_gpu15min", "nnUNetTrainerBenchmark_smoke"]


class nnUNetTrainerBenchmark(ScheduledTrainer):
    """The recipe of ``nnUNetTrainerXLSTMScratch`` (lr warm-up over 10 % of the epochs with the encoder frozen,
    then poly) for any network the plans name."""

    warmup_fraction = FINE_TUNING_WARMUP


class nnUNetTrainerBenchmark_smoke(nnUNetTrainerBenchmark):
    schedule = SMOKE


class nnUNetTrainerBenchmark_cpu(nnUNetTrainerBenchmark):
    schedule = CPU


class nnUNetTrainerBenchmark_gpu15min(nnUNetTrainerBenchmark):
    schedule = GPU15MIN


class nnUNetTrainerBenchmark_cpulong(nnUNetTrainerBenchmark):
    schedule = CPU_LONG
