"""Shared fixtures: an isolated nnU-Net environment per test, and the optional real data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnunetv2_xlstm.env import NNUNET_PATH_VARIABLES, nnunet_environment

SHARED_DATA = Path(os.environ.get("NNUNETV2_XLSTM_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def nnunet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """nnUNet_raw/preprocessed/results under ``tmp_path`` (created), nnUNet_extTrainer set; returns the env."""
    env = nnunet_environment(tmp_path)
    for name in (*NNUNET_PATH_VARIABLES, "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    for name in NNUNET_PATH_VARIABLES:
        Path(env[name]).mkdir()
    monkeypatch.setenv("nnUNet_def_n_proc", "2")
    env["nnUNet_def_n_proc"] = "2"
    return env


def require_shared_data(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it exists only beside the project checkout)")
    return path
