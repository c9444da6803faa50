"""``nnunetv2_xlstm_split``: nnU-Net's ``splits_final.json`` for a few-label budget, patients kept whole.

    nnunetv2_xlstm_split -d 801 --budget 3 --val_patients patient002 patient019 ...      # seeded, 5 folds
    nnunetv2_xlstm_split -d 801 --train_patients patient099 patient038 patient050 \
                                --train_patients patient099 patient038 patient050 patient100 ... --val_patients ...

A fixed set of development (validation) patients is held out in every fold: ``--val_patients``, or a seeded
``--val_budget`` share of the patients. Each fold trains on ``--budget`` other patients (a seeded draw per fold),
or on the patients of one ``--train_patients`` list (repeat it for more folds, e.g. one per label budget). The
remaining patients are unlabelled; their images are listed in ``unlabelled_fold{k}.txt`` for pretraining
(``--source unlabelled_fold0.txt:MRI``). Cases are grouped into patients by ``--group_pattern`` (default: ACDC's
``patientNNN_frameXX`` -> ``patientNNN``; other names are their own patient).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.datasets import check_dataset_json, find_raw_dataset
from nnunetv2_xlstm.env import InputError, error_line, require_env

DEFAULT_GROUP_PATTERN = r"^(.+?)(?:_frame\d+)?$"


def group_patients(cases: list[str], pattern: str = DEFAULT_GROUP_PATTERN) -> dict[str, list[str]]:
    """``{patient: [cases]}``: a case's patient is the first group of ``pattern``'s match (the whole name if none)."""
    regex = re.compile(pattern)
    patients: dict[str, list[str]] = {}
    for case in sorted(cases):
        match = regex.match(case)
        patients.setdefault(match.group(1) if match and match.groups() else case, []).append(case)
    return patients


def parse_budget(text: str | float | int, available: int, what: str = "--budget") -> int:
    """A patient count from ``"3"`` (patients), ``"0.05"`` or ``"5%"`` (a share of ``available``, at least 1)."""
    text = str(text).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{what} {text!r}: give a patient count (3) or a share (0.05 or 5%)") from None
    if text.endswith("%") or 0 < value < 1:
        count = max(1, round(value * available))
    elif value >= 1 and value == int(value):
        count = int(value)
    else:
        raise InputError(f"{what} {text!r}: give a whole patient count (3) or a share between 0 and 1 (0.05, 5%)")
    if count > available:
        raise InputError(f"{what} {text!r} asks for {count} patients; only {available} are available")
    return count


def few_label_splits(cases: list[str], budget: str | int | float | None, folds: int = 5, seed: int = 0,
                     val_patients: list[str] | None = None, val_budget: str | float = 0.2,
                     train_patients: list[list[str]] | None = None, group_pattern: str = DEFAULT_GROUP_PATTERN,
                     nested_budgets: list[str] | None = None) -> dict:
    """Few-label splits of ``cases``: ``{"folds": [{"train", "val", "unlabelled"} (cases), ...], "val_patients",
    "train_patients" (per fold), ...}``. Deterministic for a given seed; no patient straddles two parts.
    ``train_patients``: one fixed list per fold; ``nested_budgets``: one fold per budget, each the first patients
    of one seeded order, so smaller budgets are subsets of larger ones (either way ``budget`` and ``folds`` are
    not used)."""
    try:
        regex = re.compile(group_pattern)
    except re.error as e:
        raise InputError(f"--group_pattern {group_pattern!r} is not a regular expression ({e})") from None
    if regex.groups < 1:
        raise InputError(f"--group_pattern {group_pattern!r} has no group: group 1 must capture the patient id, "
                         f"e.g. {DEFAULT_GROUP_PATTERN!r}")
    if folds < 1:
        raise InputError(f"--folds {folds}: give at least 1 fold")
    for given, what in ((val_patients, "--val_patients"), *((t, "--train_patients") for t in train_patients or ())):
        duplicated = sorted({p for p in given or () if list(given).count(p) > 1})
        if duplicated:
            raise InputError(f"{what} names {', '.join(duplicated)} more than once")
    patients = group_patients(cases, group_pattern)
    for given, what in ((val_patients, "--val_patients"), ([p for t in train_patients or () for p in t],
                                                            "--train_patients")):
        unknown = sorted(set(given or ()) - set(patients))
        if unknown:
            raise InputError(f"{what}: {', '.join(unknown)} not among the data set's patients (e.g. "
                             f"{', '.join(list(patients)[:3])}); check the names or --group_pattern")
    rng = random.Random(seed)
    if val_patients is None:
        val_patients = sorted(rng.sample(sorted(patients), parse_budget(val_budget, len(patients), "--val_budget")))
    pool = sorted(set(patients) - set(val_patients))
    if train_patients is not None:
        overlap = sorted({p for t in train_patients for p in t} & set(val_patients))
        if overlap:
            raise InputError(f"{', '.join(overlap)} are both training and validation patients")
        drawn = [sorted(t) for t in train_patients]
    elif nested_budgets is not None:
        order = random.Random(f"{seed}-nested").sample(pool, len(pool))
        drawn = [sorted(order[:parse_budget(b, len(pool))]) for b in nested_budgets]
    else:
        n = parse_budget(budget, len(pool))
        drawn = [sorted(random.Random(f"{seed}-{k}").sample(pool, n)) for k in range(folds)]
    cases_of = lambda ps: [c for p in sorted(ps) for c in patients[p]]
    return {
        "group_pattern": group_pattern, "seed": seed, "val_patients": sorted(val_patients),
        "train_patients": drawn,
        "folds": [{"train": cases_of(train), "val": cases_of(val_patients),
                   "unlabelled": cases_of(set(pool) - set(train))} for train in drawn],
    }


def write_few_label_splits(dataset_id: int, budget: str, folds: int = 5, seed: int = 0,
                           val_patients: list[str] | None = None, val_budget: str = "0.2",
                           train_patients: list[list[str]] | None = None, group_pattern: str = DEFAULT_GROUP_PATTERN,
                           overwrite: bool = False, nested_budgets: list[str] | None = None) -> Path:
    """Write ``splits_final.json``, ``few_label_splits.json`` and ``unlabelled_fold{k}.txt`` into the data set's
    ``nnUNet_preprocessed`` folder; returns the ``splits_final.json`` path."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    preprocessed = require_env("nnUNet_raw", "nnUNet_preprocessed")["nnUNet_preprocessed"]
    raw = find_raw_dataset(dataset_id)
    dataset_json = check_dataset_json(raw)
    files = get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    result = few_label_splits(sorted(files), budget, folds, seed, val_patients, val_budget, train_patients,
                              group_pattern, nested_budgets)
    folder = preprocessed / raw.name
    target = folder / "splits_final.json"
    splits = [{"train": f["train"], "val": f["val"]} for f in result["folds"]]
    if target.exists() and not overwrite and json.loads(target.read_text()) != splits:
        raise InputError(f"{target} exists with other splits; models trained on it would no longer match. Pass "
                         f"--overwrite to replace it (and retrain), or use another data set id")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("unlabelled_fold*.txt"):  # an earlier split's lists may name today's development cases
        stale.unlink()
    for k, fold in enumerate(result["folds"]):
        atomic_write_text(folder / f"unlabelled_fold{k}.txt",
                      "".join(f"{files[c]['images'][0]}\n" for c in fold["unlabelled"]))
    atomic_write_text(folder / "few_label_splits.json", json.dumps({"dataset": raw.name, "budget": str(budget), **result},
                                                                indent=2))
    atomic_write_text(target, json.dumps(splits, indent=2))
    return target


def split_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", type=int, required=True, help="data set id")
    p.add_argument("--budget", default=None, help="labelled patients per fold: a count (3) or share (0.05, 5%%)")
    p.add_argument("--train_patients", nargs="+", action="append", default=None,
                   help="fixed labelled patients of one fold; repeat for more folds")
    p.add_argument("--val_patients", nargs="+", default=None, help="fixed development patients, held out always")
    p.add_argument("--val_budget", default="0.2", help="share or count of development patients if not given (0.2)")
    p.add_argument("--folds", type=int, default=5, help="folds, each a different seeded draw of --budget (5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group_pattern", default=DEFAULT_GROUP_PATTERN, help="regex; group 1 is the patient id")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different splits_final.json")
    a = p.parse_args(argv)
    if (a.budget is None) == (a.train_patients is None):
        p.error("give one of --budget and --train_patients")
    try:
        target = write_few_label_splits(a.d, a.budget or "fixed lists", a.folds, a.seed, a.val_patients,
                                        a.val_budget, a.train_patients, a.group_pattern, a.overwrite)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_split: error: {error_line(e)}")
    summary = json.loads((target.parent / "few_label_splits.json").read_text())
    for k, (train, fold) in enumerate(zip(summary["train_patients"], summary["folds"])):
        print(f"fold {k}: train {len(train)} patients ({len(fold['train'])} cases: {', '.join(train)}), val "
              f"{len(fold['val'])} cases, unlabelled {len(fold['unlabelled'])} cases -> unlabelled_fold{k}.txt")
    print(f"wrote {target}")


if __name__ == "__main__":
    split_entry()
