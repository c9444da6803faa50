"""Experiment planner writing ``nnUNetPlansXLSTM``: nnU-Net's ResEnc planning with XLSTMUNet as the network."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
)

from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet


class XLSTMUNetPlanner(ResEncUNetPlanner):
    """ResEnc-M planning (same 8 GB memory reference, blocks per stage and data-driven patch/spacing) for XLSTMUNet.

    The planner's memory estimate instantiates the XLSTMUNet with its mLSTM blocks, so ``compute_conv_feature_map_size``
    charges them and the patch/batch shrink accordingly. ``n_mlstm_stages`` counts from the bottleneck upwards.
    ``base_features`` / ``max_features`` narrow the network and ``batch_size`` fixes the batch (CPU presets; nnU-Net
    otherwise fills the memory target, capped at the data set's size).
    Its preprocessed data is stored under its own identifier (``nnUNetPlansXLSTM_3d_fullres``) because
    ``overwrite_target_spacing`` may make it differ from stock nnU-Net's.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansXLSTM",
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 n_mlstm_stages: int = 2, mlstm_blocks_per_stage: int = 2, base_features: int = 32,
                 max_features: int = 320, batch_size: int | None = None) -> None:
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

    def static_estimate_VRAM_usage(self, patch_size: Sequence[int], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Sequence[str]) -> np.int64:
        arch_kwargs = {**arch_kwargs, **self.mlstm_kwargs(arch_kwargs["n_stages"])}
        return ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                            arch_class_name, arch_kwargs, arch_kwargs_req_import)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        arch_kwargs = plan["architecture"]["arch_kwargs"]
        arch_kwargs.update(self.mlstm_kwargs(arch_kwargs["n_stages"]))
        if self.batch_size is not None:
            plan["batch_size"] = self.batch_size
        return plan
