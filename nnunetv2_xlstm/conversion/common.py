"""What every converter shares: checked label mapping and writing one case, and the data set folder with its json."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_xlstm.atomic import full_disk_error
from nnunetv2_xlstm.datasets import atomic_directory, new_dataset_folder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.imageio import check_same_geometry, label_array, read_image  # noqa: F401


def map_labels(label: sitk.Image, mapping: dict[int, int], path: Path) -> sitk.Image:
    """``label`` with its values mapped (0 stays 0); :class:`InputError` naming ``path`` for values not in ``mapping``."""
    array = label_array(label, path)
    unknown = sorted(set(np.unique(array).tolist()) - set(mapping) - {0})
    if unknown:
        raise InputError(f"{path} holds label values {unknown} that are not among {sorted(mapping)}; is it a label "
                         f"file of this data set?")
    lookup = np.zeros(max(int(array.max()), *mapping) + 1, np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    out = sitk.GetImageFromArray(lookup[array])
    out.CopyInformation(label)
    return out


def write_case(folder: Path, split: str, case: str, image_path: Path, label: sitk.Image | None,
               label_path: Path | None = None) -> None:
    """Copy ``image_path`` to ``images{split}/{case}_0000.nii.gz`` and write ``label`` to ``labels{split}``, after
    checking that both share a geometry."""
    image = read_image(image_path)
    if image.GetDimension() != 3:
        raise InputError(f"{image_path} is {image.GetDimension()}D; nnU-Net's 3D configurations need 3D images")
    target = folder / f"images{split}" / f"{case}_0000.nii.gz"
    if image_path.name.endswith(".nii.gz"):
        shutil.copyfile(image_path, target)
    else:
        write_image(image, target)
    if label is None:
        return
    check_same_geometry(image, image_path, label, label_path)
    write_image(label, folder / f"labels{split}" / f"{case}.nii.gz")


def write_image(image: sitk.Image, path: Path) -> None:
    """``sitk.WriteImage`` (compressed); a full disk becomes an :class:`InputError` that says so."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as e:
        raise full_disk_error(path, e) or InputError(f"cannot write {path}: {str(e).strip().splitlines()[-1][:200]}") \
            from None


@contextmanager
def raw_dataset(raw_root: Path, dataset_id: int, name: str) -> Iterator[Path]:
    """A temporary folder with nnU-Net's raw sub-folders that becomes ``raw_root/DatasetXXX_name`` on success."""
    with atomic_directory(new_dataset_folder(Path(raw_root), dataset_id, name)) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        yield tmp


def write_dataset_json(folder: Path, channel: str, labels: dict[str, int], name: str, description: str) -> None:
    num_training = len(list((folder / "labelsTr").glob("*.nii.gz")))
    if not num_training:
        raise InputError(f"no labelled training cases found for {name}; check the source folder's layout")
    for sub in ("imagesTs", "labelsTs"):
        if not any((folder / sub).iterdir()):
            (folder / sub).rmdir()
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": channel}, "labels": labels, "numTraining": num_training, "file_ending": ".nii.gz",
         "name": name, "description": description}, indent=2))
