"""``nnunetv2_xlstm_convert_mmwhs``: MM-WHS 2017 (CT or MRI) -> an nnU-Net raw data set with labels 1-7.

    nnunetv2_xlstm_convert_mmwhs /data/MM-WHS -d 810 --modality CT      # -> $nnUNet_raw/Dataset810_MMWHS_CT

The source folder is searched for the challenge's files, ``{ct,mr}_train_NNNN_image.nii.gz`` with
``..._label.nii.gz`` beside them (training, into imagesTr/labelsTr) and ``{ct,mr}_test_NNNN_image.nii.gz``
(test images, into imagesTs). Labels 205/420/500/550/600/820/850 become MYO 1, LA 2, LV 3, RA 4, RV 5, AO 6, PA 7.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tqdm import tqdm

from nnunetv2_xlstm.conversion.common import map_labels, raw_dataset, write_case, write_dataset_json
from nnunetv2_xlstm.imageio import read_image
from nnunetv2_xlstm.env import InputError, error_line, require_env
from nnunetv2_xlstm.labels import MMWHS_TO_LABEL, WHOLE_HEART_LABELS

PREFIX = {"CT": "ct", "MRI": "mr"}
PATTERN = re.compile(r"^(ct|mr)_(train|test)_(\d+)_image\.nii(\.gz)?$")


def convert_mmwhs(source: Path, raw_root: Path, dataset_id: int, modality: str = "CT", progress: bool = True) -> Path:
    """Convert one modality of MM-WHS 2017 under ``source``; returns the new data set folder."""
    if modality not in PREFIX:
        raise InputError(f"--modality {modality!r}: use CT or MRI")
    images = sorted(p for p in Path(source).rglob("*_image.nii*")
                    if (m := PATTERN.match(p.name)) and m.group(1) == PREFIX[modality])
    if not images:
        raise InputError(f"no {PREFIX[modality]}_train_NNNN_image.nii.gz files under {source}; point it at the "
                         f"unpacked MM-WHS 2017 folder")
    name = f"MMWHS_{modality}"
    with raw_dataset(raw_root, dataset_id, name) as folder:
        for image_path in tqdm(images, desc=f"MM-WHS {modality}", disable=not progress):
            _, split, number, _ = PATTERN.match(image_path.name).groups()
            case = f"{PREFIX[modality]}_{number}"
            label_path = image_path.with_name(image_path.name.replace("_image", "_label"))
            if split == "train":
                if not label_path.is_file():
                    raise InputError(f"{label_path} is missing for training image {image_path}")
                label = map_labels(read_image(label_path), MMWHS_TO_LABEL, label_path)
                write_case(folder, "Tr", case, image_path, label, label_path)
            else:
                label = map_labels(read_image(label_path), MMWHS_TO_LABEL, label_path) if label_path.is_file() \
                    else None
                write_case(folder, "Ts", case, image_path, label, label_path)
        write_dataset_json(folder, modality, WHOLE_HEART_LABELS, name,
                           f"MM-WHS 2017 {modality}, labels mapped from 205/420/500/550/600/820/850")
    return Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"


def convert_mmwhs_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="the unpacked MM-WHS 2017 folder")
    p.add_argument("-d", type=int, required=True, help="new data set id")
    p.add_argument("--modality", default="CT", choices=sorted(PREFIX))
    a = p.parse_args(argv)
    try:
        out = convert_mmwhs(a.source, require_env("nnUNet_raw")["nnUNet_raw"], a.d, a.modality)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_convert_mmwhs: error: {error_line(e)}")
    print(f"wrote {out}")
