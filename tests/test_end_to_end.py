"""The demo chain through the real commands, on CPU: split -> pretrain (without the validation cases) -> plan like
the encoder -> nnUNetv2_train (pretrained and scratch) -> predict -> evaluate; then find_best_configuration and
ensembling on its models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnunetv2_xlstm.commands import run_command
from nnunetv2_xlstm.demo.run_demo import ARMS, CAVEAT, CONFIG, MARKER, PLANS, run_demo
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS


@pytest.mark.slow
def test_demo_chain_on_phantoms(tmp_path: Path, nnunet_env: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    dice = run_demo(out, dataset_id=992, num_train=6, num_test=2, schedule="smoke", labelled=2,
                    pretrain_preset="smoke")
    structures = [k for k in WHOLE_HEART_LABELS if k != "background"]
    assert list(dice) == list(ARMS)
    assert all(list(d) == [*structures, "mean"] and all(0.0 <= v <= 1.0 for v in d.values()) for d in dice.values())
    dataset = out / "nnUNet_raw" / "Dataset992_WholeHeartPhantom"
    pre = out / "nnUNet_preprocessed" / dataset.name
    results = out / "nnUNet_results" / dataset.name
    # the few-label split: 2 labelled, 2 validation, 2 unlabelled cases, all listed for pretraining
    splits = json.loads((pre / "splits_final.json").read_text())
    assert len(splits) == 1 and len(splits[0]["train"]) == 2 and len(splits[0]["val"]) == 2
    assert len((pre / "unlabelled_fold0.txt").read_text().split()) == 2
    # the pretrained arm loaded the encoder, the scratch arm did not; both trained on the same plans and split
    logs = {arm: next((results / f"{tr}_smoke__{PLANS}__{CONFIG}" / "fold_0").glob("training_log_*.txt")).read_text()
            for arm, tr in ARMS.items()}
    assert "loaded pretrained encoder" in logs["pretrained"] and "loaded pretrained encoder" not in logs["scratch"]
    assert all("encoder frozen from epoch 0" in log and "encoder trainable from epoch 1" in log
               for log in logs.values())
    preds = sorted((out / "predictions_pretrained").glob("*.nii.gz"))
    labels = dataset / "labelsTs"
    assert [p.name for p in preds] == sorted(p.name for p in labels.iterdir())
    pred, gt = sitk.ReadImage(str(preds[0])), sitk.ReadImage(str(labels / preds[0].name))
    assert pred.GetSize() == gt.GetSize() and pred.GetSpacing() == gt.GetSpacing()
    assert (out / "overlay.png").stat().st_size > 10_000 and (out / "pretraining" / "progress.png").is_file()
    assert json.loads((out / "demo_result.json").read_text())["dice"] == dice
    assert CAVEAT in capsys.readouterr().out  # the table comes with what one phantom run can and cannot show

    # downstream of training: model selection over both arms (ensemble included) and ensembling of predictions
    env = {**nnunet_env, **{k: str(out / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    trainers = [f"{tr}_smoke" for tr in ARMS.values()]
    run_command(["nnUNetv2_find_best_configuration", "992", "-p", PLANS, "-c", CONFIG, "-tr", *trainers, "-f", "0",
                 "-np", "1"], env)
    info = json.loads((results / "inference_information.json").read_text())
    assert {m["trainer"] for m in info["best_model_or_ensemble"]["selected_model_or_models"]} <= set(trainers)
    assert any(k.startswith("ensemble") for k in json.loads((results / "inference_information.json").read_text())[
        "all_results"]), "the ensemble of both arms was evaluated"
    folders = []
    for tr in trainers:
        folders.append(tmp_path / f"prob_{tr}")
        run_command(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(folders[-1]), "-d", "992", "-c",
                     CONFIG, "-f", "0", "-tr", tr, "-p", PLANS, "-device", "cpu", "--save_probabilities",
                     "--disable_tta", "-npp", "1", "-nps", "1"], env)
    run_command(["nnUNetv2_ensemble", "-i", *map(str, folders), "-o", str(tmp_path / "ensemble"), "-np", "1"], env)
    run_command(["nnUNetv2_evaluate_folder", str(labels), str(tmp_path / "ensemble"), "-djfile",
                 str(pre / "dataset.json"), "-pfile", str(pre / f"{PLANS}.json"), "-np", "1"], env)
    summary = json.loads((tmp_path / "ensemble" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2 and set(summary["mean"]) == {str(i) for i in range(1, 8)}

    # running the demo again replaces its previous output, but never a folder that is not one
    other = tmp_path / "not_a_demo"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not a demo output folder"):
        run_demo(other)
    assert (other / "keep.txt").exists() and (out / MARKER).exists()
    shutil.rmtree(out)
