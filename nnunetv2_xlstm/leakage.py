"""Which images an encoder was pretrained on, and the refusal to evaluate it on any of them.

An export records its pretraining pool (:func:`pool_record`: case ids, files and a hash) in its adaptation plan.
Fine-tuning, the probe and the benchmark call :func:`check_no_leak` with the patients they score: a patient whose
image (any frame) was in the pool is refused, unless the user allows transductive use on purpose
(``NNUNETV2_XLSTM_TRANSDUCTIVE=1`` or the commands' ``--transductive``), which the logs and reports then state.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.splits import DEFAULT_GROUP_PATTERN, group_patients

TRANSDUCTIVE_ENV = "NNUNETV2_XLSTM_TRANSDUCTIVE"
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mnc", ".img", ".npz", ".npy", ".b2nd")


def case_id(path: str | Path) -> str:
    """The nnU-Net case id of an image file: its name without the file ending and the ``_0000`` channel suffix."""
    name = Path(path).name
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    stem, _, channel = name.rpartition("_")
    return stem if stem and len(channel) == 4 and channel.isdigit() else name


def patients_of(cases: list[str], group_pattern: str = DEFAULT_GROUP_PATTERN) -> set[str]:
    """The patients of ``cases`` (patient ids pass through: a patient is its own group)."""
    return set(group_patients(list(cases), group_pattern))


def pool_record(files: list[Path]) -> dict:
    """``{"cases", "files", "sha256"}`` of a pretraining pool; the hash covers each file's name and size."""
    files = sorted(files, key=str)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{Path(f).name}\t{Path(f).stat().st_size}\n".encode())
    return {"cases": [case_id(f) for f in files], "files": [str(Path(f).resolve()) for f in files],
            "sha256": digest.hexdigest()}


def transductive_allowed(flag: bool = False) -> bool:
    """``flag`` or ``NNUNETV2_XLSTM_TRANSDUCTIVE=1``."""
    return flag or os.environ.get(TRANSDUCTIVE_ENV, "").lower() in ("1", "true", "yes")


def leaked_patients(plan: dict, cases: list[str], group_pattern: str = DEFAULT_GROUP_PATTERN) -> list[str]:
    """The patients of ``cases`` whose images (any case of the patient) are in the plan's pretraining pool."""
    pool = (plan.get("pretrain_plan") or {}).get("pool")
    if pool is None:
        return []
    return sorted(patients_of(cases, group_pattern) & patients_of(pool["cases"], group_pattern))


def check_no_leak(plan: dict, cases: list[str], encoder: str | Path, role: str, transductive: bool = False,
                  group_pattern: str = DEFAULT_GROUP_PATTERN) -> str | None:
    """Refuse ``encoder`` if its pretraining pool holds a patient of ``cases`` (the ``role`` patients of a run:
    development, test, probe validation). Returns None when clean, or the note to log when ``transductive`` allows
    the overlap. An export without a recorded pool (made before pools were recorded) passes with a note."""
    if (plan.get("pretrain_plan") or {}).get("pool") is None:
        return f"{encoder} records no pretraining pool: whether it saw the {role} patients is unknown"
    leaked = leaked_patients(plan, cases, group_pattern)
    if not leaked:
        return None
    shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
    if transductive_allowed(transductive):
        return (f"TRANSDUCTIVE: {encoder} was pretrained on images of {len(leaked)} {role} patient(s) ({shown}); "
                f"its scores on them are not held-out results")
    raise InputError(f"{encoder} was pretrained on images of {len(leaked)} {role} patient(s) ({shown}): scores on "
                     f"them would not be held out. Pretrain with exclude_patients set to them (or a pool without "
                     f"them), or allow it on purpose with --transductive / {TRANSDUCTIVE_ENV}=1")


def raw_test_cases(dataset_name: str) -> list[str]:
    """The case ids of the raw data set's ``imagesTs`` (``$nnUNet_raw/<dataset>/imagesTs``), or none."""
    raw = os.environ.get("nnUNet_raw")
    folder = Path(raw or ".") / dataset_name / "imagesTs"
    return [case_id(f) for f in folder.iterdir()] if raw and folder.is_dir() else []


def split_group_pattern(preprocessed_folder: Path) -> str:
    """The patient pattern ``nnunetv2_xlstm_split`` recorded for a data set (``few_label_splits.json``), else ACDC's
    default: how a run groups cases into patients for its refusals."""
    import json

    record = Path(preprocessed_folder) / "few_label_splits.json"
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("group_pattern", DEFAULT_GROUP_PATTERN)
        except json.JSONDecodeError:
            raise InputError(f"{record} is not valid JSON; re-run nnunetv2_xlstm_split") from None
    return DEFAULT_GROUP_PATTERN
