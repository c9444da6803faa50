"""``nnunetv2_xlstm_convert_acdc``: the ACDC 2017 challenge folder -> an nnU-Net raw data set (RV 1, MYO 2, LV 3).

    nnunetv2_xlstm_convert_acdc /data/ACDC/database -d 811      # -> $nnUNet_raw/Dataset811_ACDC

In the original layout every patient folder (``training/patientNNN/``, ``testing/patientNNN/``) holds the
annotated frames as ``patientNNN_frameXX.nii.gz`` with ``patientNNN_frameXX_gt.nii.gz``, beside the 4D cine
series (ignored). Training patients go to imagesTr/labelsTr, testing patients to imagesTs/labelsTs, as cases
``patientNNN_frameXX`` (``nnunetv2_xlstm_split`` keeps a patient's frames together).
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

ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
FRAME = re.compile(r"^(patient\d+_frame\d+)\.nii(\.gz)?$")


def convert_acdc(source: Path, raw_root: Path, dataset_id: int, progress: bool = True) -> Path:
    """Convert ACDC under ``source`` (the folder holding ``training/`` and optionally ``testing/``)."""
    splits = {"Tr": Path(source) / "training", "Ts": Path(source) / "testing"}
    if not splits["Tr"].is_dir():
        raise InputError(f"{splits['Tr']} does not exist; point the command at ACDC's 'database' folder, the one "
                         f"holding training/ and testing/")
    frames = [(split, p) for split, folder in splits.items() if folder.is_dir()
              for p in sorted(folder.glob("patient*/patient*_frame*.nii*")) if FRAME.match(p.name)]
    with raw_dataset(raw_root, dataset_id, "ACDC") as out:
        for split, image_path in tqdm(frames, desc="ACDC", disable=not progress):
            case = FRAME.match(image_path.name).group(1)
            label_path = image_path.with_name(f"{case}_gt.nii.gz")
            if not label_path.is_file():
                raise InputError(f"{label_path} is missing: every annotated frame of ACDC has a _gt file")
            label = map_labels(read_image(label_path), {1: 1, 2: 2, 3: 3}, label_path)
            write_case(out, split, case, image_path, label, label_path)
        write_dataset_json(out, "MRI", ACDC_LABELS, "ACDC", "ACDC 2017 cine MRI, ED and ES frames")
    return Path(raw_root) / f"Dataset{dataset_id:03d}_ACDC"


def convert_acdc_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="ACDC's database folder (holding training/ and testing/)")
    p.add_argument("-d", type=int, required=True, help="new data set id")
    a = p.parse_args(argv)
    try:
        out = convert_acdc(a.source, require_env("nnUNet_raw")["nnUNet_raw"], a.d)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_convert_acdc: error: {error_line(e)}")
    print(f"wrote {out}")
