"""XLSTMUNet: a residual-encoder U-Net with bidirectional mLSTM blocks in its deeper encoder stages.

Free of nnU-Net imports: a subclass of dynamic-network-architectures' ``ResidualEncoderUNet`` that swaps only the
encoder stages that carry mLSTM blocks, so nnU-Net builds it from plans like any DNA network and the pretraining
module uses the same network on its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
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


def insert_mlstm_stages(encoder: ResidualEncoder, mlstm_stages: Sequence[int] | None, blocks_per_stage: int = 2,
                        chunk_size: int = 64, ffn_proj_factor: float = 2.0) -> tuple[int, ...]:
    """End the stages ``mlstm_stages`` of a DNA ``ResidualEncoder`` in bidirectional mLSTM blocks, in place.

    ``None`` gives :func:`default_mlstm_stages`; negative indices count from the bottleneck. Every other stage and
    the stem keep the residual encoder's modules and state-dict keys. Returns the sorted stage indices.
    """
    n_stages = len(encoder.stages)
    stages = default_mlstm_stages(n_stages) if mlstm_stages is None else tuple(mlstm_stages)
    if any(not -n_stages <= s < n_stages for s in stages):
        raise ValueError(f"mlstm_stages {stages} out of range for a {n_stages}-stage encoder")
    chosen = tuple(sorted({s % n_stages for s in stages}))
    for s in chosen:
        encoder.stages[s] = ConvMLSTMStage(
            encoder.stages[s], BidirectionalMLSTM(encoder.output_channels[s], blocks_per_stage, chunk_size,
                                                  ffn_proj_factor))
    return chosen


class XLSTMUNet(ResidualEncoderUNet):
    """dynamic-network-architectures' ``ResidualEncoderUNet`` whose stages ``mlstm_stages`` end in mLSTM blocks.

    Takes all of ``ResidualEncoderUNet``'s arguments (``block``, ``bottleneck_channels`` and ``stem_channels``
    included) plus the ``mlstm_*`` ones; only the encoder's stages differ, so forward, feature-map size and the
    encoder/stem keys are DNA's. ``mlstm_stages=()`` gives ``ResidualEncoderUNet`` itself (the ablation). Input
    ``(B, C_in, *patch)`` with ``patch`` divisible by the product of ``strides``; output ``(B, num_classes, *patch)``,
    or a list of deep-supervision outputs, full resolution first.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: int | Sequence[int],
                 conv_op: type[_ConvNd], kernel_sizes: int | Sequence, strides: int | Sequence,
                 n_blocks_per_stage: int | Sequence[int], num_classes: int,
                 n_conv_per_stage_decoder: int | Sequence[int], conv_bias: bool = False,
                 norm_op: type[nn.Module] | None = None, norm_op_kwargs: dict | None = None,
                 dropout_op: type[_DropoutNd] | None = None, dropout_op_kwargs: dict | None = None,
                 nonlin: type[nn.Module] | None = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, block: type[BasicBlockD] | type[BottleneckD] = BasicBlockD,
                 bottleneck_channels: int | Sequence[int] | None = None, stem_channels: int | None = None,
                 mlstm_stages: Sequence[int] | None = None, mlstm_blocks_per_stage: int = 2,
                 mlstm_chunk_size: int = 64, mlstm_ffn_proj_factor: float = 2.0) -> None:
        for name, value, n in (("n_blocks_per_stage", n_blocks_per_stage, n_stages),
                               ("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)):
            if not isinstance(value, int) and len(value) != n:
                raise ValueError(f"{name} needs {n} entries for {n_stages} stages, got {list(value)}")
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_blocks_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op,
                         norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision,
                         block, bottleneck_channels, stem_channels)
        # the decoder holds this same encoder, so it sees the swapped stages too
        self.encoder.mlstm_stages = insert_mlstm_stages(self.encoder, mlstm_stages, mlstm_blocks_per_stage,
                                                        mlstm_chunk_size, mlstm_ffn_proj_factor)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """Per-module init for ``net.apply``: DNA's residual-encoder init, then the xLSTM gate biases."""
        ResidualEncoderUNet.initialize(module)
        if isinstance(module, BidirectionalMLSTM):
            module.reset_gates()
