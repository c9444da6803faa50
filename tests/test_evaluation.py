"""Evaluation on a separate test folder: Dice, HD95, label remapping and ignore values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.evaluation import LabelSpec, dice, evaluate_entry, evaluate_folder, hd95, parse_spec, score_case


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_dice_equals_reference_formula() -> None:
    rng = np.random.default_rng(0)
    p, r = rng.random((8, 9, 10)) > 0.5, rng.random((8, 9, 10)) > 0.6
    assert math.isclose(dice(p, r), 2 * (p & r).sum() / (p.sum() + r.sum()))
    assert dice(p, p) == 1.0 and dice(np.zeros_like(p), np.zeros_like(p)) == 1.0  # absent from both: nothing missed


def test_hd95_equals_brute_force_on_surfaces() -> None:
    spacing = (2.0, 1.0, 0.5)
    p, r = ball((20, 24, 28), (10, 12, 13), 6), ball((20, 24, 28), (9, 13, 15), 5)
    surface = lambda m: m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))
    points = lambda m: np.argwhere(surface(m)) * np.array(spacing)
    d = cdist(points(p), points(r))
    expected = np.percentile(np.hstack([d.min(axis=1), d.min(axis=0)]), 95)
    assert hd95(p, r, spacing) == pytest.approx(expected)
    assert hd95(p, p, spacing) == 0.0 and hd95(np.zeros_like(p), np.zeros_like(p), spacing) == 0.0
    diagonal = math.sqrt((20 * 2.0) ** 2 + (24 * 1.0) ** 2 + (28 * 0.5) ** 2)  # a miss costs the image diagonal
    assert hd95(p, np.zeros_like(p), spacing) == pytest.approx(diagonal) == hd95(np.zeros_like(p), r, spacing)
    a, b = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    a[2, 2, 2], b[5, 2, 2] = True, True  # 3 voxels apart along z, at 2 mm
    assert hd95(a, b, spacing) == pytest.approx(6.0)


def test_remap_between_label_conventions() -> None:
    # model: RV=1, MYO=2, LV=3; reference: MYO=1, LV=2 (no RV)
    reference = np.zeros((4, 6, 6), int)
    reference[:, 1:3, 1:3], reference[:, 3:5, 3:5] = 1, 2
    prediction = np.zeros_like(reference)
    prediction[:, 1:3, 1:3], prediction[:, 3:5, 3:5], prediction[:, 0, :] = 2, 3, 1  # plus RV voxels
    spec = parse_spec(["MYO=1", "LV=2"], ["1:0", "2:1", "3:2"])
    scores = score_case(prediction, reference, (1.0, 1.0, 1.0), spec)
    assert scores["MYO"]["Dice"] == 1.0 and scores["LV"]["Dice"] == 1.0
    unmapped = score_case(prediction, reference, (1.0, 1.0, 1.0), parse_spec(["MYO=1", "LV=2"]))
    assert unmapped["MYO"]["Dice"] < 1.0


def test_ignore_values_score_each_class_on_its_valid_voxels() -> None:
    # reference labelled for MYO=1 and LV=2 only: 255 = not annotated, 254 = known not LV
    reference = np.zeros((1, 4, 10), int)
    reference[0, :, 0:2], reference[0, :, 2:4] = 1, 2
    reference[0, :, 6:8], reference[0, :, 8:10] = 255, 254
    prediction = np.zeros_like(reference)
    prediction[0, :, 0:2], prediction[0, :, 2:4] = 1, 2
    prediction[0, :, 6:8] = 2  # LV predicted where nobody annotated: not counted
    prediction[0, :, 8:10] = 1  # MYO predicted where only "not LV" is known: not counted for MYO
    spec = parse_spec(["MYO=1", "LV=2"], ignore=["255", "254:LV"])
    scores = score_case(prediction, reference, (1.0, 1.0, 1.0), spec)
    assert scores["MYO"]["Dice"] == 1.0 and scores["LV"]["Dice"] == 1.0
    prediction[0, :, 8:10] = 2  # LV predicted where it is known not to be: a false positive
    assert score_case(prediction, reference, (1.0, 1.0, 1.0), spec)["LV"]["Dice"] == pytest.approx(2 * 8 / (16 + 8))
    assert spec == LabelSpec({"MYO": 1, "LV": 2}, {}, {255: (), 254: ("LV",)})


def test_evaluate_command_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for sub in ("ref", "pred"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        label = np.zeros((6, 8, 8), np.uint8)
        label[1:5, 2:6, 2:6] = 2
        image = sitk.GetImageFromArray(label)
        image.SetSpacing((1.5, 1.5, 5.0))
        sitk.WriteImage(image, str(tmp_path / "ref" / f"case{i}.nii.gz"))
        pred = label.copy()
        pred[rng.integers(1, 5), 2, 2] = 0
        pimg = sitk.GetImageFromArray(pred)
        pimg.CopyInformation(image)
        sitk.WriteImage(pimg, str(tmp_path / "pred" / f"case{i}.nii.gz"))
    evaluate_entry(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--structures", "LV=2"])
    result = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert set(result["per_case"]) == {"case0", "case1"} and 0.98 < result["mean"]["LV"]["Dice"] < 1.0
    assert "| LV |" in capsys.readouterr().out
    (tmp_path / "pred" / "case1.nii.gz").unlink()
    only = evaluate_folder(tmp_path / "ref", tmp_path / "pred", parse_spec(["LV=2"]), cases=["case0"])
    case0 = only["per_case"]["case0"]["LV"]
    assert set(only["per_case"]) == {"case0"} and only["mean"]["LV"] == {"Dice": case0["Dice"], "HD95": case0["HD95"],
                                                                           "HD95_misses": 0}
    with pytest.raises(SystemExit, match="lacks predictions for case1.nii.gz"):
        evaluate_entry(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--structures", "LV=2"])
    with pytest.raises(InputError, match="not among --structures"):
        parse_spec(["LV=2"], ignore=["254:RV"])


def _write(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 5.0), direction=None, dtype=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array if dtype is None else array.astype(dtype))
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


def test_misses_count_in_mean_hd95_and_bad_files_are_refused(tmp_path: Path) -> None:
    """A model that misses a structure gets the diagonal as HD95 (counted as a miss), not a lower mean; a flipped
    direction, NaN, float or negative labels and a truncated file are refused, naming the file."""
    label = np.zeros((6, 8, 8), np.uint8)
    label[1:5, 2:6, 2:6] = 2
    for case in ("hit", "miss"):
        _write(tmp_path / "ref" / f"{case}.nii.gz", label)
    _write(tmp_path / "pred" / "hit.nii.gz", label)
    _write(tmp_path / "pred" / "miss.nii.gz", np.zeros_like(label))
    result = evaluate_folder(tmp_path / "ref", tmp_path / "pred", parse_spec(["LV=2"]))
    diagonal = math.sqrt(6 ** 2 * 25 + 8 ** 2 * 1.5 ** 2 * 2)
    assert result["mean"]["LV"] == pytest.approx({"Dice": 0.5, "HD95": diagonal / 2, "HD95_misses": 1})
    assert "NaN" not in json.dumps(result)
    flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    _write(tmp_path / "pred" / "miss.nii.gz", label, direction=flipped)
    with pytest.raises(InputError, match="miss.nii.gz does not match .*direction"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", parse_spec(["LV=2"]))
    for bad, match in ((label * 0.75, "non-integer"), (label.astype(np.int16) - 3, "negative")):
        _write(tmp_path / "pred" / "miss.nii.gz", bad)
        with pytest.raises(InputError, match=f"miss.nii.gz holds {match}"):
            evaluate_folder(tmp_path / "ref", tmp_path / "pred", parse_spec(["LV=2"]))
    whole = (tmp_path / "ref" / "hit.nii.gz").read_bytes()
    (tmp_path / "pred" / "miss.nii.gz").write_bytes(whole[: len(whole) // 2])  # a broken copy
    with pytest.raises(InputError, match="miss.nii.gz is truncated or corrupt"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", parse_spec(["LV=2"]))
