"""nnU-Net raw data sets: locate one by id, validate its ``dataset.json``, and write new ones atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nnunetv2_xlstm.atomic import current_umask
from nnunetv2_xlstm.env import InputError, require_env

REQUIRED_DATASET_JSON_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def find_raw_dataset(dataset_id: int) -> Path:
    """The folder ``$nnUNet_raw/DatasetXXX_*`` of ``dataset_id``; :class:`InputError` if missing or ambiguous."""
    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    if not raw.is_dir():
        raise InputError(f"nnUNet_raw={raw} is not a folder. Point nnUNet_raw at the folder holding DatasetXXX_Name.")
    matches = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
    if len(matches) != 1:
        known = ", ".join(p.name for p in sorted(raw.glob("Dataset*_*"))) or "none"
        what = "no data set" if not matches else f"several data sets ({', '.join(m.name for m in matches)})"
        raise InputError(f"{what} with id {dataset_id} in nnUNet_raw={raw} (present: {known}). "
                         f"Pass an existing id with -d, or convert your data to {raw}/Dataset{dataset_id:03d}_Name.")
    return matches[0]


def check_dataset_json(dataset_folder: Path) -> dict:
    """Load ``dataset_folder/dataset.json`` and check nnU-Net's required keys; :class:`InputError` otherwise."""
    path = dataset_folder / "dataset.json"
    try:
        dataset_json = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing. Every nnU-Net raw data set needs one; see nnU-Net's "
                         f"dataset_format.md (keys: {', '.join(REQUIRED_DATASET_JSON_KEYS)}).") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}). Fix the file.") from None
    missing = [k for k in REQUIRED_DATASET_JSON_KEYS if k not in dataset_json]
    if missing:
        raise InputError(f"{path} lacks the required key(s) {', '.join(missing)}. Add them, e.g. "
                         '"channel_names": {"0": "CT"}, "labels": {"background": 0, "LV": 1}, '
                         '"numTraining": 20, "file_ending": ".nii.gz".')
    return dataset_json


def check_raw_dataset(folder: Path, dataset_json: dict, progress: bool = True) -> None:
    """Read every training case of a raw data set once and refuse, naming the file, what would break nnU-Net's
    planning halfway or train on wrong data: a ``numTraining`` that differs from the cases found, missing, empty or
    truncated files, images that are not 3D single-component (or 2D for a 2D data set), NaN/Inf voxels, labels whose
    geometry differs from their image's, and label values that ``dataset.json`` does not declare."""
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from tqdm import tqdm

    from nnunetv2_xlstm.imageio import check_same_geometry, label_array, read_image

    files = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
    if len(files) != dataset_json["numTraining"]:
        raise InputError(f"{folder / 'dataset.json'} says numTraining {dataset_json['numTraining']}, but "
                         f"{len(files)} training cases were found; correct numTraining (or add the missing cases)")
    declared = {v for v in dataset_json["labels"].values() if isinstance(v, int)}
    channels = len(dataset_json["channel_names"])
    dimension = None
    for case, entry in tqdm(sorted(files.items()), desc="checking the raw data", disable=not progress):
        if len(entry["images"]) != channels:
            raise InputError(f"case {case} has {len(entry['images'])} image file(s), dataset.json declares {channels} "
                             f"channel(s)")
        images = []
        for path in entry["images"]:
            image = read_image(path)
            if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
                raise InputError(f"{path} is a {image.GetDimension()}D image with "
                                 f"{image.GetNumberOfComponentsPerPixel()} component(s); nnU-Net needs one 3D (or 2D) "
                                 f"single-component file per channel: split 4D series into channels _0000, _0001, ...")
            if dimension is not None and image.GetDimension() != dimension:
                raise InputError(f"{path} is {image.GetDimension()}D, the data set's other images are {dimension}D; "
                                 f"convert it like the others")
            dimension = image.GetDimension()
            array = sitk.GetArrayViewFromImage(image)
            if not np.isfinite(array).all():
                raise InputError(f"{path} has {int(np.size(array) - np.isfinite(array).sum())} NaN/Inf voxels; fix "
                                 f"the file")
            images.append((path, image))
        label = read_image(entry["label"])
        for path, image in images:
            check_same_geometry(image, path, label, entry["label"])
        label_array(label, entry["label"], declared)


def new_dataset_folder(raw_root: Path, dataset_id: int, name: str) -> Path:
    """``raw_root/DatasetXXX_name`` for a new data set; :class:`InputError` for an id outside 1-999 or one that
    another ``DatasetXXX_*`` already uses (nnU-Net's lookup by id would break)."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"data set id {dataset_id} is outside 1-999, the ids nnU-Net's DatasetXXX names allow")
    taken = sorted(p.name for p in Path(raw_root).glob(f"Dataset{dataset_id:03d}_*"))
    if taken:
        raise InputError(f"data set id {dataset_id} is already used by {', '.join(taken)} in {raw_root}; choose "
                         f"another id, or remove the old data set")
    return Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``target`` only if the block finishes; removed on error.

    ``target`` must not exist yet, so nothing a user already has is replaced.
    """
    if target.exists():
        raise InputError(f"{target} already exists. Remove it or choose another data set id / output folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the data set from other users
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
