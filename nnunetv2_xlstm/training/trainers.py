"""Trainers. Each subclass changes one thing: the schedule, the networks it accepts, or where the encoder starts from.

========================================  ======================================================================
``nnUNetTrainerXLSTM``                    nnU-Net's training (1000 epochs, SGD), XLSTMUNet plans only
``nnUNetTrainerXLSTMPretrained``          loads the plans' pretrained encoder strictly; encoder frozen while the
                                          lr warms up over the first 10 % of epochs, then poly
``nnUNetTrainerXLSTMPretrainedDecoder``   the same, loading the pretrained decoder too
``nnUNetTrainerXLSTMScratch``             the matched baseline: the same plans and schedule, random weights
``nnUNetTrainerBenchmark``                the matched baseline's recipe for any dynamic-network-architectures
                                          network (PlainConvUNet, ResEnc, XLSTMUNet): the benchmark's other arms
``*_short`` / ``*_smoke``                 the same with the :data:`SHORT` (CPU) / :data:`SMOKE` (tests) schedule
``*_cpu`` / ``*_gpu15min``                the benchmark presets' schedules (:data:`CPU`, :data:`GPU15MIN`)
``*_cpulong``                             :data:`CPU_LONG`: 20 minutes of training (a time budget)
========================================  ======================================================================
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import file_sha256, load_encoder_into, load_exported_encoder, load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.leakage import case_id, check_no_leak
from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet
from nnunetv2_xlstm.precision import autocast_forward, bf16_decision
from nnunetv2_xlstm.training.lr_schedule import WarmupPolyLR

__all__ = ["nnUNetTrainerXLSTM", "nnUNetTrainerXLSTM_short", "nnUNetTrainerXLSTM_smoke",
           "nnUNetTrainerXLSTMPretrained", "nnUNetTrainerXLSTMPretrainedDecoder",
           "nnUNetTrainerXLSTMPretrainedDecoder_smoke", "nnUNetTrainerXLSTMPretrainedDecoder_cpulong",
           "nnUNetTrainerXLSTMPretrained_short", "nnUNetTrainerXLSTMPretrained_smoke",
           "nnUNetTrainerXLSTMPretrained_cpu", "nnUNetTrainerXLSTMPretrained_gpu15min",
           "nnUNetTrainerXLSTMScratch", "nnUNetTrainerXLSTMScratch_short", "nnUNetTrainerXLSTMScratch_smoke",
           "nnUNetTrainerBenchmark", "nnUNetTrainerBenchmark_smoke", "nnUNetTrainerBenchmark_cpu",
           "nnUNetTrainerBenchmark_gpu15min", "nnUNetTrainerBenchmark_cpulong", "nnUNetTrainerXLSTMPretrained_cpulong"]


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


CPU_DA_CORES = 4  # on a CPU with at most this many cores, augmentation runs in the training process
SEED_ENV = "NNUNETV2_XLSTM_SEED"  # an integer: seeds torch, numpy and random before the network is built
MINUTES_ENV = "NNUNETV2_XLSTM_MINUTES"  # a training-time budget in minutes (see ScheduledTrainer)


def _env_number(name: str, kind: type, minimum: float) -> float | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < minimum:
        raise InputError(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'} >= {minimum}")
    return number


class _RefusalsWithoutTraceback:
    """nnU-Net's commands (``nnUNetv2_train``, ``_predict``) end with a traceback for any error; a refusal of ours
    (:class:`InputError`: wrong plans, a changed encoder, a bad unlabelled list) already says what to fix, so it is
    printed as one line. Installed by our trainers when nnU-Net builds one, never at import."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, kind: type, value: BaseException, tb) -> None:
        if issubclass(kind, InputError):
            print(f"{Path(sys.argv[0]).name}: error: {value}", file=sys.stderr)
        else:
            self.previous(kind, value, tb)


def install_refusal_hook() -> None:
    """Print our refusals in this process as one line (idempotent)."""
    if not isinstance(sys.excepthook, _RefusalsWithoutTraceback):
        sys.excepthook = _RefusalsWithoutTraceback(sys.excepthook)


def check_pretrained_weights_argument(argv: list[str] | None = None) -> None:
    """``nnUNetv2_train -pretrained_weights FILE`` unpickles FILE (``weights_only=False``) after building the trainer
    and before any trainer method runs: nnU-Net gives a trainer no hook there. Our trainers therefore read FILE with
    ``weights_only=True`` when they are built, and refuse it if it holds anything but tensors and plain values."""
    argv = sys.argv if argv is None else argv
    if "-pretrained_weights" in argv[:-1]:
        path = argv[argv.index("-pretrained_weights") + 1]
        try:
            load_nnunet_checkpoint(path)
        except InputError as e:
            raise InputError(f"refusing -pretrained_weights {path}: {e}") from None


class _BudgetSpent(Exception):
    """Raised at the start of an epoch once the training-time budget is spent."""


class ScheduledTrainer(nnUNetTrainer):
    """nnU-Net's trainer with a :class:`Schedule`, an lr warm-up that may freeze the encoder, and optional strict
    loading of a pretrained encoder; for any network with an ``encoder`` (dynamic-network-architectures').

    - The optimiser has two parameter groups, ``encoder`` and ``decoder``.
    - The network runs in bf16 where the device supports it (:mod:`nnunetv2_xlstm.precision`; ``bf16 = "off"`` or
      ``NNUNETV2_XLSTM_BF16=0`` keeps nnU-Net's fp32 on a CPU and fp16 on CUDA); ``nnUNetv2_predict`` follows, as it
      builds the network through this class.
    - ``NNUNETV2_XLSTM_SEED`` seeds the run; ``NNUNETV2_XLSTM_MINUTES`` gives it a training-time budget: the epochs
      (training and validation batches, not start-up or the final validation) stop once it is spent, and the warm-up
      and poly decay follow the spent share of the budget instead of the epoch count, which becomes a cap.
    - ``--c`` reads the checkpoint with ``weights_only=True`` first and refuses one that holds arbitrary objects.
    - Each epoch logs the peak memory (CUDA: allocated tensors; CPU: the training process's resident set) into
      nnU-Net's logger, so that it is in the checkpoint beside the learning curves.
    - torch.compile stays off unless ``nnUNet_compile=1`` is set: it is untested with the Triton mLSTM kernels.
    - On a CPU with at most :data:`CPU_DA_CORES` cores and ``nnUNet_n_proc_DA`` unset, augmentation runs in the
      training process (``nnUNet_n_proc_DA=0``): worker processes would compete with the training threads.
    """

    schedule: Schedule | None = None
    load_encoder: bool = False  # load the encoder the plans name (``plans["pretrained_encoder"]``) before epoch 0
    load_decoder: bool = False  # ... and the decoder exported with it (all but the segmentation heads)
    warmup_fraction: float = 0.0  # share of the epochs with a linear lr warm-up ...
    encoder_warmup_lr_factor: float = 0.0  # ... during which the encoder's lr is this times the others' (0: frozen)
    bf16: str = "auto"  # "auto", "on" or "off"; NNUNETV2_XLSTM_BF16 overrides it

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        # augmentation workers compete with the training threads for few cores: augment in the training process
        # (measured on 2 cores with ACDC: no slower than 1 or 2 workers, one process less; docs/benchmarks.md)
        self.augment_in_process = (self.device.type == "cpu" and "nnUNet_n_proc_DA" not in os.environ
                                   and (os.cpu_count() or 1) <= CPU_DA_CORES)
        install_refusal_hook()
        check_pretrained_weights_argument()
        self.seed = _env_number(SEED_ENV, int, 0)
        minutes = _env_number(MINUTES_ENV, float, 1e-3)
        if minutes is None and self.schedule is not None:
            minutes = self.schedule.minutes
        self.time_budget = None if minutes is None else 60 * minutes
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        if self.schedule is not None:
            self.num_epochs, self.num_iterations_per_epoch = self.schedule.epochs, self.schedule.iterations
            self.num_val_iterations_per_epoch, self.initial_lr = self.schedule.val_iterations, self.schedule.lr
        self.warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction else 0
        self.save_every = min(self.save_every, max(1, self.num_epochs // 5))  # short runs keep a resumable checkpoint
        if self.time_budget is not None:
            self.save_every = min(self.save_every, 5)
        self.logger.local_logger.my_fantastic_logging["peak_memory_gib"] = []

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's network for the plans, its forward in bf16 where :data:`bf16` and the device allow."""
        install_refusal_hook()  # nnUNetv2_predict builds the network through this classmethod, without a trainer
        return autocast_forward(nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision),
            cls.bf16)

    def initialize(self) -> None:
        super().initialize()
        self.print_to_log_file(f"precision: {bf16_decision(self.device.type, self.bf16)[1]}; "
                               f"augmentation workers: {self.augmentation_processes()}"
                               + (f"; seed {self.seed}" if self.seed is not None else "")
                               + (f"; training-time budget {self.time_budget / 60:g} min" if self.time_budget else ""))

    def augmentation_processes(self) -> int:
        """Augmentation worker processes: 0 (in the training process) on a CPU with few cores, else nnU-Net's."""
        return 0 if self.augment_in_process else get_allowed_n_proc_DA()

    def get_dataloaders(self) -> tuple:
        if not self.augment_in_process:
            return super().get_dataloaders()
        os.environ["nnUNet_n_proc_DA"] = "0"  # only while nnU-Net builds the loaders: its planner reads it too
        try:
            return super().get_dataloaders()
        finally:
            del os.environ["nnUNet_n_proc_DA"]

    def spent_fraction(self) -> float:
        """Share of the training-time budget spent by the finished epochs (their logged start/end times)."""
        log = self.logger.local_logger.my_fantastic_logging
        spent = sum(e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"]))
        return spent / self.time_budget

    def schedule_epoch(self) -> float:
        """The epoch the lr schedule and the warm-up see: the current one, or with a time budget the spent share of
        the budget times the epoch cap."""
        return self.current_epoch if self.time_budget is None else self.spent_fraction() * self.num_epochs

    def run_training(self) -> None:
        try:
            super().run_training()
        except _BudgetSpent:
            log = self.logger.local_logger.my_fantastic_logging
            self.print_to_log_file(f"training-time budget of {self.time_budget / 60:g} min spent after "
                                   f"{self.current_epoch} epochs ({self.current_epoch * self.num_iterations_per_epoch}"
                                   f" iterations, {sum(log['epoch_end_timestamps']) - sum(log['epoch_start_timestamps']):.0f} s)")
            self.on_train_end()

    def on_epoch_start(self) -> None:
        if self.time_budget is not None and self.current_epoch > 0 and self.spent_fraction() >= 1:
            raise _BudgetSpent
        super().on_epoch_start()

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        if isinstance(filename_or_checkpoint, str):  # refuse what weights_only refuses, before nnU-Net unpickles it
            load_nnunet_checkpoint(filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)

    def _do_i_compile(self) -> bool:
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t") and super()._do_i_compile()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:
        settings = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.schedule is not None and not self.schedule.mirror_tta:
            self.inference_allowed_mirroring_axes = None  # stored in the checkpoint, so nnUNetv2_predict follows
        return settings

    def on_epoch_end(self) -> None:
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2 ** 30, "cuda allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "process resident"
        self.logger.log("peak_memory_gib", peak, self.current_epoch)
        self.print_to_log_file(f"Peak memory: {peak:.2f} GiB ({kind})")
        super().on_epoch_end()

    def plain_network(self) -> nn.Module:
        """The network without its DDP and torch.compile wrappers."""
        net = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupPolyLR]:
        net = self.plain_network()
        encoder = list(net.encoder.parameters())
        ids = {id(p) for p in encoder}
        groups = [{"params": encoder, "name": "encoder"},
                  {"params": [p for p in net.parameters() if id(p) not in ids], "name": "decoder"}]
        if self.schedule is None or self.schedule.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                        nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs,
                                       self.encoder_warmup_lr_factor,
                                       progress=None if self.time_budget is None else self.schedule_epoch)

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self.load_encoder and self.current_epoch == 0:  # not when continuing (--c): the checkpoint has the weights
            self.load_pretrained_encoder()  # before the data loader workers start, so a refusal exits cleanly
        super().on_train_start()

    def on_train_epoch_start(self) -> None:
        """Freeze the encoder during the warm-up (a zero lr factor), release it afterwards. Under DDP the encoder keeps
        ``requires_grad`` (DDP fixes the set of trained parameters) and is held by its zero learning rate alone."""
        frozen = self.schedule_epoch() < self.warmup_epochs and self.encoder_warmup_lr_factor == 0
        encoder = self.plain_network().encoder
        if not self.is_ddp and next(encoder.parameters()).requires_grad == frozen:
            encoder.requires_grad_(not frozen)
            self.print_to_log_file(f"encoder {'frozen' if frozen else 'trainable'} from epoch {self.current_epoch}")
        super().on_train_epoch_start()

    def load_pretrained_encoder(self) -> None:
        """Load the plans' encoder strictly (see :func:`load_encoder_into`) and log what was loaded."""
        info = self.plans_manager.plans.get("pretrained_encoder")
        if info is None:
            raise InputError(f"plans '{self.plans_manager.plans_name}' name no pretrained encoder. Plan with "
                             f"nnunetv2_xlstm_plan_and_preprocess --pretrained_encoder encoder_export.pt, or train "
                             f"from scratch with nnUNetTrainerXLSTMScratch")
        path = Path(self.preprocessed_dataset_folder_base) / info["file"]
        if not path.is_file() or file_sha256(path) != info["sha256"]:
            raise InputError(f"{path}, the encoder these plans were made for, is missing or has changed since "
                             f"planning; plan again with --pretrained_encoder")
        export = load_exported_encoder(path)
        self.check_encoder_pool(path, export[1])
        report = load_encoder_into(self.plain_network(), path, self.configuration_manager.network_arch_init_kwargs,
                                   self.num_input_channels, decoder=self.load_decoder, export=export)
        count = lambda keys: ", ".join(f"{k} {n}" for k, n in Counter(".".join(k.split(".")[:2]) for k in keys).items())
        listing = atomic_write_text(Path(self.output_folder) / "pretrained_encoder_keys.json",
                                    json.dumps({"encoder": str(path), "source": info.get("source"), **report}, indent=1))
        self.print_to_log_file(f"loaded pretrained encoder {path} (from {info.get('source')}): "
                               f"{len(report['loaded'])} tensors ({count(report['loaded'])}); initialised afresh: "
                               f"{len(report['fresh'])} tensors ({count(report['fresh'])}); every key in {listing}")

    def check_encoder_pool(self, path: Path, plan: dict) -> None:
        """Refuse an encoder (``plan``: its adaptation plan) pretrained on a patient this fold validates on, or on a
        test image of the raw data set (``imagesTs``); ``NNUNETV2_XLSTM_TRANSDUCTIVE=1`` allows it, logged
        (:mod:`nnunetv2_xlstm.leakage`)."""
        _, val_keys = self.do_split()
        raw = os.environ.get("nnUNet_raw")
        test_folder = Path(raw or ".") / self.plans_manager.dataset_name / "imagesTs"
        test = [case_id(f) for f in test_folder.iterdir()] if raw and test_folder.is_dir() else []
        note = check_no_leak(plan, [*val_keys, *test], path, "validation or test")
        if note:
            self.print_to_log_file(f"WARNING: {note}")


class nnUNetTrainerXLSTM(ScheduledTrainer):
    """nnU-Net's trainer, refusing plans that do not configure an XLSTMUNet.

    Without this check ``-tr nnUNetTrainerXLSTM -p nnUNetPlans`` would silently train stock nnU-Net's network.
    """

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        name = configuration_manager.network_arch_class_name
        if name.split(".")[-1] != XLSTMUNet.__name__:
            raise InputError(
                f"plans '{plans_manager.plans_name}' configure {name}, not XLSTMUNet. Plan with "
                f"nnunetv2_xlstm_plan_and_preprocess and train with -p nnUNetPlansXLSTM.")
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)


class nnUNetTrainerXLSTM_short(nnUNetTrainerXLSTM):
    schedule = SHORT


class nnUNetTrainerXLSTM_smoke(nnUNetTrainerXLSTM):
    schedule = SMOKE


FINE_TUNING_WARMUP = 0.1  # share of the epochs (or of the time budget) with the lr warm-up and the encoder frozen


class nnUNetTrainerXLSTMPretrained(nnUNetTrainerXLSTM):
    """Fine-tuning: the plans' encoder, frozen while the lr warms up over the first 10 % of the epochs."""

    load_encoder = True
    warmup_fraction = FINE_TUNING_WARMUP


class nnUNetTrainerXLSTMPretrainedDecoder(nnUNetTrainerXLSTMPretrained):
    """Fine-tuning from the pretrained encoder and decoder (masked-distillation exports carry both)."""

    load_decoder = True


class nnUNetTrainerXLSTMPretrainedDecoder_smoke(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrainedDecoder_cpulong(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = CPU_LONG


class nnUNetTrainerXLSTMPretrained_short(nnUNetTrainerXLSTMPretrained):
    schedule = SHORT


class nnUNetTrainerXLSTMPretrained_smoke(nnUNetTrainerXLSTMPretrained):
    schedule = SMOKE


class nnUNetTrainerXLSTMScratch(nnUNetTrainerXLSTM):
    """The matched from-scratch baseline of :class:`nnUNetTrainerXLSTMPretrained`: the same schedule and warm-up (the
    randomly initialised encoder frozen while the lr warms up), random weights."""

    warmup_fraction = FINE_TUNING_WARMUP


class nnUNetTrainerXLSTMScratch_short(nnUNetTrainerXLSTMScratch):
    schedule = SHORT


class nnUNetTrainerXLSTMScratch_smoke(nnUNetTrainerXLSTMScratch):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrained_cpu(nnUNetTrainerXLSTMPretrained):
    schedule = CPU


class nnUNetTrainerXLSTMPretrained_gpu15min(nnUNetTrainerXLSTMPretrained):
    schedule = GPU15MIN


class nnUNetTrainerXLSTMPretrained_cpulong(nnUNetTrainerXLSTMPretrained):
    schedule = CPU_LONG


class nnUNetTrainerBenchmark(ScheduledTrainer):
    """The recipe of :class:`nnUNetTrainerXLSTMScratch` (lr warm-up over 10 % of the epochs with the encoder frozen,
    then poly) for any network the plans name, so that a benchmark's arms differ only in their plans."""

    warmup_fraction = FINE_TUNING_WARMUP


class nnUNetTrainerBenchmark_smoke(nnUNetTrainerBenchmark):
    schedule = SMOKE


class nnUNetTrainerBenchmark_cpu(nnUNetTrainerBenchmark):
    schedule = CPU


class nnUNetTrainerBenchmark_gpu15min(nnUNetTrainerBenchmark):
    schedule = GPU15MIN


class nnUNetTrainerBenchmark_cpulong(nnUNetTrainerBenchmark):
    schedule = CPU_LONG
