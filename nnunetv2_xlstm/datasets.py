"""nnU-Net raw data sets: locate one by id, validate its ``dataset.json``, and write new ones atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``target`` only if the block finishes; removed on error.

    ``target`` must not exist yet, so nothing a user already has is replaced.
    """
    if target.exists():
        raise InputError(f"{target} already exists. Remove it or choose another data set id / output folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
