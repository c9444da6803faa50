"""XLSTMUNet and its bidirectional mLSTM mixer, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures import abstract_arch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnunetv2_xlstm.network import BidirectionalMLSTM, XLSTMUNet, mlstm_kernel_for, num_heads_for
from nnunetv2_xlstm.network.mlstm import CPU_KERNEL, CUDA_KERNEL


def unet_kwargs(dim: int = 3) -> dict:
    """ResidualEncoderUNet-style kwargs for a small 4-stage net (anisotropic first downsampling)."""
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    strides = [(1,) * dim, (1,) + (2,) * (dim - 1), (2,) * dim, (2,) * dim]
    return dict(input_channels=1, n_stages=4, features_per_stage=(16, 32, 64, 128), conv_op=conv, kernel_sizes=3,
                strides=strides, n_blocks_per_stage=(1, 1, 2, 2), num_classes=4, n_conv_per_stage_decoder=1,
                conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                nonlin_kwargs={"inplace": True})


def make_net(dim: int = 3, deep_supervision: bool = True, **kwargs) -> XLSTMUNet:
    net = XLSTMUNet(**{**unet_kwargs(dim), "deep_supervision": deep_supervision, **kwargs})
    net.apply(net.initialize)
    return net


@pytest.mark.parametrize("dim, size", [(3, (12, 40, 56)), (3, (4, 16, 24)), (2, (40, 56)), (2, (36, 24))])
def test_output_shapes_for_odd_sizes(dim: int, size: tuple[int, ...]) -> None:
    # sizes are divisible by the strides but give token counts that are no multiple of the chunk size (padding)
    net = make_net(dim, deep_supervision=False)
    out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 4, *size)
    assert torch.isfinite(out).all()


def test_deep_supervision_on_and_off() -> None:
    net = make_net(3, deep_supervision=True)
    x = torch.randn(1, 1, 8, 32, 32)
    outs = net(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert net(x).shape == (1, 4, 8, 32, 32)


def test_gradients_reach_every_mlstm_parameter() -> None:
    net = make_net(3, deep_supervision=False)
    net(torch.randn(2, 1, 8, 32, 32)).square().mean().backward()
    mlstm_params = {n: p for n, p in net.named_parameters() if ".mlstm." in n}
    assert len(mlstm_params) > 0 and set(net.encoder.mlstm_stages) == {2, 3}
    no_grad = [n for n, p in mlstm_params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_kernel_selection_per_device() -> None:
    assert mlstm_kernel_for("cpu") == CPU_KERNEL == "chunkwise--native_custbw"
    assert mlstm_kernel_for(torch.device("cuda", 0)) == CUDA_KERNEL == "chunkwise--triton_xl_chunk"
    mixer = BidirectionalMLSTM(32)
    mixer(torch.randn(1, 32, 4, 4, 4))
    backends = [b.mlstm_layer.mlstm_backend.config for b in mixer.blocks]
    assert mixer.kernel == CPU_KERNEL and all(c.chunkwise_kernel == CPU_KERNEL for c in backends)
    keys = set(mixer.state_dict())
    mixer._use_kernel_for(torch.device("cuda"))  # what a forward on a CUDA tensor does first
    backends = [b.mlstm_layer.mlstm_backend.config for b in mixer.blocks]
    assert all(c.chunkwise_kernel == CUDA_KERNEL and c.autocast_kernel_dtype == "bfloat16" for c in backends)
    assert set(mixer.state_dict()) == keys


def _token_influence(mixer: BidirectionalMLSTM, source: int, target: int) -> float:
    """How much output token ``target`` changes when input token ``source`` is perturbed (grid of 4x4x4 tokens)."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4, 4)
    y = x.clone().flatten(2)
    y[:, :, source] += 5.0
    with torch.no_grad():
        a, b = mixer(x).flatten(2), mixer(y.view_as(x)).flatten(2)
    return (a[:, :, target] - b[:, :, target]).abs().max().item()


def test_both_scan_directions_are_used() -> None:
    torch.manual_seed(0)
    mixer = BidirectionalMLSTM(32, num_blocks=2)
    mixer.reset_gates()
    assert _token_influence(mixer, source=63, target=0) > 1e-4  # needs the backward scan
    assert _token_influence(mixer, source=0, target=63) > 1e-4  # needs the forward scan
    forward_only = BidirectionalMLSTM(32, num_blocks=1)  # the check above is sensitive: one scan is causal
    forward_only.reset_gates()  # long-memory forget gates, as XLSTMUNet.initialize sets them
    assert _token_influence(forward_only, source=63, target=0) == 0.0
    assert _token_influence(forward_only, source=0, target=63) > 1e-4


def test_padding_to_the_chunk_size_does_not_change_the_result() -> None:
    torch.manual_seed(0)
    small, large = BidirectionalMLSTM(32, chunk_size=16), BidirectionalMLSTM(32, chunk_size=64)
    large.load_state_dict(small.state_dict())
    x = torch.randn(2, 32, 3, 5, 7)  # 105 tokens: padded to 112 and to 128
    with torch.no_grad():
        torch.testing.assert_close(small(x), large(x), rtol=1e-4, atol=1e-4)


def test_head_dims_are_powers_of_two() -> None:
    assert num_heads_for(320) == 5 and num_heads_for(256) == 4 and num_heads_for(32) == 1 and num_heads_for(48) == 3
    for channels in (16, 32, 48, 64, 96, 128, 160, 256, 320, 512):
        head_dim = channels // num_heads_for(channels)
        assert head_dim & (head_dim - 1) == 0 and (head_dim // 2) & (head_dim // 2 - 1) == 0
    with pytest.raises(ValueError, match="multiples of 16"):
        num_heads_for(24)


def test_bf16_autocast_matches_fp32_within_tolerance() -> None:
    torch.manual_seed(0)
    net = make_net(3, deep_supervision=False).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    assert not torch.equal(low, full)  # bf16 did run (8 bits of mantissa)
    error = (low - full).abs().max() / full.abs().max()
    assert torch.isfinite(low).all() and error < 0.05


def test_feature_map_size_counts_the_mlstm_and_matches_resenc_without_it() -> None:
    size = (8, 32, 32)
    with_mlstm = make_net(3, deep_supervision=False).compute_conv_feature_map_size(size)
    without = make_net(3, deep_supervision=False, mlstm_stages=()).compute_conv_feature_map_size(size)
    assert with_mlstm > without
    resenc = ResidualEncoderUNet(**unet_kwargs(3))
    assert without == resenc.compute_conv_feature_map_size(size)


def test_encoder_and_stem_keys_hand_over() -> None:
    net = make_net(3)
    abstract_arch.test_submodules_loadable(net)  # the DNA contract check (raises if a key is wrong)
    plain = make_net(3, mlstm_stages=())
    stock = ResidualEncoderUNet(**unet_kwargs(3))
    assert set(plain.state_dict()) == set(stock.state_dict())
    encoder = {k: v for k, v in net.state_dict().items() if k.startswith((net.key_to_encoder, net.key_to_stem))}
    assert any(".mlstm." in k for k in encoder)
    fresh = make_net(3)
    missing, unexpected = fresh.load_state_dict(encoder, strict=False)
    assert unexpected == [] and all(k.startswith("decoder.") for k in missing)


def test_state_dicts_saved_by_earlier_versions_load_and_give_the_same_output() -> None:
    # tests/data/xlstm_unet_reference.pt: a small XLSTMUNet's state dict, an input and its eval output, saved by the
    # implementation that predates the ResidualEncoderUNet subclass (checkpoints and exports of that time)
    ref = torch.load(Path(__file__).parent / "data" / "xlstm_unet_reference.pt", weights_only=True)
    net = XLSTMUNet(**{**unet_kwargs(3), "features_per_stage": (4, 8, 16, 16)}, mlstm_blocks_per_stage=1)
    assert isinstance(net, ResidualEncoderUNet)
    net.load_state_dict(ref["state_dict"], strict=True)
    net.eval()
    with torch.no_grad():
        out = net(ref["input"])
    torch.testing.assert_close(out, ref["output"], rtol=1e-5, atol=1e-5)


def test_dna_block_options_reach_the_encoder() -> None:
    from dynamic_network_architectures.building_blocks.residual import BottleneckD
    net = XLSTMUNet(**unet_kwargs(3), block=BottleneckD, bottleneck_channels=(4, 8, 16, 32), stem_channels=8)
    assert net.encoder.stem.output_channels == 8
    assert isinstance(net.encoder.stages[0].blocks[0], BottleneckD)
    assert net(torch.randn(1, 1, 4, 16, 16)).shape == (1, 4, 4, 16, 16)
