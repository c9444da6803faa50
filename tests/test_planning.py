"""XLSTMUNetPlanner, the plan-and-preprocess command, trainer discovery and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError, ext_trainer_path
from nnunetv2_xlstm.network import XLSTMUNet
from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess, plan_and_preprocess_entry
from nnunetv2_xlstm.planning.planner import XLSTMUNetPlanner
from nnunetv2_xlstm.training import xlstm as trainers

GEOMETRY = PhantomGeometry((32, 32, 32), 4.5)


@pytest.fixture
def phantom_dataset(nnunet_env: dict[str, str]) -> Path:
    return write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 991, 4, 1, geometry=GEOMETRY, progress=False)


def test_plans_name_xlstmunet_and_build_through_nnunet(phantom_dataset: Path, nnunet_env: dict[str, str]) -> None:
    plans_id = plan_and_preprocess([991], configurations=["3d_fullres"], num_processes=[1],
                                   num_processes_fingerprint=1, no_pp=True,
                                   planner_kwargs={"base_features": 16, "max_features": 64, "batch_size": 3})
    assert plans_id == "nnUNetPlansXLSTM"
    plans_file = Path(nnunet_env["nnUNet_preprocessed"]) / phantom_dataset.name / "nnUNetPlansXLSTM.json"
    pm = PlansManager(str(plans_file))
    cm = pm.get_configuration("3d_fullres")
    assert cm.network_arch_class_name == "nnunetv2_xlstm.network.xlstm_unet.XLSTMUNet"
    kwargs = cm.network_arch_init_kwargs
    n = kwargs["n_stages"]
    assert kwargs["mlstm_stages"] == [n - 2, n - 1] and kwargs["features_per_stage"][0] == 16
    assert max(kwargs["features_per_stage"]) == 64 and cm.batch_size == 3
    assert cm.data_identifier == "nnUNetPlansXLSTM_3d_fullres"
    net = get_network_from_plans(cm.network_arch_class_name, kwargs, cm.network_arch_init_kwargs_req_import, 1, 8,
                                 deep_supervision=True)
    assert isinstance(net, XLSTMUNet) and net.encoder.mlstm_stages == (n - 2, n - 1)
    out = net(torch.randn(1, 1, *cm.patch_size))
    assert out[0].shape == (1, 8, *cm.patch_size)


def test_memory_estimate_counts_the_mlstm(phantom_dataset: Path) -> None:
    plan_and_preprocess([991], configurations=["3d_fullres"], num_processes_fingerprint=1, no_pp=True)  # fingerprint
    with_mlstm, without = XLSTMUNetPlanner(991), XLSTMUNetPlanner(991, n_mlstm_stages=0)
    kwargs = dict(n_stages=4, features_per_stage=(32, 64, 128, 256), conv_op="torch.nn.Conv3d", kernel_sizes=3,
                  strides=(1, 2, 2, 2), n_blocks_per_stage=(1, 3, 4, 6), n_conv_per_stage_decoder=(1, 1, 1),
                  conv_bias=True, norm_op="torch.nn.InstanceNorm3d", norm_op_kwargs={}, dropout_op=None,
                  dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={})
    args = ((64, 64, 64), 1, 8, "nnunetv2_xlstm.network.xlstm_unet.XLSTMUNet", kwargs, ("conv_op", "norm_op", "nonlin"))
    assert with_mlstm.static_estimate_VRAM_usage(*args) > without.static_estimate_VRAM_usage(*args)


def test_stock_lookup_finds_the_trainers(nnunet_env: dict[str, str]) -> None:
    for name in ("nnUNetTrainerXLSTM", "nnUNetTrainerXLSTM_smoke", "nnUNetTrainerXLSTM_short"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(trainers, name)  # one identity: the class from the installed package


def test_env_command_prints_the_ext_trainer_line() -> None:
    out = subprocess.run([sys.executable, "-c", "from nnunetv2_xlstm.env import env_entry; env_entry()"],
                         capture_output=True, text=True, check=True, env={"PATH": ""}).stdout
    assert out.strip() == f'export nnUNet_extTrainer="{ext_trainer_path()}"'
    assert (Path(ext_trainer_path()) / "nnunetv2_xlstm_trainers.py").is_file()


def test_trainer_refuses_plans_without_xlstmunet(phantom_dataset: Path, nnunet_env: dict[str, str]) -> None:
    plan_and_preprocess([991], planner="nnUNetPlannerResEncM", configurations=["3d_fullres"], no_pp=True,
                        num_processes_fingerprint=1)
    pm = PlansManager(str(Path(nnunet_env["nnUNet_preprocessed"]) / phantom_dataset.name /
                          "nnUNetResEncUNetMPlans.json"))
    with pytest.raises(RuntimeError, match="not XLSTMUNet.*nnUNetPlansXLSTM"):
        trainers.nnUNetTrainerXLSTM.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 8)


def _cli_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        plan_and_preprocess_entry(argv)
    return str(e.value)


def test_missing_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    msg = _cli_error(["-d", "991"])
    assert "nnUNet_raw" in msg and "nnUNet_preprocessed" in msg and "export nnUNet_raw=" in msg


def test_unknown_dataset_id(phantom_dataset: Path, nnunet_env: dict[str, str]) -> None:
    msg = _cli_error(["-d", "123"])
    assert "id 123" in msg and nnunet_env["nnUNet_raw"] in msg and phantom_dataset.name in msg
    assert list(Path(nnunet_env["nnUNet_preprocessed"]).iterdir()) == []


def test_dataset_json_without_required_keys(phantom_dataset: Path, nnunet_env: dict[str, str]) -> None:
    path = phantom_dataset / "dataset.json"
    dj = json.loads(path.read_text())
    del dj["labels"], dj["file_ending"]
    path.write_text(json.dumps(dj))
    msg = _cli_error(["-d", "991"])
    assert str(path) in msg and "labels" in msg and "file_ending" in msg
    assert list(Path(nnunet_env["nnUNet_preprocessed"]).iterdir()) == []
    path.write_text("{not json")
    assert "not valid JSON" in _cli_error(["-d", "991"])


def test_unknown_planner(phantom_dataset: Path) -> None:
    assert "unknown planner -pl NoSuchPlanner" in _cli_error(["-d", "991", "-pl", "NoSuchPlanner"])
    with pytest.raises(InputError, match="only apply to XLSTMUNetPlanner"):
        plan_and_preprocess([991], planner="nnUNetPlannerResEncM", planner_kwargs={"base_features": 16})


def test_importing_the_package_leaves_the_excepthook_alone() -> None:
    """No side effect at import: every module of both packages imported in a fresh interpreter."""
    code = ("import sys, pkgutil, importlib; hook = sys.excepthook\n"
            "import nnunetv2_xlstm, nnunetv2_xlstm_pretraining\n"
            "for pkg in (nnunetv2_xlstm, nnunetv2_xlstm_pretraining):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "assert sys.excepthook is hook, sys.excepthook\n"
            "from nnunetv2_xlstm.training.refusals import install_refusal_hook\n"
            "install_refusal_hook(); install_refusal_hook()\n"
            "assert sys.excepthook is not hook and sys.excepthook.previous is hook\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
