"""The schedule-driven nnU-Net trainer every trainer of ours derives from: a :class:`Schedule`, bf16, seeds, a
training-time budget, an lr warm-up that may freeze the encoder, and safe checkpoint reading."""

from __future__ import annotations

import math
import os
import random
import resource

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_xlstm.checkpoints import atomic_torch_save, load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.precision import autocast_forward, bf16_decision
from nnunetv2_xlstm.training.lr_schedule import WarmupPolyLR
from nnunetv2_xlstm.training.refusals import check_pretrained_weights_argument, install_refusal_hook
from nnunetv2_xlstm.training.schedules import Schedule
from nnunetv2_xlstm.training.settings import parse_settings

__all__ = ["ITERATIONS_ENV", "MINUTES_ENV", "SEED_ENV", "ScheduledTrainer", "training_budget"]

CPU_DA_CORES = 4  # on a CPU with at most this many cores, augmentation runs in the training process
SEED_ENV = "NNUNETV2_XLSTM_SEED"  # an integer: seeds torch, numpy and random before the network is built
MINUTES_ENV = "NNUNETV2_XLSTM_MINUTES"  # a training-time budget in minutes (see ScheduledTrainer)
ITERATIONS_ENV = "NNUNETV2_XLSTM_ITERATIONS"  # a number of training iterations instead (no time budget)


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


TIME_BUDGET_EPOCH_CAP = 1000  # nnU-Net's own length: the cap of a time budget given to a schedule without one


def training_budget(schedule: Schedule | None, epochs: int, iterations_per_epoch: int) -> tuple[float | None, int]:
    """``(time budget in seconds or None, epochs)`` from :data:`MINUTES_ENV` / :data:`ITERATIONS_ENV`, else the
    schedule's own budget: a time budget keeps the epochs as a cap (at least :data:`TIME_BUDGET_EPOCH_CAP` where the
    schedule's epochs are its length, e.g. the ``cpu`` preset's 8); an iteration count gives whole epochs, at least
    that many iterations, and no time budget."""
    minutes = _env_number(MINUTES_ENV, float, 1e-3)
    iterations = _env_number(ITERATIONS_ENV, int, 1)
    if minutes is not None and iterations is not None:
        raise InputError(f"{MINUTES_ENV} and {ITERATIONS_ENV} are both set: give a training time or a number of "
                         f"iterations, not both")
    if iterations is not None:
        return None, -(-iterations // iterations_per_epoch)
    if minutes is not None and (schedule is None or schedule.minutes is None):
        epochs = max(epochs, TIME_BUDGET_EPOCH_CAP)  # these epochs were a length, not a cap: the time decides
    if minutes is None and schedule is not None:
        minutes = schedule.minutes
    return (None if minutes is None else 60 * minutes), epochs


class _BudgetSpent(Exception):
    """Raised at the start of an epoch once the training-time budget is spent."""


class ScheduledTrainer(nnUNetTrainer):
    """nnU-Net's trainer with a :class:`Schedule` and an lr warm-up that may freeze the encoder, for any network with
    an ``encoder`` (dynamic-network-architectures').

    - The optimiser has two parameter groups, ``encoder`` and ``decoder``.
    - The network runs in bf16 where the device supports it (:mod:`nnunetv2_xlstm.precision`; ``bf16 = "off"`` or
      ``NNUNETV2_XLSTM_BF16=0`` keeps nnU-Net's fp32 on a CPU and fp16 on CUDA); ``nnUNetv2_predict`` follows, as it
      builds the network through this class.
    - ``NNUNETV2_XLSTM_SEED`` seeds the run; ``NNUNETV2_XLSTM_MINUTES`` gives it a training-time budget: the epochs
      (training and validation batches, not start-up or the final validation) stop once it is spent, and the warm-up
      and poly decay follow the spent share of the budget instead of the epoch count, which becomes a cap.
      ``NNUNETV2_XLSTM_ITERATIONS`` instead trains a fixed number of iterations (rounded up to whole epochs), with
      no time budget: the iteration-matched comparison.
    - Checkpoints are written once and atomically, with what a subclass adds (:meth:`checkpoint_state`); ``--c``
      reads the file once with ``weights_only=True`` and refuses one that holds arbitrary objects.
    - Each epoch logs the peak memory (CUDA: allocated tensors; CPU: the training process's resident set) into
      nnU-Net's logger, so that it is in the checkpoint beside the learning curves.
    - torch.compile stays off unless ``nnUNet_compile=1`` is set: it is untested with the Triton mLSTM kernels.
    - On a CPU with at most :data:`CPU_DA_CORES` cores and ``nnUNet_n_proc_DA`` unset, augmentation runs in the
      training process (``nnUNet_n_proc_DA=0``): worker processes would compete with the training threads.
    """

    schedule: Schedule | None = None
    warmup_fraction: float = 0.0  # share of the epochs with a linear lr warm-up ...
    encoder_warmup_lr_factor: float = 0.0  # ... during which the encoder's lr is this times the others' (0: frozen)
    encoder_lr_factor: float = 1.0  # the encoder's lr is this times the decoder's throughout ...
    layer_decay: float = 1.0  # ... and encoder stage s of n this times more again per stage below the bottleneck:
    # encoder_lr_factor * layer_decay ** (n - 1 - s), the stem with stage 0 (layer-wise lr decay, as in BEiT)
    settings_variable: str | None = None  # an environment variable overriding :data:`settings` for one run ...
    settings: dict[str, tuple[str, type]] = {}  # ... {name in the variable: (attribute, type)}
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
        if self.seed is not None:
            random.seed(self.seed)
            np.random.seed(self.seed)
            torch.manual_seed(self.seed)
        self.apply_settings()
        if self.schedule is not None:
            self.num_epochs, self.num_iterations_per_epoch = self.schedule.epochs, self.schedule.iterations
            self.num_val_iterations_per_epoch, self.initial_lr = self.schedule.val_iterations, self.schedule.lr
        self.time_budget, self.num_epochs = training_budget(self.schedule, self.num_epochs,
                                                           self.num_iterations_per_epoch)
        self.warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction else 0
        self.save_every = min(self.save_every, max(1, self.num_epochs // 5))  # short runs keep a resumable checkpoint
        if self.time_budget is not None:
            self.save_every = min(self.save_every, 5)
        self.logger.local_logger.my_fantastic_logging["peak_memory_gib"] = []

    @classmethod
    def checked_settings(cls, text: str) -> dict[str, float]:
        """``{attribute: value}`` of the :data:`settings` that ``text`` (``"name=value,..."``) sets, each a number
        >= 0 and the warm-up share below 1; :class:`InputError` naming :data:`settings_variable` otherwise."""
        kinds = {name: kind for name, (_, kind) in cls.settings.items()}
        out = {}
        for name, value in parse_settings(text, kinds, cls.settings_variable or "", ()).items():
            if value is None or value < 0:
                raise InputError(f"{cls.settings_variable}: {name}={value} must be a number >= 0")
            out[cls.settings[name][0]] = value
        warmup = out.get("warmup_fraction", cls.warmup_fraction)
        if not warmup < 1:
            raise InputError(f"{cls.settings_variable}: the warm-up share {warmup} must be below 1")
        return out

    def apply_settings(self) -> None:
        """Override the class's :data:`settings` from :data:`settings_variable` (``"name=value,..."``), logged."""
        text = os.environ.get(self.settings_variable, "") if self.settings_variable else ""
        for attribute, value in self.checked_settings(text).items():
            setattr(self, attribute, value)
        if text.strip():
            self.print_to_log_file(f"{self.settings_variable}={text}: " + ", ".join(
                f"{attribute} {getattr(self, attribute)}" for attribute, _ in self.settings.values()))

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

    def checkpoint_state(self) -> dict:
        """What a subclass adds to nnU-Net's checkpoint (the semi-supervised teacher); saved in the same file."""
        return {}

    def restore_checkpoint_state(self, checkpoint: dict) -> None:
        """Read back what :meth:`checkpoint_state` saved (called after nnU-Net's own loading)."""

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (the fields ``nnUNetTrainer.save_checkpoint`` writes; a test compares them) with
        :meth:`checkpoint_state` in the same dict, written once and atomically on rank 0: a kill leaves the previous
        checkpoint, never a half-written or partial one."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self.plain_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }
        atomic_torch_save({**checkpoint, **self.checkpoint_state()}, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Restore what :meth:`save_checkpoint` wrote (the fields ``nnUNetTrainer.load_checkpoint`` restores, then
        :meth:`restore_checkpoint_state`), reading the file once with ``weights_only=True``, which refuses arbitrary
        objects. nnU-Net's own method would unpickle the file with ``weights_only=False`` and cannot take a dict."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = (load_nnunet_checkpoint(filename_or_checkpoint) if isinstance(filename_or_checkpoint, str)
                      else filename_or_checkpoint)
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.plain_network().load_state_dict(checkpoint["network_weights"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.restore_checkpoint_state(checkpoint)

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
        groups = [*self.encoder_groups(net.encoder), {"params": [], "name": "decoder"}]
        ids = {id(p) for g in groups for p in g["params"]}
        groups[-1]["params"] = [p for p in net.parameters() if id(p) not in ids]
        if self.schedule is None or self.schedule.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                        nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs,
                                       self.encoder_warmup_lr_factor,
                                       progress=None if self.time_budget is None else self.schedule_epoch)

    def encoder_groups(self, encoder: nn.Module) -> list[dict]:
        """The encoder's parameter groups (named ``encoder``): one, or one per stage (the stem with stage 0) with
        ``lr_scale = encoder_lr_factor * layer_decay ** (n - 1 - s)`` where :data:`layer_decay` is not 1."""
        stages = getattr(encoder, "stages", None)
        if self.layer_decay == 1 or stages is None:
            return [{"params": list(encoder.parameters()), "name": "encoder", "lr_scale": self.encoder_lr_factor}]
        n = len(stages)
        groups = [{"params": list(stage.parameters()), "name": "encoder",
                   "lr_scale": self.encoder_lr_factor * self.layer_decay ** (n - 1 - s)}
                  for s, stage in enumerate(stages)]
        ids = {id(p) for g in groups for p in g["params"]}
        groups[0]["params"] += [p for p in encoder.parameters() if id(p) not in ids]  # the stem
        return groups

    def on_train_epoch_start(self) -> None:
        """Freeze the encoder during the warm-up (a zero lr factor), release it afterwards. Under DDP the encoder keeps
        ``requires_grad`` (DDP fixes the set of trained parameters) and is held by its zero learning rate alone."""
        frozen = self.schedule_epoch() < self.warmup_epochs and self.encoder_warmup_lr_factor == 0
        encoder = self.plain_network().encoder
        if not self.is_ddp and next(encoder.parameters()).requires_grad == frozen:
            encoder.requires_grad_(not frozen)
            self.print_to_log_file(f"encoder {'frozen' if frozen else 'trainable'} from epoch {self.current_epoch}")
        super().on_train_epoch_start()  # prints the first group's lr (the encoder's), rounded to 5 decimals
        lrs: dict[str, list[float]] = {}
        for group in self.optimizer.param_groups:
            lrs.setdefault(group.get("name", "other"), []).append(group["lr"])
        self.print_to_log_file("learning rates: " + ", ".join(
            f"{name} {min(v):.3g}" + (f"-{max(v):.3g}" if max(v) > min(v) else "") for name, v in lrs.items()))
