"""The benchmark: presets, the arms' derived networks, log parsing, nested budgets, and the whole command on phantoms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_xlstm.benchmark.arms import (
    ARMS, PLAIN_CONV_UNET, RESIDUAL_ENCODER_UNET, derived_plans, resenc_m_architecture, stock_architecture,
    without_mlstm,
)
from nnunetv2_xlstm.benchmark.presets import PRESETS, scaled_spacing
from nnunetv2_xlstm.benchmark.report import markdown_report, parse_training_log, speed_from_log
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.splits import few_label_splits
from nnunetv2_xlstm.training import trainers

XLSTM = {"network_class_name": "nnunetv2_xlstm.network.xlstm_unet.XLSTMUNet",
         "arch_kwargs": {"n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
                         "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                         "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [1, 3, 4, 6],
                         "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
                         "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                         "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                         "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}, "mlstm_stages": [2, 3],
                         "mlstm_blocks_per_stage": 2},
         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def build(arch: dict) -> torch.nn.Module:
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 4,
                                  deep_supervision=False)


def test_scaled_spacing_lowers_resolution_up_to_the_coarsest_axis() -> None:
    assert scaled_spacing([10.0, 1.5, 1.5], 2.0) == [10.0, 3.0, 3.0]
    assert scaled_spacing([1.25, 1.25, 1.25], 2.0) == [2.5, 2.5, 2.5]
    assert scaled_spacing([5.0, 1.0, 1.0], 4.0) == [5.0, 4.0, 4.0]
    assert scaled_spacing([3.0, 1.0, 2.0], 1.0) == [3.0, 1.0, 2.0]


def test_every_preset_names_existing_trainers_and_says_what_it_changes() -> None:
    for preset in PRESETS.values():
        for arm in ARMS:
            name = preset.trainer(arm)
            assert name == "nnUNetTrainer" or hasattr(trainers, name), (preset.name, arm, name)
            schedule = getattr(getattr(trainers, name), "schedule", None)
            assert schedule == preset.schedule
        assert preset.changes()
    assert PRESETS["cpu"].trainer("xlstm") == PRESETS["cpu"].trainer("stock") == "nnUNetTrainerBenchmark_cpu"
    assert PRESETS["gpu-15min"].trainer("xlstm_pretrained") == "nnUNetTrainerXLSTMPretrained_gpu15min"
    assert PRESETS["full"].trainer("stock") == "nnUNetTrainer"
    assert any("8 epochs x 20 iterations" in c for c in PRESETS["cpu"].changes())
    assert PRESETS["full"].changes() == ["nothing: nnU-Net's defaults"]


def test_arms_differ_only_in_the_network() -> None:
    stock, resenc, ablation = stock_architecture(XLSTM), resenc_m_architecture(XLSTM), without_mlstm(XLSTM)
    assert stock["network_class_name"] == PLAIN_CONV_UNET and resenc["network_class_name"] == RESIDUAL_ENCODER_UNET
    for arch in (stock, resenc, ablation):  # the same topology and widths as the XLSTMUNet arm
        for key in ("n_stages", "features_per_stage", "kernel_sizes", "strides"):
            assert arch["arch_kwargs"][key] == XLSTM["arch_kwargs"][key]
    assert stock["arch_kwargs"]["n_conv_per_stage"] == [2] * 4 and "n_blocks_per_stage" not in stock["arch_kwargs"]
    nets = {name: build(arch) for name, arch in
            (("xlstm", XLSTM), ("stock", stock), ("resenc", resenc), ("ablation", ablation))}
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert all(net.eval()(x).shape == (1, 4, 8, 32, 32) for net in nets.values())
    # the ablation is ResEnc-M exactly: the same tensors, so any difference to XLSTMUNet is the mLSTM blocks'
    resenc_shapes = {k: v.shape for k, v in nets["resenc"].state_dict().items()}
    assert {k: v.shape for k, v in nets["ablation"].state_dict().items()} == resenc_shapes
    assert not any("mlstm" in k for k in resenc_shapes) and any("mlstm" in k for k in nets["xlstm"].state_dict())
    count = lambda net: sum(p.numel() for p in net.parameters())
    assert count(nets["xlstm"]) > count(nets["ablation"])


def test_derived_plans_share_the_preprocessed_data() -> None:
    base = {"plans_name": "nnUNetPlansBench_cpu", "pretrained_encoder": {"file": "x.pt"},
            "configurations": {"2d": {"data_identifier": "a_2d"},
                               "3d_fullres": {"data_identifier": "nnUNetPlansBench_cpu_3d_fullres", "patch_size": [8, 32, 32],
                                              "architecture": XLSTM}}}
    plans = derived_plans(base, "nnUNetPlansBench_cpu_stock", stock_architecture(XLSTM))
    assert plans["plans_name"] == "nnUNetPlansBench_cpu_stock" and list(plans["configurations"]) == ["3d_fullres"]
    config = plans["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlansBench_cpu_3d_fullres" and config["patch_size"] == [8, 32, 32]
    assert config["architecture"]["network_class_name"] == PLAIN_CONV_UNET and "pretrained_encoder" not in plans
    assert base["configurations"]["3d_fullres"]["architecture"] is XLSTM and "pretrained_encoder" in base


def test_nested_budgets_are_subsets_and_deterministic() -> None:
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 21) for f in (1, 2)]
    result = few_label_splits(cases, None, val_budget="4", nested_budgets=["2", "5", "0.5"], seed=3)
    small, medium, half = result["train_patients"]
    assert (len(small), len(medium), len(half)) == (2, 5, 8)  # 0.5 of the 16 non-validation patients
    assert set(small) < set(medium) < set(half) and not set(half) & set(result["val_patients"])
    assert all(len(f["train"]) == 2 * len(t) for f, t in zip(result["folds"], result["train_patients"]))
    assert few_label_splits(cases, None, val_budget="4", nested_budgets=["2", "5", "0.5"], seed=3) == result
    assert few_label_splits(cases, None, val_budget="4", nested_budgets=["2"], seed=4)["train_patients"][0] != small


def test_training_log_parsing_and_speed(tmp_path: Path) -> None:
    line = lambda t, text: f"2026-11-26 17:{t}.000000: {text} \n"
    (tmp_path / "training_log_2026_11_26_17_00_00.txt").write_text(
        line("00:00", "Epoch 0") + line("00:01", "Current learning rate: 0.001") + line("00:10", "train_loss 0.5")
        + line("00:10", "val_loss 0.4") + line("00:10", "Pseudo dice [np.float32(0.1), np.float32(0.3)]")
        + line("00:10", "Epoch time: 10.0 s") + line("00:10", "Peak memory: 1.50 GiB (process resident)")
        + line("00:11", "Epoch 1") + line("00:20", "train_loss 0.9"))  # interrupted during epoch 1
    (tmp_path / "training_log_2026_11_26_17_30_00.txt").write_text(
        line("30:00", "Epoch 1") + line("30:10", "train_loss 0.3") + line("30:10", "val_loss 0.2")
        + line("30:10", "Pseudo dice [0.5, 0.7]") + line("30:10", "Epoch time: 4.0 s")
        + line("30:10", "Peak memory: 2.00 GiB (process resident)") + line("30:11", "Epoch 2")
        + line("30:15", "Epoch time: 6.0 s"))
    epochs = parse_training_log(tmp_path)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert epochs[0] == {"epoch": 0, "train_loss": 0.5, "val_loss": 0.4, "pseudo_dice": pytest.approx(0.2),
                         "seconds": 10.0, "peak_memory_gib": 1.5}
    assert epochs[1]["train_loss"] == 0.3 and epochs[1]["pseudo_dice"] == pytest.approx(0.6)
    assert speed_from_log(epochs, 2) == {"step_seconds": 2.5, "peak_memory_gib": 2.0}  # median(4, 6) / 2; epoch 0 skipped
    assert speed_from_log([], 2) == {"step_seconds": None, "peak_memory_gib": None}


def test_markdown_report_has_a_row_per_arm_and_budget() -> None:
    run = lambda d: {"label": "L", "dice": {"RV": d, "LV": d, "mean": d}, "hd95": {"RV": 5.0, "LV": 7.0, "mean": 6.0},
                     "wall_seconds": 600}
    result = {"dataset": "Dataset801_ACDC", "preset": {"name": "cpu", "purpose": "p", "changes": ["a", "b"]},
              "machine": "m", "evaluated_on": "e", "structures": ["RV", "LV"],
              "runs": {"3": {"stock": run(0.5), "xlstm": {"label": "X", "status": "failed: boom"}}, "7": {"stock": run(0.75)}},
              "speed": {"stock": {"label": "L", "parameters": 2_500_000, "step_seconds": 2.25, "peak_memory_gib": None,
                                  "predict_seconds_per_volume": 3.0}}}
    text = markdown_report(result)
    assert "## 3 labelled patients" in text and "## 7 labelled patients" in text
    assert "| L | 0.500 | 0.500 | **0.500** | 6.0 | 10.0 min |" in text and "| X | — | — | failed: boom |" in text
    assert "| L | 2.50 M | 2.25 s | — | 3.0 s |" in text and "Changes from nnU-Net's defaults: a; b." in text
    del result["speed"]  # a benchmark still running: its tables so far, no speed yet
    partial = markdown_report(result)
    assert "## Speed" not in partial and "| L | 0.500 | 0.500 | **0.500** | 6.0 | 10.0 min |" in partial


@pytest.mark.slow
def test_benchmark_command_on_phantoms(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    """Every arm on two nested budgets through the real command, then a second call that only reports."""
    dataset = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 994, 6, 2, geometry=PhantomGeometry((40, 40, 40), 3.6),
                                    progress=False)
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"{p}\n" for p in sorted((dataset / "imagesTr").glob("*.nii.gz"))))
    bin_ = Path(sys.executable).parent
    subprocess.run([str(bin_ / "nnunetv2_xlstm_pretrain"), "--preset", "smoke", "--output", str(tmp_path / "pt"),
                    "--source", f"{pool}:MRI", "--no_pbar"], env=nnunet_env, check=True, capture_output=True)
    out = tmp_path / "bench"
    command = [str(bin_ / "nnunetv2_xlstm_benchmark"), "-d", "994", "--preset", "smoke", "--budgets", "1", "2",
               "--val_budget", "2", "--pretrained_encoder", str(tmp_path / "pt" / "encoder_export.pt"), "--output",
               str(out), "--device", "cpu"]
    first = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert list(result["runs"]) == ["1", "2"] and result["preset"]["name"] == "smoke"
    budgets = result["budgets"]
    assert set(budgets["1"]) < set(budgets["2"]) and not set(budgets["2"]) & set(result["val_patients"])
    structures = [k for k in json.loads((dataset / "dataset.json").read_text())["labels"] if k != "background"]
    for budget, runs in result["runs"].items():
        assert list(runs) == list(ARMS)
        for arm, run in runs.items():
            assert run["status"] == "done", (budget, arm, run.get("status"))
            assert set(run["dice"]) == {*structures, "mean"} and all(0 <= v <= 1 for v in run["dice"].values())
            assert set(run["test"]["dice"]) == {*structures, "mean"}  # the phantoms' imagesTs/labelsTs
            assert [e["epoch"] for e in run["curve"]] == [0, 1] and run["wall_seconds"] > 0
    # one preprocessing; the arms' plans differ in the network only; the XLSTMUNet arms are shaped like the encoder
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    plans = {arm: json.loads((pre / f"{name}.json").read_text())["configurations"]["3d_fullres"]
             for arm, name in result["plans"].items()}
    assert len({p["data_identifier"] for p in plans.values()}) == 1 and len({str(p["patch_size"]) for p in plans.values()}) == 1
    assert plans["stock"]["architecture"]["network_class_name"] == PLAIN_CONV_UNET
    assert plans["xlstm_no_mlstm"]["architecture"]["arch_kwargs"]["mlstm_stages"] == []
    encoder_arch = torch.load(tmp_path / "pt" / "encoder_export.pt", weights_only=True)
    assert plans["xlstm"]["architecture"]["arch_kwargs"]["features_per_stage"] == \
        encoder_arch["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"]["features_per_stage"]
    results = Path(nnunet_env["nnUNet_results"]) / dataset.name
    logs = {arm: "".join(p.read_text() for p in (results / f"{run['trainer']}__{run['plans']}__3d_fullres" / "fold_0")
                         .glob("training_log_*.txt")) for arm, run in result["runs"]["1"].items()}
    assert all(("loaded pretrained encoder" in log) == (arm == "xlstm_pretrained") for arm, log in logs.items())
    speed = result["speed"]
    assert speed["xlstm"]["parameters"] > speed["xlstm_no_mlstm"]["parameters"] > 0
    assert all(s["step_seconds"] > 0 and s["peak_memory_gib"] > 0 and s["predict_seconds_per_volume"] > 0
               for s in speed.values())
    report = (out / "benchmark.md").read_text()
    assert all(label in report for label in ARMS.values()) and "## 2 labelled patients" in report
    for png in ("dice.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 10_000
    # a second call finds every run done: nothing is retrained, the numbers stay
    second = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "benchmark.json").read_text())
    assert again["runs"] == result["runs"] and "nnUNetv2_train" not in second.stdout
    # another process (e.g. on another GPU) reuses the splits, plans and preprocessed data
    planned = subprocess.run(command[:-4] + ["--output", str(tmp_path / "other"), "--plan_only"], env=nnunet_env,
                             capture_output=True, text=True)
    assert planned.returncode == 0 and "Preprocessing" not in planned.stdout, planned.stderr[-3000:]
    assert json.loads((tmp_path / "other" / "benchmark.json").read_text())["plans"] == result["plans"]
    other = subprocess.run(command[:4] + ["full"] + command[5:], env=nnunet_env, capture_output=True, text=True)
    assert other.returncode != 0 and "choose another --output" in other.stderr
    # the full preset plans the stock arms with nnU-Net's own planners
    full = subprocess.run(command[:4] + ["full"] + command[5:-4] + ["--output", str(tmp_path / "full"), "--plan_only"],
                          env=nnunet_env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]
    assert json.loads((tmp_path / "full" / "benchmark.json").read_text())["plans"] == {
        "stock": "nnUNetPlans", "resenc_m": "nnUNetResEncUNetMPlans", "xlstm": "nnUNetPlansXLSTMEncoder",
        "xlstm_no_mlstm": "nnUNetPlansXLSTMEncoder_no_mlstm", "xlstm_pretrained": "nnUNetPlansXLSTMEncoder"}
