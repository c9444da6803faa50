"""The embedded default: synthetic whole-heart phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_xlstm.demo import phantoms
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, make_phantom, write_phantom_dataset
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS

SMALL = PhantomGeometry((32, 32, 32), 4.5)


def test_phantom_is_deterministic_and_varies_with_seed() -> None:
    a = make_phantom(np.random.default_rng(3), "MRI", SMALL)
    b = make_phantom(np.random.default_rng(3), "MRI", SMALL)
    c = make_phantom(np.random.default_rng(4), "MRI", SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("modality", ["CT", "MRI"])
def test_phantom_has_every_structure_with_modality_intensities(modality: str) -> None:
    image, label = make_phantom(np.random.default_rng(0), modality)
    assert image.shape == label.shape == (48, 48, 48) and image.dtype == np.float32
    assert set(np.unique(label)) == set(WHOLE_HEART_LABELS.values())
    lv, myo = image[label == WHOLE_HEART_LABELS["LV"]], image[label == WHOLE_HEART_LABELS["MYO"]]
    assert np.median(lv) > np.median(myo)  # bright blood pool, darker myocardium, in both modalities
    if modality == "CT":  # Hounsfield units: contrast blood a few hundred HU, lungs near -850
        assert 250 < np.median(lv) < 450 and image.min() < -600
    else:
        assert image.min() >= 0  # magnitude images


def test_myocardium_encloses_the_lv() -> None:
    _, label = make_phantom(np.random.default_rng(1), "CT")
    lv = label == WHOLE_HEART_LABELS["LV"]
    z = int(np.argmax(lv.sum((1, 2))))
    row = label[z, :, int(np.argmax(lv[z].sum(0)))]  # a line through the LV in its largest axial slice
    lv_idx = np.flatnonzero(row == WHOLE_HEART_LABELS["LV"])
    assert row[lv_idx[0] - 1] == WHOLE_HEART_LABELS["MYO"] or row[lv_idx[-1] + 1] == WHOLE_HEART_LABELS["MYO"]


def test_dataset_layout_and_json(tmp_path: Path) -> None:
    out = write_phantom_dataset(tmp_path, 7, num_train=3, num_test=2, geometry=SMALL, progress=False)
    assert out.name == "Dataset007_WholeHeartPhantom"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == 3 and dj["labels"] == WHOLE_HEART_LABELS and dj["channel_names"] == {"0": "zscore"}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_000_CT_0000.nii.gz", "phantom_001_MRI_0000.nii.gz", "phantom_002_CT_0000.nii.gz"]
    assert len(list((out / "labelsTs").iterdir())) == 2
    img = sitk.ReadImage(str(out / "labelsTr" / "phantom_001_MRI.nii.gz"))
    assert img.GetSize() == (32, 32, 32) and img.GetSpacing() == (4.5, 4.5, 4.5)
    ct_only = write_phantom_dataset(tmp_path, 8, 1, 0, ("CT",), SMALL, progress=False)
    assert json.loads((ct_only / "dataset.json").read_text())["channel_names"] == {"0": "CT"}


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return make_phantom(*args, **kwargs)

    monkeypatch.setattr(phantoms, "make_phantom", failing)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path, 9, 4, 0, geometry=SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_modality_and_existing_target(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown modality"):
        write_phantom_dataset(tmp_path, 1, 1, 0, ("PET",), SMALL, progress=False)
    write_phantom_dataset(tmp_path, 2, 1, 0, geometry=SMALL, progress=False)
    with pytest.raises(InputError, match="is already used by"):
        write_phantom_dataset(tmp_path, 2, 1, 0, geometry=SMALL, progress=False)
