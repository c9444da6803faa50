"""Experiment planner writing ``nnUNetPlansXLSTM``: nnU-Net's ResEnc planning with XLSTMUNet as the network."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2 import paths
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
)

from nnunetv2_xlstm.atomic import atomic_copy
from nnunetv2_xlstm.checkpoints import ENCODER_ARCH_KEYS, file_sha256, load_exported_encoder
from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet

DEFAULT_PLANS_NAME = "nnUNetPlansXLSTM"
ENCODER_PLANS_NAME = "nnUNetPlansXLSTMEncoder"


class XLSTMUNetPlanner(ResEncUNetPlanner):
    """ResEnc-M planning (same 8 GB memory reference, blocks per stage and data-driven patch/spacing) for XLSTMUNet.

    The planner's memory estimate instantiates the XLSTMUNet with its mLSTM blocks, so ``compute_conv_feature_map_size``
    charges them and the patch/batch shrink accordingly. ``n_mlstm_stages`` counts from the bottleneck upwards.
    ``base_features`` / ``max_features`` narrow the network and ``batch_size`` fixes the batch (CPU presets; nnU-Net
    otherwise fills the memory target, capped at the data set's size).
    Its preprocessed data is stored under its own identifier (``nnUNetPlansXLSTM_3d_fullres``) because
    ``overwrite_target_spacing`` may make it differ from stock nnU-Net's.

    With ``pretrained_encoder`` (an ``encoder_export.pt``) the 3D networks copy the encoder's architecture (stages,
    widths, kernel sizes, blocks, mLSTM placement; see :meth:`match_encoder`). An encoder pretrained in a plans'
    geometry (``--plans``) also gives the 3d_fullres spacing, patch size, strides and decoder, so that its encoder
    and decoder load strictly; an isotropic one leaves spacing, patch size and strides data-driven. The plans
    (default name ``nnUNetPlansXLSTMEncoder``) record the encoder, which is copied beside them for
    ``nnUNetTrainerXLSTMPretrained``. The width options do not apply then.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 n_mlstm_stages: int = 2, mlstm_blocks_per_stage: int = 2, base_features: int = 32,
                 max_features: int = 320, batch_size: int | None = None,
                 pretrained_encoder: str | Path | None = None) -> None:
        self.pretrained_encoder = Path(pretrained_encoder) if pretrained_encoder is not None else None
        self.encoder_plan = load_exported_encoder(pretrained_encoder)[1] if pretrained_encoder is not None else None
        if plans_name is None:
            plans_name = ENCODER_PLANS_NAME if pretrained_encoder is not None else DEFAULT_PLANS_NAME
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_class = XLSTMUNet
        self.UNet_vram_target_GB = gpu_memory_target_in_gb
        self.UNet_reference_val_corresp_GB = 8
        self.max_dataset_covered = 1
        self.UNet_base_num_features = base_features
        self.UNet_max_features_3d = max_features
        self.UNet_max_features_2d = 512 if max_features >= 320 else max_features  # nnU-Net's 2D default is 512
        self.n_mlstm_stages = n_mlstm_stages
        self.mlstm_blocks_per_stage = mlstm_blocks_per_stage
        self.batch_size = batch_size

    def generate_data_identifier(self, configuration_name: str) -> str:
        return self.plans_identifier + "_" + configuration_name

    def mlstm_kwargs(self, n_stages: int) -> dict:
        """The XLSTMUNet kwargs this planner adds to ResEnc's for an ``n_stages`` network."""
        return {"mlstm_stages": list(range(max(n_stages - self.n_mlstm_stages, 0), n_stages)),
                "mlstm_blocks_per_stage": self.mlstm_blocks_per_stage}

    def match_encoder(self, arch_kwargs: dict, geometry: bool = True) -> dict:
        """``arch_kwargs`` with the pretrained encoder's architecture, or with this planner's mLSTM kwargs if none.

        From the encoder: every key that shapes its weights (:data:`ENCODER_ARCH_KEYS`, e.g. 3x3x3 kernels where
        nnU-Net would plan 1x3x3 ones for anisotropic data). Strides stay planned (they shape no weight): nnU-Net's,
        cut to the encoder's stage count, or padded with stride-1 stages where nnU-Net planned fewer. 2D networks
        cannot take a 3D encoder and keep their plan.
        """
        if self.encoder_plan is None or len(arch_kwargs["strides"][0]) != 3:
            return {**arch_kwargs, **self.mlstm_kwargs(arch_kwargs["n_stages"])}
        encoder = self.encoder_plan["architecture_plans"]["arch_kwargs"]
        if geometry and encoder_geometry(self.encoder_plan) is not None:  # pretrained in a plans' geometry: all of it
            return dict(encoder)
        n = encoder["n_stages"]
        strides = [list(s) for s in arch_kwargs["strides"]][:n]
        strides += [[1, 1, 1]] * (n - len(strides))
        decoder_convs = list(arch_kwargs["n_conv_per_stage_decoder"])
        return {**arch_kwargs, **{k: encoder[k] for k in ENCODER_ARCH_KEYS if k in encoder}, "strides": strides,
                "n_conv_per_stage_decoder": (decoder_convs + decoder_convs[-1:] * n)[:n - 1]}

    def static_estimate_VRAM_usage(self, patch_size: Sequence[int], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Sequence[str]) -> np.int64:
        arch_kwargs = self.match_encoder(arch_kwargs)
        return ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                            arch_class_name, arch_kwargs, arch_kwargs_req_import)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        geometry = encoder_geometry(self.encoder_plan) if self.encoder_plan is not None else None
        if geometry is not None and len(spacing) == 3 and not np.allclose(spacing, geometry["spacing"]):
            geometry = None  # another resolution (3d_lowres): strides and patch stay planned, weights' shapes follow
        plan["architecture"]["arch_kwargs"] = self.match_encoder(plan["architecture"]["arch_kwargs"],
                                                                 geometry is not None)
        if geometry is not None:
            plan["patch_size"] = list(geometry["patch_size"])
        if self.batch_size is not None:
            plan["batch_size"] = self.batch_size
        return plan

    def save_plans(self, plans: dict) -> None:
        """With a pretrained encoder: copy it beside the plans (atomically), record it, and warn where the target
        data's spacing or normalisation differ from pretraining's."""
        if self.pretrained_encoder is not None:
            folder = Path(paths.nnUNet_preprocessed) / self.dataset_name  # where nnU-Net saves the plans
            for warning in attach_encoder(plans, self.pretrained_encoder, self.encoder_plan, folder):
                print(f"WARNING: {warning}")
        super().save_plans(plans)


def encoder_geometry(encoder_plan: dict) -> dict | None:
    """The plans geometry an encoder was pretrained in (spacing, patch size, strides in its architecture), or None
    for an isotropic pretraining (see ``nnunetv2_xlstm_pretraining.geometry``)."""
    return (encoder_plan.get("pretrain_plan") or {}).get("geometry")


def attach_encoder(plans: dict, encoder: Path, encoder_plan: dict, folder: Path) -> list[str]:
    """Copy ``encoder`` (atomically) beside the plans in ``folder`` as ``<plans_name>_encoder.pt`` and record it
    (file, SHA-256, source) in ``plans["pretrained_encoder"]``; return :func:`encoder_plan_warnings`."""
    target = atomic_copy(encoder, folder / f"{plans['plans_name']}_encoder.pt")
    plans["pretrained_encoder"] = {"file": target.name, "sha256": file_sha256(target),
                                   "source": str(Path(encoder).resolve())}
    return encoder_plan_warnings(plans, encoder_plan)


def encoder_plan_warnings(plans: dict, encoder_plan: dict, tolerance: float = 1.25) -> list[str]:
    """Where the plans' 3D configurations differ from the encoder's pretraining: spacing (any axis off by more than
    ``tolerance`` times) and normalisation (a scheme pretraining did not use for that modality)."""
    pretrain = encoder_plan["pretrain_plan"]
    spacing, modalities = pretrain["target_spacing"], set(pretrain["modalities"])
    out = []
    for name, config in plans["configurations"].items():
        if len(config.get("spacing", ())) != 3:
            continue
        ratios = [a / b for a, b in zip(config["spacing"], spacing)]
        if any(r > tolerance or r < 1 / tolerance for r in ratios):
            out.append(f"{name}: target spacing {[round(float(s), 3) for s in config['spacing']]} mm differs from the "
                       f"encoder's pretraining spacing {spacing} mm; its filters saw structures at another scale")
        for scheme in config.get("normalization_schemes", []):
            expected = {"CTNormalization": "CT", "ZScoreNormalization": "MRI"}.get(scheme)
            if expected is None or expected not in modalities:
                out.append(f"{name}: normalisation {scheme} was not used in pretraining (modalities "
                           f"{sorted(modalities)}: CT in HU -> CTNormalization, MRI -> ZScoreNormalization)")
    return out
