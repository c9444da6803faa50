"""Plan -> nnUNetv2_train -> nnUNetv2_predict -> nnUNetv2_evaluate_folder through the real commands, on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnunetv2_xlstm.demo.run_demo import MARKER, run_demo
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS


@pytest.mark.slow
def test_demo_chain_on_phantoms(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    out = tmp_path / "demo"
    dice = run_demo(out, dataset_id=992, num_train=5, num_test=2, trainer="nnUNetTrainerXLSTM_smoke")
    structures = [k for k in WHOLE_HEART_LABELS if k != "background"]
    assert list(dice) == [*structures, "mean"] and all(0.0 <= v <= 1.0 for v in dice.values())
    fold = out / "nnUNet_results" / "Dataset992_WholeHeartPhantom" / \
        "nnUNetTrainerXLSTM_smoke__nnUNetPlansXLSTM__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    preds = sorted((out / "predictions").glob("*.nii.gz"))
    labels = out / "nnUNet_raw" / "Dataset992_WholeHeartPhantom" / "labelsTs"
    assert [p.name for p in preds] == sorted(p.name for p in labels.iterdir())
    pred, gt = sitk.ReadImage(str(preds[0])), sitk.ReadImage(str(labels / preds[0].name))
    assert pred.GetSize() == gt.GetSize() and pred.GetSpacing() == gt.GetSpacing()
    assert (out / "overlay.png").stat().st_size > 10_000
    assert json.loads((out / "demo_result.json").read_text())["dice"] == dice
    # running again replaces the previous demo output, but never a folder that is not one
    other = tmp_path / "not_a_demo"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not a demo output folder"):
        run_demo(other)
    assert (other / "keep.txt").exists() and (out / MARKER).exists()
    shutil.rmtree(out)
