"""The geometry pretraining works in: an nnU-Net plans file's (the fine-tuning geometry), or the isotropic presets'.

With ``plans`` set in the config, pretraining takes from the plans' configuration (``plans_configuration``, default
``3d_fullres``) everything fine-tuning will use: the XLSTMUNet's full architecture (widths, blocks, per-stage strides
and kernel sizes, mLSTM placement, decoder), the target spacing, the patch size (the crop) and the axis order
(``transpose_forward``). Volumes are resampled with the configuration's own resampling function (nnU-Net's
preprocessing), so the encoder's filters and the decoder's transposed convolutions meet the grid they are fine-tuned
on, and the export loads strictly, encoder and decoder, into the trainers of those plans.

Without ``plans``, ``network``, ``target_spacing`` and ``global_crop_*`` describe an isotropic encoder: for CT/MRI
pools with no target data set yet (planning then follows the encoder: ``--pretrained_encoder``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm_pretraining.model import ARCH_CLASS_NAME, xlstm_unet_kwargs

XLSTM_CLASS = ARCH_CLASS_NAME.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class PlansGeometry:
    """One configuration of an nnU-Net plans file, checked: an XLSTMUNet on a 3D grid."""

    file: Path
    configuration: str

    @cached_property
    def plans(self) -> dict:
        try:
            plans = json.loads(self.file.read_text())
        except FileNotFoundError:
            raise InputError(f"plans file {self.file} does not exist: plan the target data set first "
                             f"(nnunetv2_xlstm_plan_and_preprocess) and give its plans JSON, e.g. "
                             f"$nnUNet_preprocessed/Dataset801_ACDC/nnUNetPlansXLSTM.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"plans file {self.file} is not JSON ({e}); give nnU-Net's plans JSON") from None
        if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
            raise InputError(f"{self.file} is not an nnU-Net plans file (no 'configurations')")
        configuration = plans["configurations"].get(self.configuration)
        if configuration is None:
            raise InputError(f"{self.file} has no configuration {self.configuration!r}; set plans_configuration to one "
                             f"of {', '.join(plans['configurations'])}")
        arch = configuration.get("architecture", {})
        if str(arch.get("network_class_name", "")).rsplit(".", 1)[-1] != XLSTM_CLASS:
            raise InputError(f"{self.file} configures {arch.get('network_class_name')!r} for {self.configuration}, "
                             f"not {XLSTM_CLASS}: pretrain with XLSTMUNet plans (nnunetv2_xlstm_plan_and_preprocess)")
        if len(configuration.get("patch_size", ())) != 3:
            raise InputError(f"{self.file}: configuration {self.configuration} is not 3D; pretraining needs a 3D one "
                             f"(3d_fullres)")
        return plans

    @property
    def config(self) -> dict:
        return self.plans["configurations"][self.configuration]

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in self.config["spacing"]]

    @property
    def patch_size(self) -> list[int]:
        return [int(p) for p in self.config["patch_size"]]

    @property
    def transpose_forward(self) -> list[int]:
        return list(self.plans.get("transpose_forward", [0, 1, 2]))

    @property
    def arch_kwargs(self) -> dict:
        return dict(self.config["architecture"]["arch_kwargs"])

    def record(self) -> dict:
        """What the adaptation plan keeps of the plans: enough to plan a new data set like them and to check them."""
        return {"plans_file": str(self.file.resolve()), "plans_name": self.plans.get("plans_name"),
                "dataset_name": self.plans.get("dataset_name"), "configuration": self.configuration,
                "sha256": hashlib.sha256(self.file.read_bytes()).hexdigest(), "spacing": self.spacing,
                "patch_size": self.patch_size, "transpose_forward": self.transpose_forward}

    def resampler(self):
        """nnU-Net's resampling function of the configuration: ``fn(data (C, *shape), new_shape, old, new)``."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans).get_configuration(self.configuration).resampling_fn_data


def plans_geometry(config) -> PlansGeometry | None:
    """The config's plans geometry (checked), or None for the isotropic one."""
    return PlansGeometry(Path(config.plans), config.plans_configuration) if config.plans else None


def architecture(config) -> dict:
    """XLSTMUNet kwargs (plans style): the plans configuration's, or the isotropic ``network`` section's."""
    geometry = plans_geometry(config)
    return geometry.arch_kwargs if geometry is not None else xlstm_unet_kwargs(config.network)


def total_strides(arch_kwargs: dict) -> list[int]:
    """The encoder's total stride per axis (the product of the stages' strides)."""
    strides = [[s] * 3 if isinstance(s, int) else list(s) for s in arch_kwargs["strides"]]
    return [int(v) for v in np.prod(np.asarray(strides), axis=0)]
