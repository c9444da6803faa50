"""Smoke test on the real ACDC data beside the project (skips where ../shared/data is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import require_shared_data
from nnunetv2_xlstm.commands import run_command

PATIENTS = ("patient099", "patient038", "patient050")  # the fixed 3-patient few-label list of the data README


@pytest.mark.slow
def test_acdc_plan_train_predict_evaluate(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    source = require_shared_data("nnUNet_raw", "Dataset801_ACDC")
    raw = Path(nnunet_env["nnUNet_raw"]) / source.name
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    cases = [f"{p}_frame0{f}" for p in PATIENTS for f in (1, 2)]
    for case in cases:  # links, never copies, of the real data
        os.symlink(source / "imagesTr" / f"{case}_0000.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz")
        os.symlink(source / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    dataset_json = json.loads((source / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "numTraining": len(cases)}))

    def run(*args: str) -> None:
        run_command(list(args), nnunet_env)

    run("nnunetv2_xlstm_plan_and_preprocess", "-d", "801", "-c", "3d_fullres", "-np", "2", "-npfp", "2",
        "-overwrite_target_spacing", "10", "3", "3", "--base_features", "16", "--max_features", "256",
        "--batch_size", "2")
    plans = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / source.name / "nnUNetPlansXLSTM.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [10.0, 3.0, 3.0] and config["architecture"]["arch_kwargs"]["mlstm_stages"]
    # the cpu preset's 160 iterations (bf16: about 2 minutes on 2 cores): enough to learn the three structures a bit
    run("nnUNetv2_train", "801", "3d_fullres", "0", "-tr", "nnUNetTrainerBenchmark_cpu", "-p", "nnUNetPlansXLSTM",
        "-device", "cpu")
    pred = tmp_path / "pred"
    run("nnUNetv2_predict", "-i", str(raw / "imagesTr"), "-o", str(pred), "-d", "801", "-c", "3d_fullres", "-f", "0",
        "-tr", "nnUNetTrainerBenchmark_cpu", "-p", "nnUNetPlansXLSTM", "-device", "cpu", "--disable_tta",
        "-npp", "1", "-nps", "1")
    run("nnUNetv2_evaluate_folder", str(raw / "labelsTr"), str(pred), "-djfile", str(raw / "dataset.json"),
        "-pfile", str(Path(nnunet_env["nnUNet_preprocessed"]) / source.name / "nnUNetPlansXLSTM.json"), "-np", "1")
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"} and len(summary["metric_per_case"]) == len(cases)
    # a quality floor (on the labelled cases themselves): a pipeline that trains on wrong data stays near 0
    assert summary["mean"]["3"]["Dice"] > 0.5 and summary["foreground_mean"]["Dice"] > 0.3, summary["mean"]
    out, ref = sitk.ReadImage(str(pred / f"{cases[0]}.nii.gz")), sitk.ReadImage(
        str(source / "labelsTr" / f"{cases[0]}.nii.gz"))
    assert out.GetSize() == ref.GetSize() and out.GetSpacing() == ref.GetSpacing()
