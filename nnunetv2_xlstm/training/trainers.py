"""Trainers. Each subclass changes one thing: the schedule, the networks it accepts, or where the encoder starts from.

=================================  =====================================================================
``nnUNetTrainerXLSTM``             nnU-Net's training (1000 epochs, SGD), XLSTMUNet plans only
``nnUNetTrainerXLSTMPretrained``   loads the plans' pretrained encoder strictly; encoder frozen while the
                                   lr warms up over the first 10 % of epochs, then poly
``nnUNetTrainerXLSTMScratch``      the matched baseline: the same plans and schedule, random weights
``nnUNetTrainerBenchmark``         the matched baseline's recipe for any dynamic-network-architectures
                                   network (PlainConvUNet, ResEnc, XLSTMUNet): the benchmark's other arms
``*_short`` / ``*_smoke``          the same with the :data:`SHORT` (CPU) / :data:`SMOKE` (tests) schedule
``*_cpu`` / ``*_gpu15min``         the benchmark presets' schedules (:data:`CPU`, :data:`GPU15MIN`)
=================================  =====================================================================
"""

from __future__ import annotations

import json
import os
import resource
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import file_sha256, load_encoder_into
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet
from nnunetv2_xlstm.training.lr_schedule import WarmupPolyLR

__all__ = ["nnUNetTrainerXLSTM", "nnUNetTrainerXLSTM_short", "nnUNetTrainerXLSTM_smoke",
           "nnUNetTrainerXLSTMPretrained", "nnUNetTrainerXLSTMPretrained_short", "nnUNetTrainerXLSTMPretrained_smoke",
           "nnUNetTrainerXLSTMPretrained_cpu", "nnUNetTrainerXLSTMPretrained_gpu15min",
           "nnUNetTrainerXLSTMScratch", "nnUNetTrainerXLSTMScratch_short", "nnUNetTrainerXLSTMScratch_smoke",
           "nnUNetTrainerBenchmark", "nnUNetTrainerBenchmark_smoke", "nnUNetTrainerBenchmark_cpu",
           "nnUNetTrainerBenchmark_gpu15min"]


@dataclass(frozen=True)
class Schedule:
    """Training length and optimiser; a trainer with ``schedule = None`` keeps nnU-Net's."""

    epochs: int
    iterations: int
    val_iterations: int
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    mirror_tta: bool = True  # test-time mirroring in the final validation and nnUNetv2_predict (8 passes in 3D)


# AdamW, not nnU-Net's SGD (lr 0.01, momentum 0.99): on the phantoms SGD still predicted only background and aorta
# after 225 iterations, where AdamW segments most structures within 60
SHORT = Schedule(epochs=16, iterations=25, val_iterations=3)  # about 7 min on 2 CPU cores at the demo's 48^3 patch
SMOKE = Schedule(epochs=2, iterations=4, val_iterations=2, mirror_tta=False)  # checks a pipeline, learns nothing
# the benchmark presets' (nnunetv2_xlstm.benchmark.presets): about 10 min per arm on 2 CPU cores at ACDC's CPU size
# (2.2-3 s per iteration at patch 10x128x112, batch 2, plus start-up and validation), about 5 min per arm on one
# H100 (estimated from the brief's step times, not measured)
CPU = Schedule(epochs=8, iterations=20, val_iterations=2, mirror_tta=False)
GPU15MIN = Schedule(epochs=20, iterations=50, val_iterations=5, mirror_tta=False)


class ScheduledTrainer(nnUNetTrainer):
    """nnU-Net's trainer with a :class:`Schedule`, an lr warm-up that may freeze the encoder, and optional strict
    loading of a pretrained encoder; for any network with an ``encoder`` (dynamic-network-architectures').

    The optimiser has two parameter groups, ``encoder`` and ``decoder``. torch.compile stays off unless
    ``nnUNet_compile=1`` is set: it is untested with the Triton mLSTM kernels. Each epoch's log ends with the peak
    memory (CUDA: allocated tensors; CPU: the training process's resident set), which the benchmark reads.
    """

    schedule: Schedule | None = None
    load_encoder: bool = False  # load the encoder the plans name (``plans["pretrained_encoder"]``) before epoch 0
    warmup_fraction: float = 0.0  # share of the epochs with a linear lr warm-up ...
    encoder_warmup_lr_factor: float = 0.0  # ... during which the encoder's lr is this times the others' (0: frozen)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule is not None:
            self.num_epochs, self.num_iterations_per_epoch = self.schedule.epochs, self.schedule.iterations
            self.num_val_iterations_per_epoch, self.initial_lr = self.schedule.val_iterations, self.schedule.lr
        self.warmup_epochs = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction else 0
        self.save_every = min(self.save_every, max(1, self.num_epochs // 5))  # short runs keep a resumable checkpoint

    def _do_i_compile(self) -> bool:
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t") and super()._do_i_compile()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:
        settings = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.schedule is not None and not self.schedule.mirror_tta:
            self.inference_allowed_mirroring_axes = None  # stored in the checkpoint, so nnUNetv2_predict follows
        return settings

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2 ** 30, "cuda allocated"
        else:
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "process resident"
        self.print_to_log_file(f"Peak memory: {peak:.2f} GiB ({kind})")

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
                                       self.encoder_warmup_lr_factor)

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self.load_encoder and self.current_epoch == 0:  # not when continuing (--c): the checkpoint has the weights
            self.load_pretrained_encoder()  # before the data loader workers start, so a refusal exits cleanly
        super().on_train_start()

    def on_train_epoch_start(self) -> None:
        """Freeze the encoder during the warm-up (a zero lr factor), release it afterwards. Under DDP the encoder keeps
        ``requires_grad`` (DDP fixes the set of trained parameters) and is held by its zero learning rate alone."""
        frozen = self.current_epoch < self.warmup_epochs and self.encoder_warmup_lr_factor == 0
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
        report = load_encoder_into(self.plain_network(), path, self.configuration_manager.network_arch_init_kwargs,
                                   self.num_input_channels)
        count = lambda keys: ", ".join(f"{k} {n}" for k, n in Counter(".".join(k.split(".")[:2]) for k in keys).items())
        listing = atomic_write_text(Path(self.output_folder) / "pretrained_encoder_keys.json",
                                    json.dumps({"encoder": str(path), "source": info.get("source"), **report}, indent=1))
        self.print_to_log_file(f"loaded pretrained encoder {path} (from {info.get('source')}): "
                               f"{len(report['loaded'])} tensors ({count(report['loaded'])}); initialised afresh: "
                               f"{len(report['fresh'])} tensors ({count(report['fresh'])}); every key in {listing}")


class nnUNetTrainerXLSTM(ScheduledTrainer):
    """nnU-Net's trainer, refusing plans that do not configure an XLSTMUNet.

    Without this check ``-tr nnUNetTrainerXLSTM -p nnUNetPlans`` would silently train stock nnU-Net's network.
    """

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        name = configuration_manager.network_arch_class_name
        if name.split(".")[-1] != XLSTMUNet.__name__:
            raise RuntimeError(
                f"plans '{plans_manager.plans_name}' configure {name}, not XLSTMUNet. Plan with "
                f"nnunetv2_xlstm_plan_and_preprocess and train with -p nnUNetPlansXLSTM.")
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)


class nnUNetTrainerXLSTM_short(nnUNetTrainerXLSTM):
    schedule = SHORT


class nnUNetTrainerXLSTM_smoke(nnUNetTrainerXLSTM):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrained(nnUNetTrainerXLSTM):
    """Fine-tuning: the plans' encoder, frozen while the lr warms up over the first 10 % of the epochs."""

    load_encoder = True
    warmup_fraction = 0.1


class nnUNetTrainerXLSTMPretrained_short(nnUNetTrainerXLSTMPretrained):
    schedule = SHORT


class nnUNetTrainerXLSTMPretrained_smoke(nnUNetTrainerXLSTMPretrained):
    schedule = SMOKE


class nnUNetTrainerXLSTMScratch(nnUNetTrainerXLSTMPretrained):
    """The matched from-scratch baseline of :class:`nnUNetTrainerXLSTMPretrained`: same schedule, no loading."""

    load_encoder = False


class nnUNetTrainerXLSTMScratch_short(nnUNetTrainerXLSTMScratch):
    schedule = SHORT


class nnUNetTrainerXLSTMScratch_smoke(nnUNetTrainerXLSTMScratch):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrained_cpu(nnUNetTrainerXLSTMPretrained):
    schedule = CPU


class nnUNetTrainerXLSTMPretrained_gpu15min(nnUNetTrainerXLSTMPretrained):
    schedule = GPU15MIN


class nnUNetTrainerBenchmark(ScheduledTrainer):
    """The recipe of :class:`nnUNetTrainerXLSTMScratch` (lr warm-up over 10 % of the epochs with the encoder frozen,
    then poly) for any network the plans name, so that a benchmark's arms differ only in their plans."""

    warmup_fraction = 0.1


class nnUNetTrainerBenchmark_smoke(nnUNetTrainerBenchmark):
    schedule = SMOKE


class nnUNetTrainerBenchmark_cpu(nnUNetTrainerBenchmark):
    schedule = CPU


class nnUNetTrainerBenchmark_gpu15min(nnUNetTrainerBenchmark):
    schedule = GPU15MIN
