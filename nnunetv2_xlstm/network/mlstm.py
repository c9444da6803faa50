"""Bidirectional mLSTM token mixing over a 2D/3D feature grid.

The mLSTM itself comes from the ``xlstm`` package (``xlstm.xlstm_large.model.mLSTMBlock``: pre-norm mLSTM layer and
gated feed-forward, each with a residual) and its kernels from ``mlstm_kernels``. This module only adds what a
segmentation network needs on top:

* the feature grid ``(B, C, *spatial)`` is flattened to a token sequence ``(B, S, C)``;
* block ``i`` scans the sequence forwards for even ``i`` and backwards for odd ``i`` (Vision-LSTM style), so two
  blocks give every voxel context from the whole grid;
* sequences are zero-padded at the *end of the scan* to a multiple of the chunk size; the mLSTM is causal, so padded
  tokens never influence real ones and are cropped afterwards;
* the kernel follows the device: Triton ``chunkwise--triton_xl_chunk`` on CUDA, ``chunkwise--native_custbw`` on CPU.

Precision under autocast: the q/k/v/gate projections and the feed-forward run in the autocast dtype (bf16); the
mLSTM kernels accumulate their chunk states (C, n, m) and the exponential-gate stabiliser in fp32, and the RMS and
multi-head layer norms reduce in fp32 (``norm_reduction_force_float32``) because exponential gating overflows bf16's
8-bit mantissa otherwise. On CPU the kernel runs in fp32 throughout (``autocast_kernel_dtype="float32"``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn
from xlstm.xlstm_large.model import mLSTMBlock, xLSTMLargeConfig
from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig

CUDA_KERNEL = "chunkwise--triton_xl_chunk"
CPU_KERNEL = "chunkwise--native_custbw"


def mlstm_kernel_for(device: torch.device | str) -> str:
    """The chunkwise mLSTM kernel used on ``device``: Triton on CUDA, native PyTorch elsewhere."""
    return CUDA_KERNEL if torch.device(device).type == "cuda" else CPU_KERNEL


def num_heads_for(channels: int, max_head_dim: int = 64, min_head_dim: int = 16) -> int:
    """Number of mLSTM heads for ``channels`` so that every head dim is a power of two.

    The value head dim is the largest power of two dividing ``channels``, capped at ``max_head_dim``; the q/k head
    dim is half of it (``qk_dim_factor=0.5``). The Triton kernel aborts the process for other head dims (e.g. 320
    channels with 4 heads gives 80), so we refuse rather than crash: 320 channels -> 5 heads of 64.
    """
    head_dim = min(channels & -channels, max_head_dim)  # largest power of two dividing channels
    if head_dim < min_head_dim:
        raise ValueError(
            f"mLSTM stage with {channels} channels: no power-of-two head dim >= {min_head_dim} divides it. "
            f"Use feature widths that are multiples of {min_head_dim} (e.g. the nnU-Net defaults 32, 64, ... 320)."
        )
    return channels // head_dim


class BidirectionalMLSTM(nn.Module):
    """``num_blocks`` mLSTM blocks over the flattened grid, alternating scan direction (even: forward, odd: backward).

    Input and output: ``(B, C, *spatial)``, any spatial size. No position embedding: the scan order is the only
    positional signal, so the module is independent of the patch size.
    """

    def __init__(self, channels: int, num_blocks: int = 2, chunk_size: int = 64, ffn_proj_factor: float = 2.0,
                 max_head_dim: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.chunk_size = chunk_size
        config = xLSTMLargeConfig(
            embedding_dim=channels, num_heads=num_heads_for(channels, max_head_dim), num_blocks=1, vocab_size=1,
            chunkwise_kernel=CPU_KERNEL, mode="train", chunk_size=chunk_size,
            # xlstm 2.0.6: return_last_states=False makes the layer unpack h as (h, state) -> shape assertion
            return_last_states=True, autocast_kernel_dtype="float32",
            ffn_proj_factor=ffn_proj_factor, ffn_round_up_to_multiple_of=16,
        )
        self.blocks = nn.ModuleList(mLSTMBlock(config) for _ in range(num_blocks))
        self._kernel = CPU_KERNEL

    @property
    def kernel(self) -> str:
        """The chunkwise kernel the blocks currently run."""
        return self._kernel

    def _use_kernel_for(self, device: torch.device) -> None:
        kernel = mlstm_kernel_for(device)
        if kernel == self._kernel:
            return
        dtype = "bfloat16" if device.type == "cuda" else "float32"
        for block in self.blocks:  # the backend holds no parameters, so swapping it leaves state_dict untouched
            layer = block.mlstm_layer
            cfg: mLSTMBackendConfig = replace(layer.config.mlstm_backend, chunkwise_kernel=kernel,
                                              autocast_kernel_dtype=dtype)
            layer.config.mlstm_backend = cfg
            layer.mlstm_backend = mLSTMBackend(cfg)
        self._kernel = kernel

    def reset_gates(self) -> None:
        """xLSTM gate initialisation: forget-gate biases spread over [3, 6] (long memory), input-gate bias ~N(0, 0.1)."""
        for block in self.blocks:
            layer = block.mlstm_layer
            with torch.no_grad():
                layer.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, layer.fgate_preact.bias.numel()))
                nn.init.normal_(layer.igate_preact.bias, mean=0.0, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._use_kernel_for(x.device)
        b, c, *spatial = x.shape
        n = int(np.prod(spatial))
        pad = -n % self.chunk_size
        tokens = x.flatten(2).transpose(1, 2)  # (B, S, C)
        for i, block in enumerate(self.blocks):
            seq = tokens.flip(1) if i % 2 else tokens
            if pad:  # pad at the end of the scan: causal, so real tokens never see the padding
                seq = nn.functional.pad(seq, (0, 0, 0, pad))
            out, _ = block(seq)
            out = out[:, :n]
            tokens = out.flip(1) if i % 2 else out
        return tokens.transpose(1, 2).reshape(b, c, *spatial).to(x.dtype)

    def compute_conv_feature_map_size(self, input_size: tuple[int, ...] | list[int]) -> np.int64:
        """Activations per sample stored for backward, in elements, as nnU-Net's planner counts conv feature maps.

        Per block and token: two RMS norms and two residual sums (4C), q and k (2 * C/2), v, output gate and
        normalised h (3C), and the feed-forward's gate, up and product (3 * ffn dim); plus the chunk states
        ``heads * d_qk * d_v`` per chunk. Padding tokens are counted, they are computed too.
        """
        tokens = int(np.prod(input_size))
        tokens += -tokens % self.chunk_size
        total = np.int64(0)
        for block in self.blocks:
            layer = block.mlstm_layer
            heads = layer.config.num_heads
            per_token = 4 * self.channels + 2 * layer.qk_dim + 3 * layer.v_dim + 3 * block.ffn.up_proj_dim
            states = (tokens // self.chunk_size) * heads * (layer.qk_dim // heads) * (layer.v_dim // heads)
            total += np.int64(tokens) * per_token + states
        return total
