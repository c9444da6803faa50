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


@pytest.fixture(scope="session")
def _built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture
def built_once(_built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
               nnunet_env: dict[str, str]):
    """``built_once(name, build)``: run ``build()`` once per test session, in an nnU-Net environment of its own
    (``build`` finds its folders in the ``nnUNet_*`` variables and writes only below them and ``tmp_path``), then give
    every test a fresh copy of what it wrote in this test's ``tmp_path``. Planning and preprocessing a phantom data set
    takes about 20 s; a copy takes a fraction of one, and tests still cannot see each other's changes."""
    import shutil

    def get(name: str, build) -> None:
        if name not in _built:
            root = tmp_path_factory.mktemp(f"built_{name}")
            env = nnunet_environment(root)
            with pytest.MonkeyPatch.context() as patch:
                for variable in (*NNUNET_PATH_VARIABLES, "nnUNet_extTrainer"):
                    patch.setenv(variable, env[variable])
                for variable in NNUNET_PATH_VARIABLES:
                    Path(env[variable]).mkdir()
                build(root)
            _built[name] = root
        shutil.copytree(_built[name], tmp_path, dirs_exist_ok=True)

    return get
