"""The standalone pretraining module: loss, EMA, crops, normalisation, sampling, config, resume, DDP, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_xlstm.checkpoints import load_exported_encoder, safe_load
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm_pretraining import data as D
from nnunetv2_xlstm_pretraining.cli import parse_source, pretrain_entry
from nnunetv2_xlstm_pretraining.config import PretrainConfig, SourceConfig, load_config
from nnunetv2_xlstm.ema import ema_update, teacher_momentum
from nnunetv2_xlstm_pretraining.ibot_loss import IBOTPatchLoss
from nnunetv2_xlstm_pretraining.koleo_loss import koleo_loss
from nnunetv2_xlstm_pretraining.loss import DINOLoss, sinkhorn_knopp
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.train import pretrain
from nnunetv2_xlstm_pretraining.views import MultiCropDataset, token_grid


# ---------------------------------------------------------------------------------------------- synthetic sources
def write_volume(path: Path, array: np.ndarray, spacing: float = 2.0) -> Path:
    img = sitk.GetImageFromArray(array.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def body_phantom(rng: np.random.Generator, modality: str, shape=(28, 28, 28)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y ** 2 + x ** 2) < 0.8
    blob = ((z - rng.uniform(-.3, .3)) ** 2 + (y - rng.uniform(-.3, .3)) ** 2 + x ** 2) < 0.1
    if modality == "CT":
        img = np.where(body, 40.0, -1000.0) + np.where(blob, 300.0, 0.0)
        return img + rng.normal(0, 10, shape)
    return np.where(body, 300.0, 5.0) + np.where(blob, 600.0, 0.0) + rng.normal(0, 10, shape)


@pytest.fixture
def sources(tmp_path: Path) -> list[SourceConfig]:
    rng = np.random.default_rng(0)
    for i in range(3):
        write_volume(tmp_path / "ct" / f"ct{i}.nii.gz", body_phantom(rng, "CT"))
        write_volume(tmp_path / "mri" / f"mr{i}.nii.gz", body_phantom(rng, "MRI"))
    return [SourceConfig(str(tmp_path / "ct"), "CT"), SourceConfig(str(tmp_path / "mri"), "MRI")]


def smoke_config(sources: list[SourceConfig], **overrides) -> PretrainConfig:
    config = load_config(preset="smoke", overrides=[f"{k}={v}" for k, v in overrides.items()])
    config.sources = sources
    config.device = "cpu"
    return config


# ---------------------------------------------------------------------------------------------- loss, centre, EMA
def test_dino_loss_equals_reference_formula() -> None:
    torch.manual_seed(0)
    batch, dim, n_views = 3, 16, 4
    student, teacher = torch.randn(n_views * batch, dim), torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, teacher_temp=0.05, student_temp=0.2, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, dim))
    c = loss_fn.center.numpy().copy()
    s, t = student.double().numpy(), teacher.double().numpy()

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    expected, terms = 0.0, 0
    for iq in range(2):
        q = softmax((t[iq * batch:(iq + 1) * batch] - c) / 0.05)
        for v in range(n_views):
            if v == iq:
                continue
            log_p = np.log(softmax(s[v * batch:(v + 1) * batch] / 0.2))
            expected += np.mean(np.sum(-q * log_p, axis=-1))
            terms += 1
    loss = loss_fn(student, teacher, step=0)
    assert terms == 6 and math.isclose(loss.item(), expected / terms, rel_tol=1e-5)
    # the centre moved to 0.9 * old + 0.1 * batch mean of the teacher output
    np.testing.assert_allclose(loss_fn.center.numpy(), 0.9 * c + 0.1 * t.mean(0, keepdims=True), rtol=1e-5)


def test_ibot_loss_equals_reference_formula() -> None:
    torch.manual_seed(1)
    n, t, d = 3, 8, 10
    student, teacher = torch.randn(n, t, d), torch.randn(n, t, d)
    masks = torch.rand(n, t) < 0.4
    loss_fn = IBOTPatchLoss(d, teacher_temp=0.05, student_temp=0.2, center_momentum=0.8)
    loss_fn.center.copy_(torch.randn(1, 1, d))
    c = loss_fn.center.double().numpy().copy()
    s, te, m = student.double().numpy(), teacher.double().numpy(), masks.numpy()
    q = np.exp((te - c) / 0.05 - ((te - c) / 0.05).max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    z = s / 0.2
    log_p = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    expected = (-(q * log_p).sum(-1) * m).sum() / m.sum()
    assert math.isclose(loss_fn(student, teacher, masks).item(), expected, rel_tol=1e-5)
    np.testing.assert_allclose(loss_fn.center.numpy(), 0.8 * c + 0.2 * te.mean((0, 1), keepdims=True), rtol=1e-5)


def test_koleo_loss_equals_reference_formula() -> None:
    torch.manual_seed(2)
    x = torch.randn(6, 5)
    a = x.double().numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    dist = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.diag([np.inf] * 6)
    assert math.isclose(koleo_loss(x).item(), -np.mean(np.log(dist.min(axis=1))), rel_tol=1e-5)
    # spreading two near-duplicates lowers it
    close = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    spread = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert koleo_loss(spread) < koleo_loss(close)


def test_koleo_run(tmp_path: Path, sources: list[SourceConfig]) -> None:
    plain = pretrain(smoke_config(sources, steps=2, objective="dino"), tmp_path / "plain", progress=False)
    koleo = pretrain(smoke_config(sources, steps=2, koleo_weight=0.5, objective="dino"), tmp_path / "koleo",
                     progress=False)
    assert plain["history"]["kl"][0] == koleo["history"]["kl"][0]  # same first batch and weights
    assert plain["history"]["loss"][0] != koleo["history"]["loss"][0]  # the regulariser is in the loss


def test_ibot_run(tmp_path: Path, sources: list[SourceConfig]) -> None:
    config = smoke_config(sources, ibot="true", ibot_mask_ratio=0.5, steps=3, objective="dino")
    result = pretrain(config, tmp_path / "run", progress=False)
    assert all(math.isfinite(v) for v in result["history"]["loss"])
    assert safe_load(tmp_path / "run" / "checkpoint_latest.pt")["ibot_center"].abs().sum() > 0
    # the iBOT term is in the loss: the same run without it has other losses from the first step
    plain = pretrain(smoke_config(sources, steps=1, objective="dino"), tmp_path / "plain", progress=False)
    assert plain["history"]["loss"][0] != pytest.approx(result["history"]["loss"][0])
    # token masks: about half of the global views masked at the ratio, the rest untouched
    masks = MultiCropDataset(D.load_pool(config, progress=False), config)[0][2]
    per_view = masks.flatten(0, 1).sum(-1)
    n_tokens = masks.shape[-1]
    assert set(per_view.tolist()) <= {0, max(1, round(0.5 * n_tokens))}


def test_sinkhorn_knopp_balances_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 12)
    q = sinkhorn_knopp(logits, temp=0.1, iterations=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6))  # a distribution per sample
    torch.testing.assert_close(q.sum(dim=0), torch.full((12,), 6 / 12), rtol=1e-3, atol=1e-3)  # prototypes shared
    loss_fn = DINOLoss(12, teacher_temp=0.1, centering="sinkhorn")
    torch.testing.assert_close(loss_fn.teacher_probs(logits, 0), sinkhorn_knopp(logits, 0.1))


def test_teacher_temperature_warmup() -> None:
    loss_fn = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=10)
    assert loss_fn.teacher_temp_at(0) == 0.04 and math.isclose(loss_fn.teacher_temp_at(5), 0.055)
    assert loss_fn.teacher_temp_at(10) == loss_fn.teacher_temp_at(99) == 0.07


def test_teacher_momentum_schedule_and_ema_update() -> None:
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    values = [teacher_momentum(s, 100, 0.99) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    s0, t0 = student.weight.detach().clone(), teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * t0 + 0.1 * s0)
    torch.testing.assert_close(student.weight, s0)


# ---------------------------------------------------------------------------------------------- data
def test_crop_geometry_physical_size_and_inside(sources: list[SourceConfig]) -> None:
    config = smoke_config(sources)
    pool = D.load_pool(config, progress=False)
    rng = np.random.default_rng(0)
    spacing = np.asarray(config.target_spacing)
    crop_mm = np.asarray([40.0, 40.0, 40.0])
    for _ in range(200):
        volume = pool[rng.integers(len(pool))]
        anchor = D.sample_anchor(volume, rng, 0.9)
        start, size = D.sample_crop_box(volume, rng, crop_mm, (0.25, 0.5), spacing, anchor, 10.0)
        physical = size * spacing
        assert np.all(physical >= 0.25 * 40 - spacing) and np.all(physical <= 0.5 * 40 + spacing)
        assert len(set(size)) == 1  # isotropic
        assert np.all(start >= 0) and np.all(start + size <= volume.image.shape)
        centre, shape = start + size / 2, np.asarray(volume.image.shape)
        clamped = (start == 0) | (start + size == shape)  # pushed inside at a border
        assert np.all(clamped | (np.abs(centre - anchor) * spacing <= 10.0 + spacing))
    big = np.asarray([500.0] * 3)  # larger than the volume: clamped to it
    start, size = D.sample_crop_box(pool[0], rng, big, (1.0, 1.0), spacing, np.zeros(3), 0.0)
    assert np.array_equal(size, pool[0].image.shape) and not start.any()


def test_normalisation_per_modality(tmp_path: Path, sources: list[SourceConfig]) -> None:
    rng = np.random.default_rng(1)
    hu = body_phantom(rng, "CT")
    assert D.looks_like_hu(hu)
    assert not D.looks_like_hu((hu + 1000) / 3000 * 255)  # 8-bit windowed CT
    assert not D.looks_like_hu((hu - hu.mean()) / hu.std())  # already normalised CT
    stats = D.ct_statistics([hu])
    fg = hu[hu > -500]
    assert stats.lower == pytest.approx(np.percentile(fg, 0.5)) and stats.upper == pytest.approx(np.percentile(fg, 99.5))
    clipped = np.clip(hu, stats.lower, stats.upper)
    np.testing.assert_allclose(D.normalise_ct(hu, stats), (clipped - stats.mean) / stats.std, rtol=1e-5, atol=1e-5)
    z = D.zscore(hu)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    # a CT source that is not in HU is z-scored per volume, auto-detected or declared
    write_volume(tmp_path / "ct8bit" / "a.nii.gz", (hu + 1000) / 3000 * 255)
    for hu_flag in ("auto", False):
        config = smoke_config([SourceConfig(str(tmp_path / "ct8bit"), "CT", hu_flag), *sources])
        pool = D.load_pool(config, progress=False)
        norms = {Path(v.path).parent.name: v.normalisation for v in pool}
        assert norms == {"ct8bit": "zscore", "ct": "ct_hu", "mri": "zscore"}
        eight_bit = next(v for v in pool if "ct8bit" in v.path).image
        assert abs(eight_bit.mean()) < 1e-3 and abs(eight_bit.std() - 1) < 1e-3


def test_list_file_source(tmp_path: Path, sources: list[SourceConfig]) -> None:
    listing = tmp_path / "lists" / "pool.txt"
    listing.parent.mkdir()
    listing.write_text(f"../mri/mr0.nii.gz\n\n{tmp_path / 'mri' / 'mr2.nii.gz'}\n")  # relative and absolute
    files = D.list_source_files(SourceConfig(str(listing), "MRI"))
    assert [f.resolve() for f in files] == [tmp_path / "mri" / "mr0.nii.gz", tmp_path / "mri" / "mr2.nii.gz"]
    listing.write_text("../mri/missing.nii.gz\n")
    with pytest.raises(InputError, match="pool.txt names missing files.*missing.nii.gz"):
        D.list_source_files(SourceConfig(str(listing), "MRI"))


def test_balanced_sampling_ratio(sources: list[SourceConfig]) -> None:
    pool = [D.Volume("ct", "CT", "ct_hu", np.zeros(1), np.zeros((0, 3)))] + \
           [D.Volume(f"mr{i}", "MRI", "zscore", np.zeros(1), np.zeros((0, 3))) for i in range(40)]
    rng = np.random.default_rng(0)
    for fraction in (0.2, 0.5):
        draws = [D.sample_volume(pool, rng, fraction).modality for _ in range(5000)]
        share = draws.count("CT") / len(draws)
        assert abs(share - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / 5000)


def test_nnunet_raw_source_takes_channel_zero_training_images(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_X"
    write_volume(root / "imagesTr" / "a_0000.nii.gz", np.zeros((4, 4, 4)))
    write_volume(root / "imagesTr" / "a_0001.nii.gz", np.zeros((4, 4, 4)))
    write_volume(root / "imagesTs" / "b_0000.nii.gz", np.zeros((4, 4, 4)))
    write_volume(root / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4)))
    (root / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    files = D.list_source_files(SourceConfig(str(root), "MRI"))
    assert [f.name for f in files] == ["a_0000.nii.gz"]  # test images only when named
    assert [f.name for f in D.list_source_files(SourceConfig(str(root / "imagesTs"), "MRI"))] == ["b_0000.nii.gz"]
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"dataset.json is not JSON .* give the images folder"):
        D.list_source_files(SourceConfig(str(root), "MRI"))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_file_and_the_fix(tmp_path: Path, sources: list[SourceConfig]) -> None:
    bad = tmp_path / "bad"
    (bad / "broken.nii.gz").parent.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"broken.nii.gz is truncated or corrupt.*download it again"):
        D.load_pool(smoke_config([SourceConfig(str(bad), "MRI")]), progress=False)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32))] * 2)
    (tmp_path / "4d").mkdir()
    sitk.WriteImage(four_d, str(tmp_path / "4d" / "series.nii.gz"))
    with pytest.raises(InputError, match=r"series.nii.gz is a 4D image.*split"):
        D.load_pool(smoke_config([SourceConfig(str(tmp_path / "4d"), "MRI")]), progress=False)
    nan = body_phantom(np.random.default_rng(0), "MRI")
    nan[3, 3, 3] = np.nan
    write_volume(tmp_path / "nan" / "n.mha", nan)  # NIfTI I/O in ITK drops NaN; MetaImage keeps it
    with pytest.raises(InputError, match=r"n.mha has 1 NaN/Inf voxels"):
        D.load_pool(smoke_config([SourceConfig(str(tmp_path / "nan"), "MRI")]), progress=False)
    write_volume(tmp_path / "small" / "s.nii.gz", np.ones((4, 30, 30)))
    with pytest.raises(InputError, match=r"s.nii.gz is .* smaller than the smallest global crop"):
        D.load_pool(smoke_config([SourceConfig(str(tmp_path / "small"), "MRI")]), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty holds no images"):
        D.load_pool(smoke_config([SourceConfig(str(tmp_path / "empty"), "MRI")]), progress=False)
    with pytest.raises(InputError, match="no sources"):
        D.load_pool(smoke_config([]), progress=False)
    with pytest.raises(InputError, match="unknown modality 'PET'"):
        parse_source(f"{tmp_path}:PET")
    config_file = tmp_path / "c.yaml"
    config_file.write_text("sources:\n  - {path: /x, modality: PET}\n")
    with pytest.raises(InputError, match=r"c.yaml.*'PET' is not one of 'CT', 'MRI'"):
        load_config(config_file)


def test_every_preset_resolves_with_valid_crops() -> None:
    from nnunetv2_xlstm_pretraining.config import PRESETS

    for preset, values in PRESETS.items():
        config = load_config(preset=preset)
        assert all(getattr(config, k) == v for k, v in values.items() if not isinstance(v, dict))  # applied
        grid = token_grid(config)
        strides = int(np.prod(config.network.strides))
        assert grid == [c // strides for c in config.global_crop_voxels] and min(grid) >= 2
        assert all(c % strides == 0 and c // strides >= 2 for c in config.local_crop_voxels)
    with pytest.raises(InputError, match=r"local_crop_voxels \[8, 8, 8\] must be multiples .* at least 16 voxels"):
        load_config(preset="demo", overrides=["local_crop_voxels=[8,8,8]"])


def test_config_precedence_and_typos(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("steps: 77\nbatch_size: 3\nnetwork:\n  mlstm_blocks_per_stage: 4\n")
    config = load_config(config_file, preset="cpu", overrides=["batch_size=5", "network.strides=[1,2,2,2]"])
    assert config.steps == 77 and config.batch_size == 5  # file over preset, --set over file
    assert config.network.mlstm_blocks_per_stage == 4 and config.network.strides == [1, 2, 2, 2]
    assert config.num_local_crops == 4 and config.lr == PretrainConfig().lr  # preset, then default
    config_file.write_text("stesp: 10\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown key 'stesp'; did you mean 'steps'\?"):
        load_config(config_file)
    with pytest.raises(InputError, match=r"network.*unknown key 'strides_'.*'strides'"):
        load_config(overrides=["network.strides_=[1]"])
    with pytest.raises(InputError, match=r"steps: expected int, got 'many'"):
        load_config(overrides=["steps=many"])


# ---------------------------------------------------------------------------------------------- runs
def _teacher_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", ["masked_distillation", "dino"])
def test_resume_is_bit_identical_on_cpu(tmp_path: Path, sources: list[SourceConfig], objective: str) -> None:
    config = smoke_config(sources, objective=objective)
    full = pretrain(config, tmp_path / "full", progress=False)
    assert (tmp_path / "full" / "checkpoint_step3.pt").is_file() and (tmp_path / "full" / "progress.png").is_file()
    assert json.loads((tmp_path / "full" / "config.json").read_text())["steps"] == 6
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint_step3.pt", tmp_path / "resumed" / "checkpoint_latest.pt")
    resumed = pretrain(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["history"]["loss"] == full["history"]["loss"]
    assert _teacher_equal(resumed["teacher"], full["teacher"])
    if objective == "dino":
        assert torch.equal(resumed["center"], full["center"])
    with pytest.raises(InputError, match="already holds a run.*--resume"):
        pretrain(config, tmp_path / "full", progress=False)
    other = smoke_config(sources, steps=8)
    with pytest.raises(InputError, match="different config.*steps"):
        pretrain(other, tmp_path / "full", resume=True, progress=False)


@pytest.mark.parametrize("objective", ["masked_distillation", "dino"])
def test_export_loads_into_xlstmunet_with_every_encoder_key(tmp_path: Path, sources: list[SourceConfig],
                                                            objective: str) -> None:
    result = pretrain(smoke_config(sources, objective=objective), tmp_path / "run", progress=False)
    weights, plan = load_exported_encoder(result["export"])
    net = build_xlstm_unet(plan["architecture_plans"]["arch_kwargs"], plan["pretrain_num_input_channels"], 4)
    encoder_keys = {k for k in net.state_dict() if k.startswith((plan["key_to_encoder"], plan["key_to_stem"]))}
    decoder_keys = {k for k in net.state_dict()
                    if k.startswith("decoder.") and not k.startswith(("decoder.encoder.", "decoder.seg_layers."))}
    # masked distillation also exports the decoder (not its 1-channel reconstruction head); the predictors and the
    # student are left behind
    assert set(weights) == (encoder_keys | decoder_keys if objective == "masked_distillation" else encoder_keys)
    assert any(".mlstm." in k for k in weights) and not any("predictor" in k for k in weights)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert unexpected == [] and all(k.startswith("decoder.") for k in missing)
    # each aliased tensor (conv.weight / all_modules.0.weight) is stored once: the file is the size of its storages
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in weights.values()}
    assert len(unique) < len(weights) and result["export"].stat().st_size < 1.1 * sum(unique.values()) + 200_000
    assert torch.equal(net.state_dict()["encoder.stem.convs.0.conv.weight"], weights["encoder.stem.convs.0.conv.weight"])
    assert plan["pretrain_plan"]["modalities"] == ["CT", "MRI"] and plan["pretrain_plan"]["target_spacing"] == [2.0] * 3
    with pytest.raises(InputError, match="not an exported encoder"):
        load_exported_encoder(tmp_path / "run" / "checkpoint_latest.pt")
    # --export_only re-exports the latest checkpoint's teacher: here the end of the run, so the same file contents
    pretrain_entry(["--output", str(tmp_path / "run"), "--export_only"])
    again, plan_again = load_exported_encoder(tmp_path / "run" / "encoder_export.pt")
    assert plan_again == plan and all(torch.equal(again[k], v) for k, v in weights.items())
    torch.save({"x": torch.nn.Linear(1, 1)}, tmp_path / "evil.pt")  # a pickled module: refused, never unpickled
    with pytest.raises(InputError, match="never unpickle"):
        safe_load(tmp_path / "evil.pt")


@pytest.mark.slow
def test_cli_survives_a_kill_and_resumes(tmp_path: Path, sources: list[SourceConfig]) -> None:
    out = tmp_path / "run"
    args = ["--preset", "smoke", "--output", str(out), "--set", "steps=30", "--set", "save_every=2", "--set",
            "device=cpu", "--no_pbar", *[a for s in sources for a in ("--source", f"{s.path}:{s.modality}")]]
    proc = subprocess.Popen([sys.executable, "-m", "nnunetv2_xlstm_pretraining.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "checkpoint_step4.pt").exists() and proc.poll() is None:  # no deadline: a slow machine waits
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before its step-4 checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = safe_load(out / "checkpoint_latest.pt")  # intact, whenever the kill landed (even between the two files)
    assert latest["step"] >= 2 and latest["step"] % 2 == 0
    pretrain_entry([*args, "--resume"])
    assert safe_load(out / "checkpoint_latest.pt")["step"] == 30 and (out / "encoder_export.pt").is_file()
    assert not list(out.glob(".*"))  # temporary files of the killed write are cleared on resume
