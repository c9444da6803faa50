"""Benchmark presets: how big the networks, data and training are. Each states what it changes from nnU-Net."""

from __future__ import annotations

from dataclasses import dataclass

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.training.schedules import CPU, CPU_LONG, GPU15MIN, SMOKE, Schedule


@dataclass(frozen=True)
class Preset:
    """``schedule`` None and ``stock_recipe`` mean nnU-Net's own planners and trainers for the stock arms."""

    name: str
    purpose: str
    schedule: Schedule | None  # the trainers' suffix is ``_<name>`` when set
    spacing_factor: float = 1.0  # target spacing times this (see scaled_spacing)
    base_features: int = 32
    max_features: int = 320
    batch_size: int | None = None  # None: nnU-Net's memory-driven batch
    stock_recipe: bool = False  # stock arms planned by nnU-Net's planners (own preprocessing), trained by nnUNetTrainer

    @property
    def minutes(self) -> float | None:
        """Training time per run (the schedule's epochs become a cap); None: a run is its iterations."""
        return None if self.schedule is None else self.schedule.minutes

    def trainer(self, arm: str) -> str:
        """The trainer of ``arm``: all arms of a reduced preset share one recipe; only the pretrained one loads."""
        suffix = f"_{self.name.replace('-', '')}" if self.schedule is not None else ""
        semi = {"xlstm_pretrained": "nnUNetTrainerXLSTMPretrained",
                "xlstm_pretrained_decoder": "nnUNetTrainerXLSTMPretrainedDecoder", "xlstm_semi": "nnUNetTrainerXLSTMSemi",
                "xlstm_pretrained_semi": "nnUNetTrainerXLSTMPretrainedSemi",
                "xlstm_pretrained_decoder_semi": "nnUNetTrainerXLSTMPretrainedDecoderSemi"}
        if arm in semi:
            return semi[arm] + suffix
        if self.stock_recipe:
            return "nnUNetTrainer" if arm in ("stock", "resenc_m") else "nnUNetTrainerXLSTMScratch"
        return "nnUNetTrainerBenchmark" + suffix

    def changes(self) -> list[str]:
        """What this preset changes from nnU-Net's defaults, for the report."""
        out = []
        if self.schedule is not None:
            s = self.schedule
            length = (f"{self.minutes:g} minutes of training per run (at most {s.epochs} epochs) x {s.iterations} "
                      f"iterations, warm-up and poly decay over the time" if self.minutes else
                      f"{s.epochs} epochs x {s.iterations} iterations")
            out.append(f"{length} (nnU-Net: 1000 x 250), {s.optimizer} lr {s.lr}, lr warm-up over 10 % of the "
                       f"training with the encoder frozen, for every arm")
            if not s.mirror_tta:
                out.append("no test-time mirroring")
        if self.spacing_factor != 1:
            out.append(f"target spacing x{self.spacing_factor}, capped at the coarsest axis (lower resolution)")
        if (self.base_features, self.max_features) != (32, 320):
            out.append(f"widths {self.base_features}-{self.max_features} (nnU-Net: 32-320; a pretrained encoder "
                       f"sets the XLSTMUNet arms' widths)")
        if self.batch_size is not None:
            out.append(f"batch size {self.batch_size}")
        if not self.stock_recipe:
            out.append("one preprocessing for all arms: stock networks configured at the XLSTMUNet plan's spacing, "
                       "patch and batch")
        return out or ["nothing: nnU-Net's defaults"]


PRESETS = {p.name: p for p in (
    Preset("smoke", "CI: checks the pipeline in minutes, learns nothing", SMOKE, base_features=8, max_features=32,
           batch_size=2),
    Preset("cpu", "a 2-core CPU: about 10 min per arm at ACDC's size", CPU, spacing_factor=2.0, base_features=16,
           max_features=256, batch_size=2),
    Preset("cpu-long", "a 2-core CPU: 20 minutes of training per arm at ACDC's size, long enough for every "
           "structure; for seeds and error bars", CPU_LONG, spacing_factor=2.0, base_features=16, max_features=256,
           batch_size=2),
    Preset("gpu-15min", "one or two arms per 15-minute GPU session", GPU15MIN),
    Preset("full", "nnU-Net's defaults (1000 epochs), for users with GPUs", None, stock_recipe=True),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def scaled_spacing(spacing: list[float], factor: float) -> list[float]:
    """``spacing`` times ``factor``, no axis beyond the coarser of the coarsest axis and the finest times ``factor``:
    ACDC's [10, 1.5, 1.5] mm at factor 2 -> [10, 3, 3]; isotropic [1.25] * 3 -> [2.5] * 3."""
    cap = max(max(spacing), min(spacing) * factor)
    return [min(s * factor, cap) for s in spacing]
