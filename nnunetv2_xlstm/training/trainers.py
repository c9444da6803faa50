"""Trainers for ``nnUNetPlansXLSTM``. Each subclass changes one thing."""

from __future__ import annotations

import os

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet


__all__ = ["nnUNetTrainerXLSTM", "nnUNetTrainerXLSTM_short", "nnUNetTrainerXLSTM_smoke"]


class nnUNetTrainerXLSTM(nnUNetTrainer):
    """nnU-Net's trainer, refusing plans that do not configure an XLSTMUNet.

    Without this check ``-tr nnUNetTrainerXLSTM -p nnUNetPlans`` would silently train stock nnU-Net's network.
    torch.compile stays off unless ``nnUNet_compile=1`` is set: it is untested with the Triton mLSTM kernels.
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

    def _do_i_compile(self) -> bool:
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t") and super()._do_i_compile()


class nnUNetTrainerXLSTM_short(nnUNetTrainerXLSTM):
    """A short CPU schedule: 16 epochs of 25 iterations (about 7 min on 2 cores at the demo's 48^3 patch).

    Short means AdamW (lr 1e-3, poly decay) instead of nnU-Net's SGD (lr 0.01, momentum 0.99): on the phantoms SGD
    still predicted only background and aorta after 225 iterations, where AdamW segments most structures within 60.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 16, 25, 3
        self.initial_lr = 1e-3

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
        optimizer = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerXLSTM_smoke(nnUNetTrainerXLSTM_short):
    """Smoke-test schedule: 2 epochs of 4 training and 2 validation iterations. Checks a pipeline, learns nothing."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 4, 2
