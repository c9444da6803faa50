"""The transfer probe: deterministic per seed, random-init baseline of the export's own architecture, refusals, and
its runs during pretraining (either objective)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_xlstm.checkpoints import load_exported_encoder, save_exported_encoder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.probe import ProbeData, load_probe_data, probe_encoder, probe_markdown
from nnunetv2_xlstm_pretraining.train import adaptation_plan, pretrain

from test_pretraining import smoke_config, sources  # noqa: F401  (fixture)

SMALL = ["network.features_per_stage=[16,32]", "network.strides=[1,2]", "network.n_blocks_per_stage=[1,1]",
         "network.mlstm_stages=[1]", "global_crop_voxels=[8,8,8]", "local_crop_voxels=[4,4,4]", "target_stages=2"]


def _export(path: Path, seed: int = 0) -> dict:
    config = load_config(overrides=SMALL, sources=[SourceConfig("unused", "MRI")])
    plan = adaptation_plan(config)
    torch.manual_seed(seed)
    net = build_xlstm_unet(plan["architecture_plans"]["arch_kwargs"], 1, 2)  # as the probe builds its baseline
    save_exported_encoder(path, {k: v for k, v in net.state_dict().items() if k.startswith("encoder.")}, plan)
    return plan


def _case(rng: np.random.Generator, name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """A bright sphere (label 1) in a noisy box of odd size (padding to the stride is exercised)."""
    shape = (6, 11, 9)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    label = ((z - 3) ** 2 + (y - 5) ** 2 + (x - 4) ** 2 < rng.uniform(4, 9)).astype(np.int16)
    image = label * 2.0 + rng.normal(0, 0.5, shape)
    return name, image[None].astype(np.float32), label


@pytest.fixture
def data() -> ProbeData:
    rng = np.random.default_rng(0)
    return ProbeData([_case(rng, f"t{i}") for i in range(2)], [_case(rng, f"v{i}") for i in range(3)], {"sphere": 1})


def test_probe_is_deterministic_and_compares_with_random_init(tmp_path: Path, data: ProbeData) -> None:
    _export(tmp_path / "enc.pt")
    first = probe_encoder(tmp_path / "enc.pt", data, [0, 1], steps=30)
    again = probe_encoder(tmp_path / "enc.pt", data, [0, 1], steps=30)
    assert first["pretrained"] == again["pretrained"] and first["random"] == again["random"]
    assert first["random"]["0"] != first["random"]["1"]  # each seed its own random encoder and head
    assert all(0 <= d["sphere"] <= 1 for kind in ("pretrained", "random") for d in first[kind].values())
    assert first["pretrained"]["0"]["sphere"] > 0.5  # a bright sphere: a linear probe finds it
    diff = first["summary"]["difference"]["mean"]
    expected = np.mean([first["pretrained"][s]["mean"] - first["random"][s]["mean"] for s in ("0", "1")])
    assert diff["mean"] == pytest.approx(expected) and diff["sd"] is not None
    assert "| pretrained − random |" in probe_markdown(first, "t")


def test_random_init_of_seed_equals_an_export_of_that_seed(tmp_path: Path, data: ProbeData) -> None:
    """The baseline is built from the export's own plan: an export holding seed 3's random init scores the same."""
    plan = _export(tmp_path / "seed3.pt", seed=3)
    result = probe_encoder(tmp_path / "seed3.pt", data, [3], steps=20)
    assert result["pretrained"]["3"] == result["random"]["3"]
    alone = probe_encoder(None, data, [3], 20, arch_kwargs=plan["architecture_plans"]["arch_kwargs"],
                          input_channels=1)
    assert alone["random"] == result["random"] and alone["pretrained"] == {}


def test_probe_refusals(tmp_path: Path, data: ProbeData, nnunet_env: dict[str, str]) -> None:
    _export(tmp_path / "enc.pt")
    two_channels = ProbeData([(c, np.concatenate([i, i]), s) for c, i, s in data.train], data.val, data.structures)
    with pytest.raises(InputError, match="pretrained on 1 input channel.*has 2"):
        probe_encoder(tmp_path / "enc.pt", two_channels, [0], 5)
    with pytest.raises(InputError, match="data set 977"):
        load_probe_data("977", "nnUNetPlans", "3d_fullres", ["a"], ["b"])


@pytest.mark.parametrize("objective", ["masked_distillation", "dino"])
def test_pretraining_probes_its_teacher_every_n_steps(tmp_path: Path, sources, data: ProbeData,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch, objective: str) -> None:
    import nnunetv2_xlstm_pretraining.probe as probe_module

    monkeypatch.setattr(probe_module, "load_probe_data", lambda *args: data)  # nnU-Net's preprocessed data, faked
    config = smoke_config(sources, steps=4, objective=objective,
                          **{"probe.every": 2, "probe.steps": 5, "probe.dataset": "phantoms"})
    pretrain(config, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert [entry["step"] for entry in history["steps"]] == [2, 4]
    assert all(0 <= entry["mean"] <= 1 for entry in history["steps"])
    assert 0 <= history["random"]["mean"]["mean"] <= 1
    assert (tmp_path / "run" / "probe.png").is_file()
    best = max(history["steps"], key=lambda entry: entry["mean"])["step"]
    weights, _ = load_exported_encoder(tmp_path / "run" / "encoder_best_probe.pt")
    assert history["best_step"] == best
    # the chosen export is a whole export: masked distillation's carries the decoder, for the decoder-loading trainer
    assert any(k.startswith("decoder.") for k in weights) == (objective == "masked_distillation")
    if best == 4:  # the last probe's export is still beside it
        assert (tmp_path / "run" / "encoder_best_probe.pt").read_bytes() == (
            tmp_path / "run" / "probe_encoder.pt").read_bytes()
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"step {best}: probe mean Dice" in log and "(best so far: encoder_best_probe.pt)" in log
    assert "step 2: probe mean Dice" in log and "step 4: probe mean Dice" in log
