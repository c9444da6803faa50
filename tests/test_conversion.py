"""Converters of public layouts (MM-WHS 2017, ACDC) on tiny synthetic files written in those layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_xlstm.conversion.acdc import convert_acdc, convert_acdc_entry
from nnunetv2_xlstm.conversion.mmwhs import convert_mmwhs, convert_mmwhs_entry
from nnunetv2_xlstm.datasets import check_dataset_json
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.labels import MMWHS_TO_LABEL


def write(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def mmwhs_label(rng: np.random.Generator) -> np.ndarray:
    label = np.zeros((6, 8, 8), np.int16)
    for i, value in enumerate(MMWHS_TO_LABEL):
        label[i % 6, i, :4] = value
    return label


@pytest.fixture
def mmwhs(tmp_path: Path) -> Path:
    root, rng = tmp_path / "MM-WHS", np.random.default_rng(0)
    for modality in ("ct", "mr"):
        for n in (1001, 1002):
            write(root / f"{modality}_train" / f"{modality}_train_{n}_image.nii.gz",
                  rng.normal(0, 100, (6, 8, 8)).astype(np.int16))
            write(root / f"{modality}_train" / f"{modality}_train_{n}_label.nii.gz", mmwhs_label(rng))
        write(root / f"{modality}_test" / f"{modality}_test_2001_image.nii.gz", np.zeros((6, 8, 8), np.int16))
    return root


def test_mmwhs_maps_labels_and_layout(tmp_path: Path, mmwhs: Path) -> None:
    out = convert_mmwhs(mmwhs, tmp_path / "raw", 810, "MRI", progress=False)
    assert out.name == "Dataset810_MMWHS_MRI"
    dataset_json = check_dataset_json(out)
    assert dataset_json["channel_names"] == {"0": "MRI"} and dataset_json["numTraining"] == 2
    assert dataset_json["labels"]["MYO"] == 1 and dataset_json["labels"]["PA"] == 7
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["mr_1001_0000.nii.gz", "mr_1002_0000.nii.gz"]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["mr_2001_0000.nii.gz"] and not (out / "labelsTs").exists()
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(mmwhs / "mr_train" / "mr_train_1001_label.nii.gz")))
    label_image = sitk.ReadImage(str(out / "labelsTr" / "mr_1001.nii.gz"))
    converted = sitk.GetArrayFromImage(label_image)
    for value, target in MMWHS_TO_LABEL.items():
        assert np.array_equal(converted == target, source == value)
    assert set(np.unique(converted)) == set(range(8)) and label_image.GetSpacing() == (1.0, 1.0, 2.0)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "mr_1001_0000.nii.gz")))
    assert np.array_equal(image, sitk.GetArrayFromImage(sitk.ReadImage(
        str(mmwhs / "mr_train" / "mr_train_1001_image.nii.gz"))))


def test_mmwhs_bad_input(tmp_path: Path, mmwhs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = mmwhs / "ct_train" / "ct_train_1002_label.nii.gz"
    write(bad, np.full((6, 8, 8), 421, np.int16))
    with pytest.raises(InputError, match=r"ct_train_1002_label.nii.gz holds label values \[421\]"):
        convert_mmwhs(mmwhs, tmp_path / "raw", 810, "CT", progress=False)
    assert not list((tmp_path / "raw").iterdir())  # nothing half-written
    write(bad, np.zeros((6, 8, 9), np.int16))
    with pytest.raises(InputError, match="label.nii.gz does not match .*image.nii.gz: size"):
        convert_mmwhs(mmwhs, tmp_path / "raw", 810, "CT", progress=False)
    shifted = sitk.GetImageFromArray(np.zeros((6, 8, 8), np.int16))
    shifted.SetSpacing((1.0, 1.0, 2.0))
    shifted.SetOrigin((0.0, 0.0, 40.0))  # the same size and spacing, moved by 40 mm: named by its field
    sitk.WriteImage(shifted, str(bad))
    with pytest.raises(InputError, match="does not match .*: origin"):
        convert_mmwhs(mmwhs, tmp_path / "raw", 810, "CT", progress=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no ct_train_NNNN_image.nii.gz files"):
        convert_mmwhs_entry([str(tmp_path / "empty"), "-d", "811"])


@pytest.fixture
def acdc(tmp_path: Path) -> Path:
    root = tmp_path / "ACDC" / "database"
    for split, patients in (("training", (1, 2)), ("testing", (101,))):
        for n in patients:
            folder = root / split / f"patient{n:03d}"
            write(folder / f"patient{n:03d}_4d.nii.gz", np.zeros((6, 8, 8), np.float32))  # ignored
            (folder / "Info.cfg").write_text("ED: 1\nES: 12\n")
            for frame in (1, 12):
                write(folder / f"patient{n:03d}_frame{frame:02d}.nii.gz", np.ones((6, 8, 8), np.float32) * frame)
                label = np.zeros((6, 8, 8), np.uint8)
                label[2:4, 2:6, 2:6] = [1, 2, 3][n % 3]
                write(folder / f"patient{n:03d}_frame{frame:02d}_gt.nii.gz", label)
    return root


def test_acdc_original_layout(tmp_path: Path, acdc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    convert_acdc_entry([str(acdc), "-d", "811"])
    out = tmp_path / "raw" / "Dataset811_ACDC"
    dataset_json = json.loads((out / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and dataset_json["numTraining"] == 4
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "patient001_frame01.nii.gz", "patient001_frame12.nii.gz", "patient002_frame01.nii.gz",
        "patient002_frame12.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["patient101_frame01_0000.nii.gz",
                                                                    "patient101_frame12_0000.nii.gz"]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "patient002_frame12.nii.gz")))
    assert set(np.unique(label)) == {0, 3}
    with pytest.raises(InputError, match="is already used by"):
        convert_acdc(acdc, tmp_path / "raw", 811, progress=False)
    with pytest.raises(InputError, match="point the command at ACDC's 'database' folder"):
        convert_acdc(tmp_path, tmp_path / "raw", 812, progress=False)
    (acdc / "training" / "patient001" / "patient001_frame12_gt.nii.gz").unlink()
    with pytest.raises(InputError, match="patient001_frame12_gt.nii.gz is missing"):
        convert_acdc(acdc, tmp_path / "raw", 813, progress=False)


def test_acdc_converter_on_a_read_only_or_full_disk_is_one_line(tmp_path: Path, acdc: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil
    import tempfile
    from collections import namedtuple

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "raw").mkdir()

    def read_only(*args, **kwargs):  # what a read-only mount gives (root ignores chmod)
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "raw"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkdtemp", read_only)
        with pytest.raises(SystemExit, match="convert_acdc: error: cannot write.*read-only: write to another folder"):
            convert_acdc_entry([str(acdc), "-d", "814"])
    # a full disk while SimpleITK writes a label: named as such, and no half-converted data set is left
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 0))
    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("ITK write failed")))
    with pytest.raises(SystemExit, match="convert_acdc: error: cannot write .*the disk is full"):
        convert_acdc_entry([str(acdc), "-d", "815"])
    assert not list((tmp_path / "raw").glob("*815*"))  # neither the data set nor its hidden temporary folder
