"""XLSTMUNet: a residual-encoder U-Net with bidirectional mLSTM blocks in its deeper encoder stages.

Free of nnU-Net imports: it follows the dynamic-network-architectures contract (``encoder.output_channels``,
``encoder.strides``, ``encoder.conv_op``, ``encoder.kernel_sizes``, ``decoder.deep_supervision``, ``initialize``,
``compute_conv_feature_map_size``, ``key_to_encoder`` / ``key_to_stem``), so nnU-Net builds it from plans and the
pretraining module uses the same encoder on its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunetv2_xlstm.network.mlstm import BidirectionalMLSTM


def default_mlstm_stages(n_stages: int) -> tuple[int, ...]:
    """The default mLSTM placement: the deepest encoder stage before the bottleneck, and the bottleneck."""
    return tuple(range(max(n_stages - 2, 0), n_stages))


class ConvMLSTMStage(nn.Module):
    """One encoder stage: residual conv blocks (which do the stage's stride), then bidirectional mLSTM blocks."""

    def __init__(self, convs: StackedResidualBlocks, mlstm: BidirectionalMLSTM) -> None:
        super().__init__()
        self.convs = convs
        self.mlstm = mlstm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlstm(self.convs(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        output_size = [i // s for i, s in zip(input_size, self.convs.initial_stride)]
        return self.convs.compute_conv_feature_map_size(input_size) + self.mlstm.compute_conv_feature_map_size(
            output_size)


class XLSTMResidualEncoder(ResidualEncoder):
    """dynamic-network-architectures' ``ResidualEncoder`` whose stages ``mlstm_stages`` end in mLSTM blocks.

    Always returns the skips (U-Net use). Stage ``s`` of ``mlstm_stages`` becomes a :class:`ConvMLSTMStage`; every
    other stage and the stem are exactly the residual encoder's, so their state-dict keys match ``ResidualEncoderUNet``.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: Sequence[int], conv_op: type[_ConvNd],
                 kernel_sizes: int | Sequence, strides: int | Sequence, n_blocks_per_stage: int | Sequence[int],
                 conv_bias: bool = False, norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[_DropoutNd] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 mlstm_stages: Sequence[int] | None = None, mlstm_blocks_per_stage: int = 2,
                 mlstm_chunk_size: int = 64, mlstm_ffn_proj_factor: float = 2.0) -> None:
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_blocks_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                         nonlin, nonlin_kwargs, return_skips=True)
        stages = default_mlstm_stages(n_stages) if mlstm_stages is None else mlstm_stages
        self.mlstm_stages = tuple(sorted({s % n_stages for s in stages}))
        if any(not -n_stages <= s < n_stages for s in stages):
            raise ValueError(f"mlstm_stages {tuple(stages)} out of range for a {n_stages}-stage encoder")
        for s in self.mlstm_stages:
            self.stages[s] = ConvMLSTMStage(
                self.stages[s],
                BidirectionalMLSTM(self.output_channels[s], mlstm_blocks_per_stage, mlstm_chunk_size,
                                   mlstm_ffn_proj_factor))


class XLSTMUNet(AbstractDynamicNetworkArchitectures):
    """Residual-encoder U-Net with bidirectional mLSTM blocks at ``mlstm_stages`` (default: the two deepest).

    Takes ``ResidualEncoderUNet``'s arguments plus the ``mlstm_*`` ones; ``mlstm_stages=()`` gives the identical
    network without mLSTM (the ablation). Input ``(B, C_in, *patch)`` with ``patch`` divisible by the product of
    ``strides``; output ``(B, num_classes, *patch)``, or a list of deep-supervision outputs, full resolution first.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: int | Sequence[int],
                 conv_op: type[_ConvNd], kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_blocks_per_stage: int | Sequence[int], num_classes: int,
                 n_conv_per_stage_decoder: int | Sequence[int], conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[_DropoutNd] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, mlstm_stages: Sequence[int] | None = None,
                 mlstm_blocks_per_stage: int = 2, mlstm_chunk_size: int = 64,
                 mlstm_ffn_proj_factor: float = 2.0) -> None:
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
        if isinstance(features_per_stage, int):
            features_per_stage = [features_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if len(n_conv_per_stage_decoder) != n_stages - 1:
            raise ValueError(f"n_conv_per_stage_decoder needs {n_stages - 1} entries, got {n_conv_per_stage_decoder}")
        self.encoder = XLSTMResidualEncoder(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_blocks_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
            mlstm_stages, mlstm_blocks_per_stage, mlstm_chunk_size, mlstm_ffn_proj_factor)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Stored activations per sample (elements), conv feature maps and mLSTM blocks together."""
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(f"input_size must be the spatial size only, e.g. (x, y, z); got {tuple(input_size)}")
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """Per-module init for ``net.apply``: He for convs, zeroed last norm per residual block, xLSTM gate biases."""
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
        if isinstance(module, BidirectionalMLSTM):
            module.reset_gates()
