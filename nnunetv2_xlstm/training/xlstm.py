"""XLSTMUNet trainers: nnU-Net's training of our plans, and the matched from-scratch baseline of fine-tuning.

========================================  ======================================================================
``nnUNetTrainerXLSTM``                    nnU-Net's training (1000 epochs, SGD), XLSTMUNet plans only
``nnUNetTrainerXLSTMScratch``             the matched baseline of the pretrained trainers: the same plans, schedule
                                          and warm-up, random weights
``*_short`` / ``*_smoke``                 the :data:`SHORT` (CPU) / :data:`SMOKE` (tests) schedules
========================================  ======================================================================
"""

from __future__ import annotations

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet
from nnunetv2_xlstm.training.scheduled import ScheduledTrainer
from nnunetv2_xlstm.training.schedules import FINE_TUNING_WARMUP, SHORT, SMOKE

__all__ = ["nnUNetTrainerXLSTM", "nnUNetTrainerXLSTMScratch", "nnUNetTrainerXLSTMScratch_short",
           "nnUNetTrainerXLSTMScratch_smoke", "nnUNetTrainerXLSTM_short", "nnUNetTrainerXLSTM_smoke"]


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


class nnUNetTrainerXLSTMScratch(nnUNetTrainerXLSTM):
    """The matched from-scratch baseline of the pretrained trainers: the same schedule and warm-up (the randomly
    initialised encoder frozen while the lr warms up), random weights."""

    warmup_fraction = FINE_TUNING_WARMUP


class nnUNetTrainerXLSTMScratch_short(nnUNetTrainerXLSTMScratch):
    schedule = SHORT


class nnUNetTrainerXLSTMScratch_smoke(nnUNetTrainerXLSTMScratch):
    schedule = SMOKE
