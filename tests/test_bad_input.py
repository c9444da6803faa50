"""Bad data never passes silently: truncated files, geometry and label errors before planning, stale unlabelled
lists, duplicate data set ids, split arguments, unwritable folders, and file modes others can read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.imageio import _nifti_gzip_size_matches, read_image
from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess
from nnunetv2_xlstm.splits import few_label_splits, split_entry
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.data import load_pool

GEOMETRY = PhantomGeometry((24, 24, 24), 6.0)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_truncated_gzip_is_refused_by_the_shared_reader(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(20, 30, 30)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "ok.nii.gz"))
    assert read_image(tmp_path / "ok.nii.gz").GetSize() == (30, 30, 20)
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "ok.nii.gz").read_bytes())
    _truncate(tmp_path / "cut.nii.gz")
    assert sitk.ReadImage(str(tmp_path / "cut.nii.gz")).GetSize() == (30, 30, 20)  # SimpleITK alone reads zeros
    with pytest.raises(InputError, match="cut.nii.gz is truncated or corrupt"):
        read_image(tmp_path / "cut.nii.gz")
    # a whole file is not decompressed twice (the gzip trailer matches its header); a cut one is
    assert _nifti_gzip_size_matches(tmp_path / "ok.nii.gz") and not _nifti_gzip_size_matches(tmp_path / "cut.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty.nii.gz is empty"):
        read_image(tmp_path / "empty.nii.gz")
    # pretraining reads through it too
    config = load_config(preset="smoke", sources=[SourceConfig(str(tmp_path / "cut.nii.gz"), "MRI")])
    with pytest.raises(InputError, match="cut.nii.gz is truncated"):
        load_pool(config, progress=False)


@pytest.mark.parametrize("fault", ["truncated", "zero-byte", "4d", "flipped label", "label value", "numTraining"])
def test_raw_data_is_checked_before_planning_writes_anything(nnunet_env: dict[str, str], fault: str) -> None:
    dataset = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 981, 3, 0, geometry=GEOMETRY, progress=False)
    image, label = dataset / "imagesTr" / "case_000_0000.nii.gz", dataset / "labelsTr" / "case_000.nii.gz"
    if not image.is_file():  # the phantoms' naming
        image = sorted((dataset / "imagesTr").iterdir())[0]
        label = dataset / "labelsTr" / image.name.replace("_0000", "")
    if fault == "truncated":
        _truncate(image)
        match = "is truncated or corrupt"
    elif fault == "zero-byte":
        image.write_bytes(b"")
        match = "is empty"
    elif fault == "4d":
        sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(image))] * 2), str(image))
        match = "4D image"
    elif fault == "flipped label":
        seg = sitk.ReadImage(str(label))
        seg.SetDirection((-1.0, 0, 0, 0, 1, 0, 0, 0, 1))
        sitk.WriteImage(seg, str(label))
        match = "does not match .*direction"
    elif fault == "label value":
        seg = sitk.ReadImage(str(label))
        array = sitk.GetArrayFromImage(seg)
        array[0, 0, 0] = 77
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(seg)
        sitk.WriteImage(out, str(label))
        match = "values \\[77\\] that dataset.json does not declare"
    else:
        meta = json.loads((dataset / "dataset.json").read_text())
        (dataset / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
        match = "numTraining 5, but 3 training cases"
    with pytest.raises(InputError, match=match):
        plan_and_preprocess([981], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1)
    assert not (Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name).exists()  # nothing written


def test_planning_options_are_checked(nnunet_env: dict[str, str]) -> None:
    write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 982, 2, 0, geometry=GEOMETRY, progress=False)
    for kwargs, match in (({"batch_size": 0}, "--batch_size must be >= 1"),
                          ({"base_features": 0}, "--base_features must be >= 1"),
                          ({"base_features": 64, "max_features": 32}, "--max_features 32 is below --base_features 64"),
                          ({"mlstm_blocks_per_stage": 0}, "--mlstm_blocks must be >= 1")):
        with pytest.raises(InputError, match=match):
            plan_and_preprocess([982], configurations=["3d_fullres"], planner_kwargs=kwargs)
    with pytest.raises(InputError, match="-c 3d_full: unknown configuration"):
        plan_and_preprocess([982], configurations=["3d_full"])


def test_duplicate_and_out_of_range_dataset_ids(nnunet_env: dict[str, str]) -> None:
    raw = Path(nnunet_env["nnUNet_raw"])
    write_phantom_dataset(raw, 983, 2, 0, geometry=GEOMETRY, progress=False)
    with pytest.raises(InputError, match="id 983 is already used by Dataset983_WholeHeartPhantom"):
        write_phantom_dataset(raw, 983, 2, 0, geometry=GEOMETRY, name="Other", progress=False)
    with pytest.raises(InputError, match="outside 1-999"):
        write_phantom_dataset(raw, 1000, 2, 0, geometry=GEOMETRY, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset983_WholeHeartPhantom"]


def test_resplitting_removes_stale_unlabelled_lists(nnunet_env: dict[str, str]) -> None:
    dataset = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 984, 8, 0, geometry=GEOMETRY, progress=False)
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    split_entry(["-d", "984", "--budget", "1", "--val_budget", "2", "--folds", "5"])
    assert len(list(folder.glob("unlabelled_fold*.txt"))) == 5
    split_entry(["-d", "984", "--budget", "1", "--val_budget", "2", "--folds", "2", "--seed", "3", "--overwrite"])
    assert sorted(p.name for p in folder.glob("unlabelled_fold*.txt")) == ["unlabelled_fold0.txt",
                                                                          "unlabelled_fold1.txt"]
    development = set(json.loads((folder / "splits_final.json").read_text())[0]["val"])
    listed = " ".join((folder / "unlabelled_fold0.txt").read_text().split())
    assert not any(case in listed for case in development)


def test_split_arguments_are_checked() -> None:
    cases = [f"p{i:02d}_frame01" for i in range(10)]
    with pytest.raises(InputError, match="--folds 0"):
        few_label_splits(cases, "2", folds=0)
    with pytest.raises(InputError, match="names p01 more than once"):
        few_label_splits(cases, None, train_patients=[["p01", "p01"]], val_patients=["p02"])
    with pytest.raises(InputError, match="not a regular expression"):
        few_label_splits(cases, "2", group_pattern="(p")
    with pytest.raises(InputError, match="has no group"):
        few_label_splits(cases, "2", group_pattern="p.*")


def test_written_files_are_readable_by_others_and_unwritable_folders_named(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(previous)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(InputError, match=f"cannot write {locked / 'x.json'}: Permission denied"):
            atomic_write_text(locked / "x.json", "{}")
    finally:
        locked.chmod(0o700)


def test_phantoms_and_demo_commands_refuse_bad_arguments(nnunet_env: dict[str, str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from nnunetv2_xlstm.demo.phantoms import phantoms_entry
    from nnunetv2_xlstm.demo.run_demo import demo_entry

    phantoms_entry(["-d", "985", "--num_train", "2", "--num_test", "0", "--size", "16", "--spacing", "6"])
    written = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert written.name == "Dataset985_WholeHeartPhantom" and len(list((written / "imagesTr").iterdir())) == 2
    with pytest.raises(SystemExit, match="nnunetv2_xlstm_phantoms: error: data set id 985 is already used"):
        phantoms_entry(["-d", "985"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(SystemExit, match="nnunetv2_xlstm_demo: error: .*mine exists and is not a demo output folder"):
        demo_entry(["--output", str(tmp_path / "mine"), "--schedule", "smoke"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data"


def test_nan_and_non_integer_labels_are_refused(tmp_path: Path) -> None:
    """NaN survives in MetaImage files (ITK's NIfTI reader turns NaN into 0, so there is nothing left to see)."""
    from nnunetv2_xlstm.imageio import label_array

    array = np.zeros((4, 4, 4), np.float32)
    array[0, 0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match="nan.mha holds NaN"):
        label_array(read_image(tmp_path / "nan.mha"), tmp_path / "nan.mha")
    array[0, 0, 0] = 1.5
    with pytest.raises(InputError, match="x.mha holds non-integer values"):
        label_array(sitk.GetImageFromArray(array), tmp_path / "x.mha")
    assert label_array(sitk.GetImageFromArray(np.ones((2, 2, 2), np.float32)), "ok", {0, 1}).dtype == np.int64
