"""The benchmark: presets, the arms' derived networks, log parsing, nested budgets, and the whole command on phantoms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_xlstm.benchmark.arms import (
    ARMS, DEFAULT_ARMS, PLAIN_CONV_UNET, RESIDUAL_ENCODER_UNET, derived_plans, resenc_m_architecture, stock_architecture,
    one_block_per_stage, without_mlstm,
)
from nnunetv2_xlstm.benchmark.presets import PRESETS, scaled_spacing
from nnunetv2_xlstm.benchmark.report import (bootstrap_ci, clustered_bootstrap_ci, paired_difference, curve_from_checkpoint, markdown_report, speed_from_curve,
                                              summarise)
from nnunetv2_xlstm.benchmark.run_benchmark import (check_budget_seeds, check_iterations, check_minutes, check_seeds, check_variants,
                                                    job_list, parse_budget_seeds, results_folder, variant_env,
                                                    variant_folder)
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.splits import few_label_splits

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


def test_every_preset_names_existing_trainers_and_says_what_it_changes(nnunet_env: dict[str, str]) -> None:
    for preset in PRESETS.values():
        for arm in ARMS:
            name = preset.trainer(arm)
            trainer = recursive_find_trainer_class_by_name(name)  # as nnUNetv2_train finds it
            assert trainer is not None and trainer.__name__ == name, (preset.name, arm, name)
            assert getattr(trainer, "schedule", None) == preset.schedule
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
    light = one_block_per_stage(XLSTM)["arch_kwargs"]
    assert light["n_blocks_per_stage"] == [1] * XLSTM["arch_kwargs"]["n_stages"]
    assert light["mlstm_stages"] == XLSTM["arch_kwargs"]["mlstm_stages"] and light != XLSTM["arch_kwargs"]


def test_nested_budgets_are_subsets_and_deterministic() -> None:
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 21) for f in (1, 2)]
    result = few_label_splits(cases, None, val_budget="4", nested_budgets=["2", "5", "0.5"], seed=3)
    small, medium, half = result["train_patients"]
    assert (len(small), len(medium), len(half)) == (2, 5, 8)  # 0.5 of the 16 non-validation patients
    assert set(small) < set(medium) < set(half) and not set(half) & set(result["val_patients"])
    assert all(len(f["train"]) == 2 * len(t) for f, t in zip(result["folds"], result["train_patients"]))
    assert few_label_splits(cases, None, val_budget="4", nested_budgets=["2", "5", "0.5"], seed=3) == result
    assert few_label_splits(cases, None, val_budget="4", nested_budgets=["2"], seed=4)["train_patients"][0] != small


def test_curve_and_speed_from_nnunet_checkpoint_logging(tmp_path: Path) -> None:
    """Curves come from the checkpoint's logging (numpy scalars, as nnU-Net writes them), read without unpickling
    arbitrary objects; the final checkpoint wins over the latest."""
    logging = {"train_losses": [np.float64(0.5), np.float64(0.3), np.float64(0.2)],
               "val_losses": [np.float64(0.4), np.float64(0.2), np.float64(0.1)],
               "mean_fg_dice": [np.float64(0.2), np.float64(0.6), np.float64(0.7)], "ema_fg_dice": [0.2, 0.24, 0.3],
               "dice_per_class_or_region": [[np.float64(0.1), np.float64(0.3)]] * 3, "lrs": [1e-3, 9e-4, 8e-4],
               "epoch_start_timestamps": [0.0, 20.0, 30.0], "epoch_end_timestamps": [10.0, 24.0, 36.0],
               "peak_memory_gib": [1.5, 2.0, 2.0]}
    torch.save({"logging": logging, "_best_ema": np.float64(0.3), "current_epoch": 3,
                "init_args": {"device": torch.device("cpu")}}, tmp_path / "checkpoint_final.pth")
    torch.save({"logging": {**logging, "train_losses": [9.0]}}, tmp_path / "checkpoint_latest.pth")
    curve = curve_from_checkpoint(tmp_path)
    assert [e["epoch"] for e in curve] == [0, 1, 2]
    assert curve[0] == {"epoch": 0, "seconds": 10.0, "train_loss": 0.5, "val_loss": 0.4, "pseudo_dice": 0.2,
                        "lr": 1e-3, "peak_memory_gib": 1.5}
    assert speed_from_curve(curve, 2) == {"step_seconds": 2.5, "peak_memory_gib": 2.0}  # median(4, 6) / 2
    assert speed_from_curve([], 2) == {"step_seconds": None, "peak_memory_gib": None}
    assert curve_from_checkpoint(tmp_path / "absent") == []

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"logging": logging, "x": Payload()}, tmp_path / "checkpoint_final.pth")
    with pytest.raises(InputError, match="checkpoint_final.pth is not a readable checkpoint"):
        curve_from_checkpoint(tmp_path)


def test_bootstrap_interval_against_hand_computed_cases() -> None:
    # two values 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95 % interval [0, 1]
    assert bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.2] * 7) == pytest.approx((0.2, 0.2, 0.2))
    mean, low, high = bootstrap_ci([0.1, float("nan"), 0.3])  # NaN pairs are dropped
    assert (mean, low, high) == pytest.approx((0.2, 0.1, 0.3))
    # many values: the interval approaches mean +- 1.96 standard errors
    values = np.random.default_rng(1).normal(0.05, 0.1, 400)
    mean, low, high = bootstrap_ci(values)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(mean - 1.96 * se, abs=0.2 * se) and high == pytest.approx(mean + 1.96 * se, abs=0.2 * se)
    assert np.isnan(bootstrap_ci([float("nan")])[0])


def test_clustered_bootstrap_against_hand_computed_cases() -> None:
    # patient A contributes two values 0, patient B one value 1: the mean over values is 1/3; resampling 2 patients
    # gives AA -> 0, AB or BA -> 1/3, BB -> 1 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]
    mean, low, high, n = clustered_bootstrap_ci({"A": [0.0, 0.0], "B": [1.0]})
    assert (mean, low, high, n) == (pytest.approx(1 / 3), 0.0, 1.0, 2)
    # equal-sized patients: exactly the bootstrap of the patient means, however many values each patient repeats
    rng = np.random.default_rng(3)
    patient_means = rng.normal(0.05, 0.1, 10)
    clusters = {f"p{i}": [m] * 4 for i, m in enumerate(patient_means)}  # 2 frames x 2 seeds, all alike
    assert clustered_bootstrap_ci(clusters)[:3] == pytest.approx(bootstrap_ci(patient_means))
    # treating those 40 values as independent narrows the interval by about sqrt(4)
    _, low_naive, high_naive = bootstrap_ci([v for vs in clusters.values() for v in vs])
    _, low, high, _ = clustered_bootstrap_ci(clusters)
    assert (high - low) / (high_naive - low_naive) == pytest.approx(2.0, rel=0.25)
    assert clustered_bootstrap_ci({"A": [float("nan")]})[3] == 0


def test_paired_difference_resamples_patients_with_their_frames_and_seeds() -> None:
    def run(values: dict[str, float]) -> dict:
        return {"status": "done", "per_case": {c: {"RV": {"Dice": v}} for c, v in values.items()}}

    cases = ["patient001_frame01", "patient001_frame02", "patient002_frame01", "patient002_frame02"]
    mine = {"0": run(dict(zip(cases, [0.5, 0.5, 0.9, 0.9]))), "1": run(dict(zip(cases, [0.5, 0.5, 0.9, 0.9])))}
    theirs = {"0": run(dict(zip(cases, [0.4, 0.4, 0.9, 0.9]))), "1": run(dict(zip(cases, [0.4, 0.4, 0.9, 0.9])))}
    d = paired_difference(mine, theirs, ["RV"])["RV"]
    assert d["pairs"] == 8 and d["patients"] == 2 and d["per_seed"] == pytest.approx([0.05, 0.05])
    # resampling 2 patients: both patient001 -> +0.1, mixed -> +0.05, both patient002 -> 0
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((0.05, 0.0, 0.1))


def _run(dice: dict[str, list[float]], iterations: int = 100) -> dict:
    """A finished run with per-case Dice ``{structure: [case values]}``."""
    cases = len(next(iter(dice.values())))
    per_case = {f"case{i}": {s: {"Dice": v[i], "HD95": 1.0, "HD95_miss": False} for s, v in dice.items()}
                for i in range(cases)}
    means = {s: float(np.mean(v)) for s, v in dice.items()}
    return {"status": "done", "label": "L", "dice": {**means, "mean": float(np.mean(list(means.values())))},
            "hd95": {s: 1.0 for s in [*dice, "mean"]}, "per_case": per_case, "iterations": iterations,
            "wall_seconds": 600}


def test_summary_over_seeds_pairs_cases_with_stock() -> None:
    runs = {"3": {"stock": {"0": _run({"RV": [0.2, 0.4], "LV": [0.6, 0.6]}), "1": _run({"RV": [0.4, 0.4], "LV": [0.8, 0.8]})},
                  "xlstm": {"0": _run({"RV": [0.3, 0.5], "LV": [0.7, 0.7]}, 60),
                            "1": _run({"RV": [0.5, 0.5], "LV": [0.9, 0.9]}, 70),
                            "2": {"status": "failed: boom"}}}}
    summary = summarise(runs, ["RV", "LV"])["3"]
    stock, xlstm = summary["stock"], summary["xlstm"]
    assert stock["seeds"] == ["0", "1"] and "vs_stock" not in stock
    assert stock["dice"]["RV"] == pytest.approx({"mean": 0.35, "sd": float(np.std([0.3, 0.4], ddof=1))})
    assert xlstm["seeds"] == ["0", "1"] and xlstm["iterations"] == [60, 70]
    # every (case, seed) pair is 0.1 better -> the interval collapses on +0.1
    delta = xlstm["vs_stock"]["mean"]
    assert delta.pop("seeds") == ["0", "1"] and delta.pop("seed_sd") == pytest.approx(0)
    assert delta.pop("per_seed") == pytest.approx([0.1, 0.1])
    assert delta == pytest.approx({"mean": 0.1, "low": 0.1, "high": 0.1, "pairs": 4, "patients": 2})
    one_seed = summarise({"3": {"stock": {"0": _run({"RV": [0.5]})}}}, ["RV"])["3"]["stock"]
    assert one_seed["dice"]["RV"]["sd"] is None


def test_pretrained_arm_is_paired_with_its_scratch_twin() -> None:
    scratch = {"0": _run({"RV": [0.2, 0.4]}), "1": _run({"RV": [0.4, 0.4]}), "2": _run({"RV": [0.5, 0.5]})}
    pretrained = {"0": _run({"RV": [0.3, 0.5]}), "1": _run({"RV": [0.7, 0.7]}), "2": {"status": "failed: boom"}}
    summary = summarise({"3": {"xlstm": scratch, "xlstm_pretrained": pretrained}}, ["RV"])["3"]
    assert "vs_twin" not in summary["xlstm"] and "vs_stock" not in summary["xlstm_pretrained"]
    twin = summary["xlstm_pretrained"]["vs_twin"]
    assert twin["arm"] == "xlstm" and twin["RV"]["seeds"] == ["0", "1"] and twin["RV"]["pairs"] == 4
    assert twin["RV"]["mean"] == pytest.approx(0.2)  # seed 0: +0.1 per case, seed 1: +0.3 per case
    assert twin["RV"]["seed_sd"] == pytest.approx(float(np.std([0.1, 0.3], ddof=1)))
    # each patient's seeds move together: both patients differ by +0.1 and +0.3, so every resample's mean is 0.2
    assert twin["RV"]["low"] == pytest.approx(0.2) and twin["RV"]["high"] == pytest.approx(0.2)
    assert twin["mean"]["mean"] == pytest.approx(0.2)


def test_markdown_report_has_mean_sd_interval_and_failures() -> None:
    runs = {"3": {"stock": {"0": _run({"RV": [0.4, 0.6], "LV": [0.5, 0.5]}), "1": _run({"RV": [0.6, 0.6], "LV": [0.5, 0.5]})},
                  "xlstm": {"0": _run({"RV": [0.6, 0.8], "LV": [0.5, 0.5]}), "1": {"label": "X", "status": "failed: boom"}}},
            "7": {"stock": {"0": _run({"RV": [0.75], "LV": [0.75]})}}}
    result = {"dataset": "Dataset801_ACDC", "preset": {"name": "cpu", "purpose": "p", "changes": ["a", "b"]},
              "machine": "m", "evaluated_on": "e", "structures": ["RV", "LV"], "seeds": [0, 1], "runs": runs,
              "summary": summarise(runs, ["RV", "LV"]),
              "speed": {"stock": {"label": "L", "parameters": 2_500_000, "step_seconds": 2.25, "peak_memory_gib": None,
                                  "predict_seconds_per_volume": 3.0}}}
    text = markdown_report(result)
    assert "## 3 labelled patients" in text and "## 7 labelled patients" in text
    assert "| L | 0.550 ± 0.071 | 0.500 ± 0.000 | **0.525 ± 0.035** |  | 1.0 | 100 | 10.0 min |" in text
    assert "**0.600** | +0.100 [+0.100, +0.100] | 1.0 | 100 |" in text  # xlstm: one finished seed, paired with stock's
    assert "- L, seed 1: failed: boom" in text
    assert "| L | 2.50 M | 2.25 s | — | 3.0 s |" in text and "Changes from nnU-Net's defaults: a; b." in text
    assert "Paired differences" not in text  # no arm with a twin
    twins = {"3": {"xlstm": runs["3"]["stock"], "xlstm_pretrained": runs["3"]["xlstm"]}}
    text = markdown_report({**result, "runs": twins, "summary": summarise(twins, ["RV", "LV"])})
    assert ("| L − L | +0.200 [+0.200, +0.200] | +0.000 [+0.000, +0.000] | **+0.100 [+0.100, +0.100]** | +0.100 | — | 2 | 0 |"
            in text)
    del result["speed"]  # a benchmark still running: its tables so far, no speed yet
    assert "## Speed" not in markdown_report(result)


def test_seeds_and_minutes_are_checked_and_kept_apart(tmp_path: Path) -> None:
    assert check_seeds([0, 1, 2]) == [0, 1, 2]
    for bad in ([1, 1], [-1], []):
        with pytest.raises(InputError, match="distinct integers >= 0"):
            check_seeds(bad)
    for bad in (0, -5):
        with pytest.raises(InputError, match="a training time > 0"):
            check_minutes(bad)
    cpu, long = PRESETS["cpu"], PRESETS["cpu-long"]
    assert long.minutes == 20 and cpu.minutes is None
    assert results_folder(tmp_path, 0, None, cpu) == tmp_path and results_folder(tmp_path, 0, 20, long) == tmp_path
    folders = {results_folder(tmp_path, s, m, cpu) for s in (0, 1) for m in (None, 5.0)}
    assert len(folders) == 4 and results_folder(tmp_path, 1, 5.0, cpu).name == "benchmark_seed1_5min"
    # iteration-matched runs get their own folders, even for seed 0 of a timed preset
    assert results_folder(tmp_path, 0, None, long, 1000).name == "benchmark_seed0_1000it"
    assert check_iterations(None, 20) is None and check_iterations(500, None) == 500
    with pytest.raises(InputError, match="both given"):
        check_iterations(500, 20.0)
    with pytest.raises(InputError, match=">= 1"):
        check_iterations(0, None)


def test_setting_variants_change_only_their_arms_and_folders(tmp_path: Path) -> None:
    variants = check_variants("encoder_lr=0.3, warmup=0.2", "class_quantile=none")
    assert variants == {"NNUNETV2_XLSTM_FINETUNE": "encoder_lr=0.3,warmup=0.2",
                        "NNUNETV2_XLSTM_SEMI": "class_quantile=none"}
    assert variant_env("xlstm", variants) == {} and variant_folder(tmp_path, "xlstm", variants) == tmp_path  # twin shared
    assert variant_env("xlstm_pretrained", variants) == {"NNUNETV2_XLSTM_FINETUNE": "encoder_lr=0.3,warmup=0.2"}
    assert variant_env("xlstm_semi", variants) == {"NNUNETV2_XLSTM_SEMI": "class_quantile=none"}
    assert len(variant_env("xlstm_pretrained_semi", variants)) == 2
    assert variant_env("xlstm_pretrained_decoder_semi", variants) == variant_env("xlstm_pretrained_semi", variants)
    folders = {variant_folder(tmp_path, a, variants) for a in ("xlstm_pretrained", "xlstm_semi", "xlstm_pretrained_semi")}
    assert len(folders) == 3 and all(f.parent == tmp_path and f.name.startswith("variant_") for f in folders)
    assert variant_folder(tmp_path, "xlstm_pretrained", check_variants("encoder_lr=0.5", None)) not in folders
    for finetune, semi, message in (("lr=1", None, "unknown setting 'lr'"), ("encoder_lr=x", None, "is not a float"),
                                    ("encoder_lr=-1", None, "must be a number >= 0"),  # as the trainer would refuse
                                    ("warmup=1", None, "warm-up share 1.0 must be below 1"),
                                    (None, "class_quantile=2", r"must lie in \[0, 1\]")):
        with pytest.raises(InputError, match=message):
            check_variants(finetune, semi)


def test_budget_seeds_run_some_budgets_with_fewer_seeds() -> None:
    seeds_of = {"3": [0, 1, 2], **parse_budget_seeds(["7=0"])}
    assert job_list(seeds_of, ["xlstm", "stock"]) == [
        (0, 0, "3", "xlstm"), (0, 0, "3", "stock"), (0, 1, "7", "xlstm"), (0, 1, "7", "stock"),
        (1, 0, "3", "xlstm"), (1, 0, "3", "stock"), (2, 0, "3", "xlstm"), (2, 0, "3", "stock")]  # seed-major
    assert parse_budget_seeds(["16=0,2"]) == {"16": [0, 2]}
    check_budget_seeds({"7": [0]}, ["3", "7"])
    with pytest.raises(InputError, match=r"--budget_seeds names budget\(s\) \['8'\]; the budgets are 3, 7"):
        check_budget_seeds({"8": [0]}, ["3", "7"])
    for bad in ("7", "7=a", "7=0,0", "7=-1"):
        with pytest.raises(InputError, match="BUDGET=SEED"):
            parse_budget_seeds([bad])


def test_iteration_matched_trainer_has_whole_epochs_and_no_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2_xlstm.training.scheduled import ITERATIONS_ENV, MINUTES_ENV, training_budget

    long = PRESETS["cpu-long"].schedule
    assert training_budget(long, 1000, 25) == (1200.0, 1000)  # the preset's 20 minutes, the epochs a cap
    monkeypatch.setenv(ITERATIONS_ENV, "1010")
    assert training_budget(long, 1000, 25) == (None, 41)  # 1025 iterations, whole epochs, no time budget
    monkeypatch.setenv(MINUTES_ENV, "20")
    with pytest.raises(InputError, match="both set"):
        training_budget(long, 1000, 25)
    monkeypatch.delenv(ITERATIONS_ENV)
    monkeypatch.setenv(MINUTES_ENV, "5")
    assert training_budget(long, 1000, 25) == (300.0, 1000)
    short = PRESETS["cpu"].schedule  # 8 epochs are its length, not a cap on a time budget given to it
    assert training_budget(short, short.epochs, 20) == (300.0, 1000)
    monkeypatch.delenv(MINUTES_ENV)
    assert training_budget(short, short.epochs, 20) == (None, 8)


ARMS_RUN = ("stock", "xlstm", "xlstm_pretrained", "xlstm_no_mlstm")


@pytest.mark.slow
def test_benchmark_command_on_phantoms(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    """Four arms on two nested budgets through the real command (stock, scratch, pretrained, the ablation: ResEnc-M
    and the light arm differ from these only in their plans, which are checked), then a second call that only
    reports."""
    dataset = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 994, 6, 2, geometry=PhantomGeometry((40, 40, 40), 3.6),
                                    progress=False)
    development = ["phantom_004_CT", "phantom_005_MRI"]  # never in the pool: the benchmark refuses such an encoder
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"{p}\n" for p in sorted((dataset / "imagesTr").glob("*.nii.gz"))
                            if not p.name.startswith(tuple(development))))
    bin_ = Path(sys.executable).parent
    subprocess.run([str(bin_ / "nnunetv2_xlstm_pretrain"), "--preset", "smoke", "--output", str(tmp_path / "pt"),
                    "--source", f"{pool}:MRI", "--no_pbar"], env=nnunet_env, check=True, capture_output=True)
    out = tmp_path / "bench"
    command = [str(bin_ / "nnunetv2_xlstm_benchmark"), "-d", "994", "--preset", "smoke", "--budgets", "1", "2",
               "--val_patients", *development, "--pretrained_encoder", str(tmp_path / "pt" / "encoder_export.pt"),
               "--arms", *ARMS_RUN, "--output", str(out), "--device", "cpu"]
    first = subprocess.run(command, env=nnunet_env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert list(result["runs"]) == ["1", "2"] and result["preset"]["name"] == "smoke"
    budgets = result["budgets"]
    assert set(budgets["1"]) < set(budgets["2"]) and not set(budgets["2"]) & set(result["val_patients"])
    structures = [k for k in json.loads((dataset / "dataset.json").read_text())["labels"] if k != "background"]
    for budget, runs in result["runs"].items():
        assert list(runs) == list(ARMS_RUN)
        for arm, seeds in runs.items():
            run = seeds["0"]
            assert run["status"] == "done", (budget, arm, run.get("status"))
            assert set(run["dice"]) == {*structures, "mean"} and all(0 <= v <= 1 for v in run["dice"].values())
            assert set(run["test"]["dice"]) == {*structures, "mean"}  # the phantoms' imagesTs/labelsTs
            assert [e["epoch"] for e in run["curve"]] == [0, 1] and run["wall_seconds"] > 0
            assert run["iterations"] == 8 and all(e["peak_memory_gib"] > 0 for e in run["curve"])
    assert set(result["summary"]["1"]["xlstm"]["vs_stock"]["mean"]) == {"mean", "low", "high", "pairs", "patients",
                                                                        "seeds", "per_seed", "seed_sd"}
    assert result["summary"]["1"]["xlstm"]["vs_twin"]["arm"] == "xlstm_no_mlstm"  # what the mLSTM is worth
    assert result["encoder_leakage"] is None and result["val_patients"] == development
    # one preprocessing; the arms' plans differ in the network only; the XLSTMUNet arms are shaped like the encoder
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    plans = {arm: json.loads((pre / f"{name}.json").read_text())["configurations"]["3d_fullres"]
             for arm, name in result["plans"].items()}
    assert len({p["data_identifier"] for p in plans.values()}) == 1 and len({str(p["patch_size"]) for p in plans.values()}) == 1
    assert plans["stock"]["architecture"]["network_class_name"] == PLAIN_CONV_UNET
    assert plans["xlstm_no_mlstm"]["architecture"]["arch_kwargs"]["mlstm_stages"] == []
    assert set(plans["xlstm_light"]["architecture"]["arch_kwargs"]["n_blocks_per_stage"]) == {1}
    encoder_arch = torch.load(tmp_path / "pt" / "encoder_export.pt", weights_only=True)
    assert plans["xlstm"]["architecture"]["arch_kwargs"]["features_per_stage"] == \
        encoder_arch["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"]["features_per_stage"]
    results = Path(nnunet_env["nnUNet_results"]) / dataset.name
    logs = {arm: "".join(p.read_text() for p in (results / f"{run['trainer']}__{run['plans']}__3d_fullres" / "fold_0")
                         .glob("training_log_*.txt")) for arm, run in
            ((a, seeds["0"]) for a, seeds in result["runs"]["1"].items())}
    assert all(("loaded pretrained encoder" in log) == (arm == "xlstm_pretrained") for arm, log in logs.items())
    assert all("precision: " in log and "seed 0" in log for log in logs.values())
    speed = result["speed"]
    assert speed["xlstm"]["parameters"] > speed["xlstm_no_mlstm"]["parameters"] > 0
    assert all(s["step_seconds"] > 0 and s["peak_memory_gib"] > 0 and s["predict_seconds_per_volume"] > 0
               for s in speed.values())
    report = (out / "benchmark.md").read_text()
    assert all(ARMS[a] in report for a in ARMS_RUN) and "## 2 labelled patients" in report
    for png in ("dice.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 10_000
    # a second call, here with one arm, finds its runs done: nothing is retrained, and nothing the other arms
    # measured is lost
    arms_at = command.index("--arms") + 1
    second = subprocess.run(command[:arms_at] + ["stock"] + command[arms_at + len(ARMS_RUN):], env=nnunet_env,
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "benchmark.json").read_text())
    assert again["runs"] == result["runs"] and "nnUNetv2_train" not in second.stdout
    assert again["speed"] == result["speed"] and again["trainers"] == result["trainers"]
    # the report command rebuilds the same summary from the file alone (as for files from several machines)
    merged = subprocess.run([str(bin_ / "nnunetv2_xlstm_benchmark_report"), str(out / "benchmark.json"), "--output",
                             str(tmp_path / "merged")], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr[-3000:]
    rebuilt = json.loads((tmp_path / "merged" / "benchmark.json").read_text())["summary"]
    assert json.dumps(rebuilt, sort_keys=True) == json.dumps(again["summary"], sort_keys=True)  # NaN-safe
    # another process (e.g. on another GPU) reuses the splits, plans and preprocessed data
    planned = subprocess.run(command[:-4] + ["--output", str(tmp_path / "other"), "--plan_only"], env=nnunet_env,
                             capture_output=True, text=True)
    assert planned.returncode == 0 and "Preprocessing" not in planned.stdout, planned.stderr[-3000:]
    assert json.loads((tmp_path / "other" / "benchmark.json").read_text())["plans"] == result["plans"]
    # so does one without the encoder (e.g. the scratch arms beside a pretrained call still training): its plans
    # change, the preprocessed data is not redone under the other call's feet
    case = next((pre / f"{result['plans']['stock'].removesuffix('_stock')}_3d_fullres").glob("*.pkl"))
    written = case.stat().st_mtime_ns
    encoder_at = command.index("--pretrained_encoder")
    scratch = subprocess.run(command[:encoder_at] + ["--arms", "stock", "xlstm", "--output", str(tmp_path / "scratch"),
                                                     "--device", "cpu", "--plan_only"],
                             env=nnunet_env, capture_output=True, text=True)
    assert scratch.returncode == 0 and "Preprocessing" not in scratch.stdout, scratch.stderr[-3000:]
    assert case.stat().st_mtime_ns == written
    assert "pretrained_encoder" not in json.loads((pre / f"{result['plans']['xlstm']}.json").read_text())
    other = subprocess.run(command[:4] + ["full"] + command[5:], env=nnunet_env, capture_output=True, text=True)
    assert other.returncode != 0 and "choose another --output" in other.stderr
    # another seed with a training-time budget: its own run folders; the budget ends training after the first epoch
    timed = subprocess.run(command[:-4] + ["--output", str(tmp_path / "timed"), "--arms", "stock", "xlstm", "--seeds",
                                           "1", "--minutes", "0.001", "--device", "cpu"], env=nnunet_env,
                           capture_output=True, text=True)
    assert timed.returncode == 0, timed.stdout[-3000:] + timed.stderr[-3000:]
    timed_result = json.loads((tmp_path / "timed" / "benchmark.json").read_text())
    assert timed_result["minutes"] == 0.001 and timed_result["seeds"] == [1]
    assert {r["1"]["iterations"] for b in timed_result["runs"].values() for r in b.values()} == {4}
    assert (results / ".." / "benchmark_seed1_0.001min" / dataset.name).resolve().is_dir()
    bad = subprocess.run(command[:-4] + ["--output", str(tmp_path / "bad"), "--seeds", "1", "1"], env=nnunet_env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "distinct integers" in bad.stderr and not (tmp_path / "bad").exists()
    # the full preset plans the stock arms with nnU-Net's own planners
    full = subprocess.run(command[:4] + ["full"] + command[5:-4] + ["--output", str(tmp_path / "full"), "--plan_only"],
                          env=nnunet_env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]
    assert json.loads((tmp_path / "full" / "benchmark.json").read_text())["plans"] == {
        "stock": "nnUNetPlans", "resenc_m": "nnUNetResEncUNetMPlans", "xlstm": "nnUNetPlansXLSTMEncoder",
        "xlstm_no_mlstm": "nnUNetPlansXLSTMEncoder_no_mlstm", "xlstm_light": "nnUNetPlansXLSTMEncoder_light",
        "xlstm_pretrained": "nnUNetPlansXLSTMEncoder", "xlstm_pretrained_decoder": "nnUNetPlansXLSTMEncoder",
        "xlstm_semi": "nnUNetPlansXLSTMEncoder", "xlstm_pretrained_semi": "nnUNetPlansXLSTMEncoder",
        "xlstm_pretrained_decoder_semi": "nnUNetPlansXLSTMEncoder"}


def _result(runs: dict, machine: str = "m1", **fields) -> dict:
    return {"dataset": "Dataset801_ACDC", "format": 2, "minutes": 20, "iterations": None, "structures": ["RV"],
            "val_patients": ["patient002", "patient019"], "group_pattern": r"^(.*?)(?:_frame\d+)?$",
            "preset": {"name": "cpu-long", "purpose": "p", "changes": ["c"]}, "budgets": {"3": ["patient099"]},
            "seeds": sorted({int(s) for arms in runs.values() for seeds in arms.values() for s in seeds}),
            "machine": machine, "evaluated_on": "e", "command": f"bench on {machine}", "runs": runs, **fields}


def _frames(values: list[float]) -> dict:
    """A run scored on two patients with two frames each."""
    run = _run({"RV": values})
    run["per_case"] = {f"patient{p}_frame0{f}": c for (p, f), c in
                       zip([("002", 1), ("002", 2), ("019", 1), ("019", 2)], run["per_case"].values())}
    return run


def test_benchmark_report_merges_runs_from_several_files(tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark.merge import merge_results, report_entry

    a = _result({"3": {"xlstm": {"0": _frames([0.5, 0.5, 0.7, 0.7]), "1": _frames([0.6, 0.6, 0.6, 0.6])},
                       "xlstm_semi": {"0": {"status": "failed: killed"}}}})
    b = _result({"3": {"xlstm_no_mlstm": {"0": _frames([0.4, 0.4, 0.7, 0.7]), "1": _frames([0.4, 0.4, 0.6, 0.6])},
                       "xlstm_semi": {"0": _frames([0.6, 0.6, 0.8, 0.8])},
                       "xlstm": {"1": _frames([0.6, 0.6, 0.6, 0.6])}}}, machine="m2")
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for f, r in zip(files, (a, b)):
        f.write_text(json.dumps(r))
    merged = merge_results(files)
    runs = merged["runs"]["3"]
    assert set(runs["xlstm"]) == {"0", "1"} and runs["xlstm_semi"]["0"]["status"] == "done"  # done beats failed
    assert merged["machine"] == "m1; m2" and merged["command"] == ["bench on m1", "bench on m2"]
    summary = merged["summary"]["3"]
    # XLSTMUNet − without mLSTM: patient002 +0.1 (seed 0) and +0.2 (seed 1), patient019 0 and 0: each patient's frames
    # and seeds resampled together, so the interval runs from patient019's 0 to patient002's +0.15
    mlstm = summary["xlstm"]["vs_twin"]
    assert mlstm["arm"] == "xlstm_no_mlstm" and mlstm["mean"]["patients"] == 2 and mlstm["mean"]["pairs"] == 8
    assert mlstm["mean"]["mean"] == pytest.approx(0.075)
    assert (mlstm["mean"]["low"], mlstm["mean"]["high"]) == (pytest.approx(0.0), pytest.approx(0.15))
    assert summary["xlstm_semi"]["vs_twin"]["mean"]["mean"] == pytest.approx(0.1)  # seed 0 only
    assert merge_results(files[:1])["summary"]["3"]["xlstm"].get("vs_twin") is None  # the twin came from b

    out = tmp_path / "merged"
    report_entry([str(f) for f in files] + ["--output", str(out)])
    written = json.loads((out / "benchmark.json").read_text())
    assert written["merged_from"] == [str(f) for f in files] and (out / "dice.png").stat().st_size > 0
    assert "| L − L | +0.075 [+0.000, +0.150] | **+0.075 [+0.000, +0.150]** | +0.050, +0.100 |" in \
        (out / "benchmark.md").read_text()  # the mLSTM's paired difference, per seed: seed 0 +0.05, seed 1 +0.10


def test_benchmark_report_pairs_the_other_side_of_a_two_by_two(tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark.merge import merge_results, report_entry

    cells = {"xlstm": [0.5, 0.5, 0.6, 0.6], "xlstm_semi": [0.6, 0.6, 0.8, 0.8],
             "xlstm_pretrained_decoder": [0.5, 0.5, 0.7, 0.7], "xlstm_pretrained_decoder_semi": [0.7, 0.7, 0.8, 0.8]}
    runs = {arm: {"0": {**_frames(values), "label": arm.upper()}} for arm, values in cells.items()}
    (tmp_path / "a.json").write_text(json.dumps(_result({"3": runs})))
    pair = ("xlstm_pretrained_decoder_semi", "xlstm_semi")
    summary = merge_results([tmp_path / "a.json"], pairs=[pair, ("xlstm_semi", "xlstm")])["summary"]["3"]
    assert summary["xlstm_pretrained_decoder_semi"]["vs_twin"]["arm"] == "xlstm_pretrained_decoder"
    other_side = summary["xlstm_pretrained_decoder_semi"]["vs_arms"]["xlstm_semi"]["mean"]
    # patient002 +0.1 (both frames), patient019 0: the interval runs from one patient's difference to the other's
    assert (other_side["mean"], other_side["low"], other_side["high"]) == pytest.approx((0.05, 0.0, 0.1))
    assert "vs_arms" not in summary["xlstm_semi"]  # its twin's difference is there already, and not twice
    report_entry([str(tmp_path / "a.json"), "--output", str(tmp_path / "out"), "--pair", *pair])
    text = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| XLSTM_PRETRAINED_DECODER_SEMI − XLSTM_SEMI | +0.050 [+0.000, +0.100] |" in text
    assert text.index("− XLSTM_PRETRAINED_DECODER |") < text.index("− XLSTM_SEMI |")  # after the twins
    with pytest.raises(InputError, match="--pair: no run of xlstm_pretrained_semi in .*a.json .*its arms: xlstm, "):
        merge_results([tmp_path / "a.json"], pairs=[("xlstm_pretrained_semi", "xlstm")])


@pytest.mark.parametrize("change, message", [
    ({"minutes": 10}, r"b.json and .*a.json measured different things \(minutes differ\)"),
    ({"budgets": {"3": ["patient100"]}}, r"b.json: its 3-patient budget trains on other patients"),
    ({"runs": {"3": {"xlstm": {"0": _frames([0.1, 0.1, 0.1, 0.1])}}}}, r"xlstm, 3 patients, seed 0 differs between"),
    ({"runs": None}, r"b.json: holds no runs"),
])
def test_benchmark_report_refuses_results_that_do_not_belong_together(tmp_path: Path, change: dict,
                                                                      message: str) -> None:
    from nnunetv2_xlstm.benchmark.merge import merge_results

    a = _result({"3": {"xlstm": {"0": _frames([0.5, 0.5, 0.7, 0.7])}}})
    b = {**a, **change}
    if b["runs"] is None:
        del b["runs"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(InputError, match=message):
        merge_results([tmp_path / "a.json", tmp_path / "b.json"])
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(InputError, match=r"b.json: not a readable benchmark.json"):
        merge_results([tmp_path / "a.json", tmp_path / "b.json"])


def _loo_fold(patient: str, stock: float, xlstm: float, iterations: int) -> dict:
    """One leave-one-out fold: ``patient`` held out, one case each, scored RV by both arms (seed 0)."""
    def run(value: float) -> dict:
        r = _run({"RV": [value]}, iterations)
        r["per_case"] = {patient: r["per_case"]["case0"]}
        return r
    return _result({"2": {"stock": {"0": run(stock)}, "xlstm": {"0": run(xlstm)}}}, val_patients=[patient],
                   budgets={"2": sorted({"pat4", "pat5", "pat58"} - {patient})})


def test_benchmark_report_joins_cross_validation_folds(tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark.merge import merge_results, report_entry

    folds = [_loo_fold("pat4", 0.2, 0.5, 100), _loo_fold("pat5", 0.4, 0.4, 200), _loo_fold("pat58", 0.6, 0.9, 300)]
    files = [tmp_path / f"fold{i}.json" for i in range(3)]
    for f, r in zip(files, folds):
        f.write_text(json.dumps(r))
    with pytest.raises(InputError, match=r"measured different things \(val_patients differ\)"):
        merge_results(files)  # without --folds, folds are different benchmarks
    joined = merge_results(files, folds=True)
    xlstm = joined["runs"]["2"]["xlstm"]["0"]
    assert sorted(xlstm["per_case"]) == ["pat4", "pat5", "pat58"] and xlstm["iterations"] == 200
    assert xlstm["dice"]["RV"] == pytest.approx(0.6) and joined["runs"]["2"]["stock"]["0"]["dice"]["mean"] == \
        pytest.approx(0.4)
    assert joined["val_patients"] == ["pat4", "pat5", "pat58"] and joined["budgets"]["2"] == ["pat4", "pat5", "pat58"]
    assert [f["val_patients"] for f in joined["folds"]] == [["pat4"], ["pat5"], ["pat58"]]
    # xlstm − stock per patient: +0.3, 0, +0.3; the interval over the 3 patients runs from 0 to +0.3
    difference = joined["summary"]["2"]["xlstm"]["vs_stock"]["mean"]
    assert difference["mean"] == pytest.approx(0.2) and difference["patients"] == 3
    assert (difference["low"], difference["high"]) == (pytest.approx(0.0), pytest.approx(0.3))

    folds[2]["runs"]["2"]["xlstm"]["0"] = {"status": "failed: killed"}  # a fold not finished: the run is not done
    files[2].write_text(json.dumps(folds[2]))
    assert joined["runs"]["2"]["xlstm"]["0"]["status"] == "done"
    assert merge_results(files, folds=True)["runs"]["2"]["xlstm"]["0"]["status"] == f"not finished in {files[2]}"
    files[2].write_text(json.dumps(folds[1]))  # the same patient held out twice
    with pytest.raises(InputError, match=r"both hold out pat5"):
        merge_results(files, folds=True)

    files[2].write_text(json.dumps(_loo_fold("pat58", 0.6, 0.9, 300)))
    report_entry(["--folds", *map(str, files), "--output", str(tmp_path / "loo")])
    text = (tmp_path / "loo" / "benchmark.md").read_text()
    assert "3 patients, each scored by the one of 3 cross-validation folds that held it out" in text


def test_a_run_folder_of_another_split_is_refused_not_reused(monkeypatch, tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark import run_benchmark
    from nnunetv2_xlstm.benchmark.run_benchmark import train_and_score

    folder = tmp_path / "Dataset803_HVSMR" / "T__P__3d_fullres" / "fold_0"
    folder.mkdir(parents=True)
    (folder / "checkpoint_final.pth").write_bytes(b"a finished run of the first fold")
    (folder / "benchmark_split.json").write_text(json.dumps({"train": ["pat5", "pat58"], "val": ["pat4"]}))
    run = {"trainer": "T", "plans": "P", "fold": 0}
    with pytest.raises(InputError, match=r"fold_0 holds a run trained on another split"):
        train_and_score(run, 803, "Dataset803_HVSMR", "cpu", {"nnUNet_results": str(tmp_path)}, tmp_path / "log",
                        validation=(tmp_path, ["pat5"], None, ".nii.gz"), test=None, predictions=tmp_path / "p",
                        split={"train": ["pat4", "pat58"], "val": ["pat5"]})
    assert "curve" not in run and not (tmp_path / "log").exists()  # nothing trained, scored or reused

    fresh = tmp_path / "Dataset803_HVSMR" / "T__P__3d_fullres" / "fold_1"
    recorded = []

    def train(args: list[str], env: dict, log: Path) -> None:  # stands in for nnUNetv2_train: what the folder holds
        recorded.append(json.loads((fresh / "benchmark_split.json").read_text()))
        raise RuntimeError("training stopped here")

    monkeypatch.setattr(run_benchmark, "run_command", train)
    with pytest.raises(RuntimeError, match="training stopped here"):
        train_and_score({**run, "fold": 1}, 803, "Dataset803_HVSMR", "cpu", {"nnUNet_results": str(tmp_path)},
                        tmp_path / "log", validation=(tmp_path, ["pat5"], None, ".nii.gz"), test=None,
                        predictions=tmp_path / "p", split={"train": ["pat4", "pat58"], "val": ["pat5"]})
    assert recorded == [{"train": ["pat4", "pat58"], "val": ["pat5"]}]  # a new folder records its split first


def test_a_reused_run_reports_the_time_it_was_trained_in(monkeypatch, tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark import run_benchmark
    from nnunetv2_xlstm.benchmark.run_benchmark import WALL_SECONDS_FILE, train_and_score

    folder = tmp_path / "Dataset801_ACDC" / "T__P__3d_fullres" / "fold_0"
    calls = []

    def train(args: list[str], env: dict, log: Path) -> None:  # stands in for nnUNetv2_train: a finished run
        calls.append(args)
        (folder / "validation").mkdir(parents=True)
        (folder / "checkpoint_final.pth").write_bytes(b"trained")
        (folder / "validation" / "summary.json").write_text("{}")

    monkeypatch.setattr(run_benchmark, "run_command", train)
    monkeypatch.setattr(run_benchmark, "curve_from_checkpoint", lambda folder: [{"epoch": 0}])
    monkeypatch.setattr(run_benchmark, "evaluate_folder", lambda *args: {})
    monkeypatch.setattr(run_benchmark, "scores", lambda evaluation, structures: {})
    kwargs = dict(dataset_id=801, dataset_name="Dataset801_ACDC", device="cpu", env={"nnUNet_results": str(tmp_path)},
                  log=tmp_path / "log", validation=(tmp_path, [], SimpleNamespace(structures=["RV"]), ".nii.gz"),
                  test=None, predictions=tmp_path / "p")
    first, second = ({"trainer": "T", "plans": "P", "fold": 0, "iterations_per_epoch": 25} for _ in range(2))
    train_and_score(first, **kwargs)
    assert len(calls) == 1 and first["wall_seconds"] > 0
    assert json.loads((folder / WALL_SECONDS_FILE).read_text()) == first["wall_seconds"]
    train_and_score(second, **kwargs)  # another benchmark with the same preset, seed and budget reuses the run
    assert len(calls) == 1 and second["wall_seconds"] == first["wall_seconds"]

    (folder / WALL_SECONDS_FILE).unlink()  # a run trained before its time was kept with it: unknown, not 0
    third = {"trainer": "T", "plans": "P", "fold": 0, "iterations_per_epoch": 25}
    train_and_score(third, **kwargs)
    assert "wall_seconds" not in third
    runs = {"3": {"xlstm": {"0": {**_frames([0.5] * 4)}}}}
    del runs["3"]["xlstm"]["0"]["wall_seconds"]
    result = _result(runs)
    result["summary"] = summarise(runs, result["structures"], result["group_pattern"])
    assert result["summary"]["3"]["xlstm"]["wall_minutes"] is None
    assert next(line for line in markdown_report(result).splitlines() if line.startswith("| L |")).endswith("| — |")


def _dice_figure(monkeypatch, runs: dict, pairs: tuple = ()) -> tuple[dict, object]:
    """The result of ``runs`` with its summary, and the figure ``plot_dice`` draws of it (not saved)."""
    from nnunetv2_xlstm.benchmark import report

    result = _result(runs)
    result["summary"] = summarise(runs, result["structures"], result["group_pattern"], pairs)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, out: figures.append(fig))
    report.plot_dice(result, Path("dice.png"))
    (fig,) = figures
    return result, fig


@pytest.mark.parametrize("arms, panel_rows, lower_label", [
    (("stock", "xlstm"), 2, "Δ Dice vs stock nnU-Net"),
    (("xlstm", "xlstm_pretrained"), 2, "Δ Dice vs its twin"),  # no stock arm: the pretrained arm against scratch
    (("xlstm_light",), 1, None),  # nothing to pair: the bars alone
])
def test_dice_plot_pairs_with_stock_else_with_twins(monkeypatch, arms: tuple, panel_rows: int,
                                                    lower_label: str | None) -> None:
    runs = {"3": {arm: {"0": _frames([0.5 + 0.1 * i] * 4)} for i, arm in enumerate(arms)}}
    _, fig = _dice_figure(monkeypatch, runs)
    assert len(fig.axes) == panel_rows
    if lower_label:
        lower = fig.axes[1]
        assert lower.get_ylabel().startswith(lower_label)
        (points,) = [line for line in lower.lines if line.get_marker() == "o"]
        assert points.get_ydata()[-1] == pytest.approx(0.1)  # the second arm is 0.1 above the first everywhere


def test_dice_plot_shows_the_pairs_asked_for_beside_the_twins(monkeypatch) -> None:
    cells = {"xlstm": 0.5, "xlstm_semi": 0.7, "xlstm_pretrained_decoder": 0.55, "xlstm_pretrained_decoder_semi": 0.8}
    runs = {"3": {arm: {"0": {**_frames([dice] * 4), "label": arm}} for arm, dice in cells.items()}}
    _, fig = _dice_figure(monkeypatch, runs, pairs=[("xlstm_pretrained_decoder_semi", "xlstm_semi")])
    lower = fig.axes[1]
    shown = {label: bars.lines[0] for bars, label in zip(*lower.get_legend_handles_labels())}  # the points' line
    points = {label: line.get_ydata()[-1] for label, line in shown.items()}
    assert points == pytest.approx({"xlstm_semi − xlstm": 0.2, "xlstm_pretrained_decoder − xlstm": 0.05,
                                    "xlstm_pretrained_decoder_semi − xlstm_pretrained_decoder": 0.25,
                                    "xlstm_pretrained_decoder_semi − xlstm_semi": 0.1})
    assert shown["xlstm_pretrained_decoder_semi − xlstm_semi"].get_marker() != shown["xlstm_semi − xlstm"].get_marker()


def test_an_arm_keeps_its_colour_and_row_across_budgets_run_in_another_order(monkeypatch) -> None:
    """A merged report whose budgets ran their arms in different orders: each arm keeps one colour and one bar
    position in every panel, and stock nnU-Net heads every table."""
    from matplotlib.colors import to_hex

    from nnunetv2_xlstm.benchmark import report
    from nnunetv2_xlstm.benchmark.arms import ARMS

    run = lambda arm, dice: {"0": {**_frames([dice] * 4), "label": ARMS[arm]}}
    runs = {"3": {"xlstm": run("xlstm", 0.5), "stock": run("stock", 0.6)},
            "7": {"stock": run("stock", 0.7), "xlstm": run("xlstm", 0.8), "xlstm_light": run("xlstm_light", 0.9)}}
    result, fig = _dice_figure(monkeypatch, runs)
    bars = {}  # arm value -> (colour, x offset within its structure) per panel
    for ax in fig.axes[:2]:
        for patch in ax.patches:
            bars.setdefault(round(patch.get_height(), 3), set()).add(
                (to_hex(patch.get_facecolor()), round(patch.get_x() % 1, 6)))
    stock, xlstm = bars[0.6] | bars[0.7], bars[0.5] | bars[0.8]
    assert len(stock) == 1 and len(xlstm) == 1 and stock != xlstm  # the same look in both panels, distinct arms
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "nnU-Net (PlainConvUNet)", "XLSTMUNet, scratch", "XLSTMUNet, one block per stage"]
    md = report.markdown_report(result)
    for budget in ("3", "7"):
        table = md.split(f"## {budget} labelled patients")[1]
        assert table.index("nnU-Net (PlainConvUNet)") < table.index("XLSTMUNet, scratch")


def test_long_arm_labels_neither_shrink_the_panels_nor_get_cut_off(monkeypatch, tmp_path: Path) -> None:
    from nnunetv2_xlstm.benchmark import report

    long = "XLSTMUNet, pretrained encoder and decoder (warmup=0.3,warmup_encoder_lr=0.1)"
    curve = [{"epoch": e, "pseudo_dice": 0.1 * e, "train_loss": 1.0 - 0.1 * e} for e in range(5)]
    runs = {"3": {"xlstm": {"0": {**_frames([0.5] * 4), "curve": curve}},
                  "xlstm_pretrained_decoder": {"0": {**_frames([0.6] * 4), "curve": curve, "label": long}}}}
    result = _result(runs)
    result["summary"] = summarise(runs, result["structures"], result["group_pattern"])
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, out: figures.append(fig))
    report.plot_curves(result, tmp_path / "curves.png")
    report.plot_dice(result, tmp_path / "dice.png")
    for fig in figures:
        fig.canvas.draw()
        assert all(ax.get_position().width > 0.6 for ax in fig.axes)  # a legend beside them took most of the width
        texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert long in texts and any(t.startswith(long + " − ") for t in texts) == (fig is figures[1])
    monkeypatch.undo()  # and saved for real: nothing outside the panels is cut off
    report.plot_curves(result, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
