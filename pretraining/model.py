"""Student/teacher network: the XLSTMUNet encoder (exactly the class and kwargs fine-tuning builds) + a DINO head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet
from nnunetv2_xlstm_pretraining.config import NetworkConfig

ARCH_CLASS_NAME = f"{XLSTMUNet.__module__}.{XLSTMUNet.__name__}"
ARCH_KWARGS_REQUIRING_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def xlstm_unet_kwargs(network: NetworkConfig) -> dict:
    """XLSTMUNet kwargs (nnU-Net plans style: ops as import strings) for a 3D network described by ``network``."""
    n = len(network.features_per_stage)
    if not len(network.strides) == len(network.n_blocks_per_stage) == n:
        raise ValueError(f"network: features_per_stage, strides and n_blocks_per_stage need the same length ({n})")
    return {
        "n_stages": n, "features_per_stage": list(network.features_per_stage),
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[network.kernel_size] * 3] * n,
        "strides": [[s] * 3 for s in network.strides], "n_blocks_per_stage": list(network.n_blocks_per_stage),
        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        "mlstm_stages": network.mlstm_stages if network.mlstm_stages is not None else [n - 2, n - 1],
        "mlstm_blocks_per_stage": network.mlstm_blocks_per_stage,
    }


def build_xlstm_unet(arch_kwargs: dict, input_channels: int = 1, num_classes: int = 1) -> XLSTMUNet:
    """Instantiate and initialise an XLSTMUNet from plans-style kwargs (import strings resolved)."""
    import pydoc

    kwargs = {k: (pydoc.locate(v) if k in ARCH_KWARGS_REQUIRING_IMPORT and v is not None else v)
              for k, v in arch_kwargs.items()}
    net = XLSTMUNet(input_channels=input_channels, num_classes=num_classes, **kwargs)
    net.apply(net.initialize)
    return net


class DINOHead(nn.Module):
    """DINO projection head over a bottleneck token grid, with BatchNorm (DINO's ``use_bn_in_head``, as for ResNets).

    Tokens ``(N, T, C)`` are projected one by one (Linear + GELU) and averaged. The XLSTMUNet encoder is
    instance-normalised, so its pooled features are nearly equal for all crops (cosine ~0.9 at init); without batch
    normalisation in the head the teacher collapsed to a uniform output within 60 steps in our real CPU runs, with EMA
    and with Sinkhorn-Knopp centring alike. Then: MLP (Linear, BN, GELU) to a bottleneck, L2 normalisation, and a
    weight-normalised linear layer with unit-norm rows (``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.token_proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU())
        self.mlp = nn.Sequential(nn.BatchNorm1d(hidden_dim), nn.Linear(hidden_dim, hidden_dim),
                                 nn.BatchNorm1d(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in [*self.token_proj, *self.mlp]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_weight = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_weight, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, T, C)`` tokens -> ``(N, hidden)`` embedding (projected, then averaged)."""
        return self.token_proj(tokens).mean(dim=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits of embeddings ``(..., hidden)`` (pooled ones, or projected tokens for iBOT)."""
        x = F.normalize(self.mlp(embedding.flatten(0, -2)), dim=-1).unflatten(0, embedding.shape[:-1])
        return F.linear(x, F.normalize(self.last_weight, dim=-1))


class StudentTeacherNet(nn.Module):
    """Encoder + head. ``forward(*view_groups)`` takes batches of equal-size views (e.g. globals, then locals) and
    returns ``(logits (N, out_dim), embeddings (N, hidden))`` for all views concatenated in the given order."""

    def __init__(self, arch_kwargs: dict, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.encoder = build_xlstm_unet(arch_kwargs).encoder
        self.head = DINOHead(self.encoder.output_channels[-1], out_dim, hidden_dim, bottleneck_dim)

    def forward(self, *view_groups: torch.Tensor, tokens: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and pooled embeddings of all views; with ``tokens``, also the head's logits for every bottleneck
        token of the first group, ``(N, T, out_dim)`` (iBOT)."""
        grids = [self.encoder(v)[-1].float().flatten(2).transpose(1, 2) for v in view_groups if len(v)]
        emb = torch.cat([self.head.embed(g) for g in grids])
        if not tokens:
            return self.head(emb), emb
        return self.head(emb), emb, self.head(self.head.token_proj(grids[0]))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under XLSTMUNet's key names (``encoder.stem.*``, ``encoder.stages.*``)."""
        return {f"encoder.{k}": v.detach() for k, v in self.encoder.state_dict().items()}
