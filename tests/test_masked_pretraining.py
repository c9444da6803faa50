"""Masked distillation pretraining: losses against reference formulas, the block mask, the collapse guards, the EMA
teacher and the export (predictors left behind, decoder loadable strictly)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_xlstm.checkpoints import load_encoder_into, load_exported_encoder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm_pretraining.config import load_config
from nnunetv2_xlstm_pretraining.distillation_loss import masked_distillation_loss, normalise_target
from nnunetv2_xlstm.ema import ema_update, teacher_momentum
from nnunetv2_xlstm_pretraining.guards import collapse_warnings, guard_metrics
from nnunetv2_xlstm_pretraining.masked import MaskedDistillationNet
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet, xlstm_unet_kwargs
from nnunetv2_xlstm_pretraining.reconstruction_loss import masked_reconstruction_loss
from nnunetv2_xlstm_pretraining.train import pretrain
from nnunetv2_xlstm_pretraining.views import MaskedViewDataset, block_mask, expand_mask, token_grid

from test_pretraining import smoke_config, sources  # noqa: F401  (fixture)


def test_distillation_loss_equals_reference_formula() -> None:
    rng = np.random.default_rng(0)
    b, c, n = 2, 4, 3
    pred, raw = rng.normal(size=(b, c, n, n, n)), rng.normal(2.0, 3.0, size=(b, c, n, n, n))
    mask = (rng.random((b, 1, n, n, n)) < 0.5).astype(float)
    # reference: instance norm by hand (biased variance, eps 1e-5), smooth-L1 with beta 2 by hand
    mean, var = raw.mean(axis=(2, 3, 4), keepdims=True), raw.var(axis=(2, 3, 4), keepdims=True)
    target = (raw - mean) / np.sqrt(var + 1e-5)
    diff = np.abs(pred - target)
    smooth = np.where(diff < 2.0, 0.5 * diff ** 2 / 2.0, diff - 1.0)
    expected = (smooth.sum(1, keepdims=True) / math.sqrt(c) * mask).sum() / mask.sum()
    normalised = normalise_target(torch.tensor(raw, dtype=torch.float32))
    assert normalised.numpy() == pytest.approx(target, abs=1e-4)
    got = masked_distillation_loss(torch.tensor(pred, dtype=torch.float32), normalised,
                                   torch.tensor(mask, dtype=torch.float32), beta=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    assert masked_distillation_loss(normalised, normalised, torch.ones(b, 1, n, n, n)).item() == 0.0


def test_reconstruction_loss_counts_masked_voxels_only() -> None:
    image = torch.zeros(1, 1, 2, 2, 2)
    recon = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[0, 0, 1] = 1  # voxels 4..7
    assert masked_reconstruction_loss(recon, image, mask).item() == pytest.approx((16 + 25 + 36 + 49) / 4)
    assert masked_reconstruction_loss(recon, image, torch.zeros_like(mask)).item() == 0.0


def test_block_mask_ratio_and_geometry() -> None:
    rng = np.random.default_rng(1)
    ratios = [block_mask([4, 4, 4], (0.6, 0.8), rng).mean() for _ in range(200)]
    assert 0.6 - 1 / 64 <= min(ratios) and max(ratios) <= 0.8 + 1 / 64 and np.mean(ratios) == pytest.approx(0.7, abs=0.02)
    assert block_mask([2, 2, 2], (0.99, 0.99), rng).sum() == 7  # never all cells: the student keeps some context
    mask = torch.from_numpy(block_mask([2, 2, 2], (0.5, 0.5), np.random.default_rng(2)))[None]
    voxels = expand_mask(mask, (8, 8, 8))
    assert voxels.shape == (1, 1, 8, 8, 8) and voxels.mean().item() == 0.5
    for z, y, x in np.ndindex(2, 2, 2):  # each cell is one 4^3 block of the crop
        block = voxels[0, 0, 4 * z:4 * z + 4, 4 * y:4 * y + 4, 4 * x:4 * x + 4]
        assert torch.all(block == float(mask[0, z, y, x]))


def test_masked_views_share_one_crop_and_are_seeded(sources) -> None:  # noqa: F811
    from nnunetv2_xlstm_pretraining.data import load_pool

    config = smoke_config(sources)
    dataset = MaskedViewDataset(load_pool(config, progress=False), config)
    views, masks, modalities = dataset[3]
    assert views.shape == (config.batch_size, 1, *config.global_crop_voxels)
    assert masks.shape == (config.batch_size, *token_grid(config)) and masks.dtype == torch.bool
    again = dataset[3]
    assert torch.equal(views, again[0]) and torch.equal(masks, again[1]) and modalities == again[2]
    assert not torch.equal(views, dataset[4][0])


def test_guards_catch_a_constructed_collapse() -> None:
    torch.manual_seed(0)
    healthy_t = normalise_target(torch.randn(4, 8, 4, 4, 4))
    healthy = guard_metrics([healthy_t], [torch.randn(4, 8, 4, 4, 4)])
    assert collapse_warnings(healthy) == [] and healthy["target_var_0"] == pytest.approx(1.0, abs=0.05)
    # the teacher maps every volume to the same pattern, and the student predicts a constant
    same = normalise_target(torch.randn(1, 8, 4, 4, 4)).repeat(4, 1, 1, 1, 1)
    collapsed = guard_metrics([same], [torch.full((4, 8, 4, 4, 4), 0.3)])
    warnings = collapse_warnings(collapsed)
    assert collapsed["cross_cosine_0"] == pytest.approx(1.0) and collapsed["prediction_var_0"] == 0.0
    assert any("same targets" in w for w in warnings) and any("predicts a constant" in w for w in warnings)
    # constant teacher features: instance norm gives zeros, variance 0
    dead = guard_metrics([normalise_target(torch.ones(2, 8, 4, 4, 4))], [torch.randn(2, 8, 4, 4, 4)])
    assert any("constant over space" in w for w in collapse_warnings(dead))


def test_momentum_rises_to_its_end_and_teacher_is_an_ema() -> None:
    assert teacher_momentum(0, 100, 0.996, 0.999) == pytest.approx(0.996)
    assert teacher_momentum(100, 100, 0.996, 0.999) == pytest.approx(0.999)
    assert teacher_momentum(50, 100, 0.996, 0.999) == pytest.approx(0.9975)
    config = load_config(preset="smoke")
    student = MaskedDistillationNet(xlstm_unet_kwargs(config.network), 2)
    teacher = MaskedDistillationNet(xlstm_unet_kwargs(config.network), 2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    name, param = next((n, p) for n, p in teacher.named_parameters() if "mlstm" in n)
    expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name]
    assert torch.allclose(param, expected)  # the mLSTM stages are part of the teacher


def test_collapse_stop_and_decoder_loading(tmp_path: Path, sources) -> None:  # noqa: F811
    result = pretrain(smoke_config(sources, steps=3), tmp_path / "run", progress=False)
    assert all(math.isfinite(v) for v in result["history"]["reconstruction"])
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_step*.pt")) == ["checkpoint_step3.pt"]
    weights, plan = load_exported_encoder(result["export"])
    arch = plan["architecture_plans"]["arch_kwargs"]
    net = build_xlstm_unet(arch, 1, 5)
    report = load_encoder_into(net, result["export"], arch, 1, decoder=True)
    assert any(k.startswith("decoder.stages") for k in report["loaded"])
    assert all(k.startswith("decoder.seg_layers") for k in report["fresh"])
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert torch.equal(state["decoder.encoder.stem.convs.0.conv.weight"], weights["encoder.stem.convs.0.conv.weight"])
    encoder_only = build_xlstm_unet(arch, 1, 5)
    decoder_before = encoder_only.state_dict()["decoder.stages.0.convs.0.conv.weight"].clone()
    load_encoder_into(encoder_only, result["export"], arch, 1)
    assert torch.equal(encoder_only.state_dict()["decoder.stages.0.convs.0.conv.weight"], decoder_before)
    # a decoder of other strides: refused, naming the keys, nothing loaded
    other = build_xlstm_unet({**arch, "strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2]]}, 1, 5)
    with pytest.raises(InputError, match="does not fit this network's encoder and decoder.*decoder.transpconvs"):
        load_encoder_into(other, result["export"], None, 1, decoder=True)
    dino = pretrain(smoke_config(sources, steps=1, objective="dino"), tmp_path / "dino", progress=False)
    with pytest.raises(InputError, match="holds no decoder"):
        load_encoder_into(build_xlstm_unet(arch, 1, 5), dino["export"], arch, 1, decoder=True)
    with pytest.raises(InputError, match="mask_ratio \\[0.5, 1.2\\] must be"):
        smoke_config(sources, mask_ratio="[0.5,1.2]")
