"""A tiny pretraining run on the real CT + MRI pool beside the project (skips where ../shared/data is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared_data
from nnunetv2_xlstm.checkpoints import load_exported_encoder
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.train import pretrain


@pytest.mark.slow
def test_tiny_real_run_loss_decreases_and_export_loads(tmp_path: Path) -> None:
    acdc = require_shared_data("nnUNet_raw", "Dataset801_ACDC", "imagesTr")
    la = require_shared_data("nnUNet_raw", "Dataset802_LA", "imagesTr")
    ct = require_shared_data("unlabeled", "CT")
    pool = {"mri": sorted(acdc.iterdir())[:4] + sorted(la.iterdir())[:2],
            "ct": [ct / "totalsegmentator_cta.nii.gz", ct / "lidc_cta_8bit.nii.gz", ct / "basel_cta_patch_BS-005.nii.gz"]}
    for kind, files in pool.items():  # links to a subset, never copies
        (tmp_path / kind).mkdir()
        for f in files:
            os.symlink(f, tmp_path / kind / f.name)
    config = load_config(preset="smoke", overrides=["steps=120", "save_every=120", "plot_every=120", "device=cpu",
                                                    "warmup_steps=10"],
                         sources=[SourceConfig(str(tmp_path / "mri"), "MRI"), SourceConfig(str(tmp_path / "ct"), "CT")])
    result = pretrain(config, tmp_path / "run", progress=False)
    loss = np.asarray(result["history"]["loss"])
    assert loss[-10:].mean() < loss[:10].mean()
    weights, plan = load_exported_encoder(result["export"])
    net = build_xlstm_unet(plan["architecture_plans"]["arch_kwargs"], 1, 4)
    encoder_keys = {k for k in net.state_dict() if k.startswith(("encoder.stages", "encoder.stem"))}
    assert encoder_keys <= set(weights) and all(k.startswith("decoder.") for k in set(weights) - encoder_keys)
    net.load_state_dict({**net.state_dict(), **weights}, strict=True)
    guards = {k: v[-1] for k, v in result["history"].items() if k.startswith(("target_var", "prediction_var"))}
    assert guards and all(v > 0.01 for v in guards.values()), guards  # no collapse on the real pool
