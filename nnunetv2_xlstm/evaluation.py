"""Dice and HD95 per structure on a separate test folder, with label remapping between data sets and ignore values.

    nnunetv2_xlstm_evaluate -ref labelsTs -pred predictions --structures MYO=1 LV=2 \\
        --remap 1:0 2:1 3:2 --ignore 255 --ignore 254:LV -o results.json

- ``--structures NAME=VALUE``: the structures scored, with their values in the *reference*.
- ``--remap P:R``: a prediction value P means reference value R (e.g. a model trained with RV=1, MYO=2, LV=3
  evaluated on a set labelled MYO=1, LV=2: ``1:0 2:1 3:2``). Unmapped prediction values are kept as they are.
- ``--ignore V[:NAME,...]``: reference value V marks voxels that are not annotated. They are left out of the scoring
  of every structure, except the named ones, for which V is a known negative (e.g. 254 = "known not to be LV").

Conventions: a structure absent from both prediction and reference scores Dice 1 and HD95 0 mm (nothing to find,
nothing found). A structure in only one of them scores Dice 0 and HD95 = the image's diagonal in mm (the worst
distance possible), so that a model that misses structures never looks better in mean HD95; such cases are counted
as ``HD95_misses``. Prediction and reference must share size, spacing, origin and direction; NaN, non-integer and
negative values are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.env import InputError, error_line
from nnunetv2_xlstm.imageio import check_same_geometry, label_array, read_image


@dataclass(frozen=True)
class LabelSpec:
    """Which reference values are scored, how prediction values translate, and which reference values are ignored."""

    structures: dict[str, int]
    remap: dict[int, int] = field(default_factory=dict)
    ignore: dict[int, tuple[str, ...]] = field(default_factory=dict)  # value -> structures it is a negative for

    def valid_mask(self, reference: np.ndarray, structure: str) -> np.ndarray:
        """Voxels on which ``structure`` is scored."""
        excluded = [v for v, negative_for in self.ignore.items() if structure not in negative_for]
        return ~np.isin(reference, excluded)

    def translate(self, prediction: np.ndarray) -> np.ndarray:
        """Prediction values in the reference's convention."""
        if not self.remap:
            return prediction
        lookup = np.arange(max(int(prediction.max()), *self.remap) + 1)
        for p, r in self.remap.items():
            lookup[p] = r
        return lookup[prediction]


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """``2|P∩R| / (|P|+|R|)`` of two boolean masks; 1 if both are empty."""
    total = prediction.sum() + reference.sum()
    return float(2 * np.logical_and(prediction, reference).sum() / total) if total else 1.0


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distances in mm (MedPy's ``hd95``: both directed distance sets
    pooled); 0 if both masks are empty, the image diagonal (mm) if only one is."""
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return float(np.linalg.norm(np.asarray(prediction.shape) * np.asarray(spacing)))
    sp, sr = _surface(prediction), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    to_prediction = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return float(np.percentile(np.hstack([to_reference, to_prediction]), 95))


def score_case(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...],
               spec: LabelSpec) -> dict[str, dict[str, float]]:
    """``{structure: {"Dice", "HD95"}}`` of one case; each structure only on its valid voxels."""
    if prediction.shape != reference.shape:
        raise InputError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    prediction = spec.translate(prediction)
    out = {}
    for name, value in spec.structures.items():
        valid = spec.valid_mask(reference, name)
        p, r = (prediction == value) & valid, (reference == value) & valid
        out[name] = {"Dice": dice(p, r), "HD95": hd95(p, r, spacing), "HD95_miss": bool(p.any() != r.any())}
    return out


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...], sitk.Image]:
    image = read_image(path)
    return label_array(image, path), tuple(reversed(image.GetSpacing())), image


def evaluate_folder(reference_folder: Path, prediction_folder: Path, spec: LabelSpec,
                    file_ending: str = ".nii.gz", cases: list[str] | None = None) -> dict:
    """Score every reference case (or only ``cases``) against the prediction of the same name: ``{"per_case":
    {case: scores}, "mean": {structure: {"Dice", "HD95", "HD95_misses"}}}`` (conventions: module docstring)."""
    references = sorted(Path(reference_folder).glob(f"*{file_ending}"))
    if cases is not None:
        references = [r for r in references if r.name[: -len(file_ending)] in set(cases)]
    if not references:
        raise InputError(f"no *{file_ending} files in {reference_folder}; point -ref at a labelsTs folder")
    missing = [r.name for r in references if not (Path(prediction_folder) / r.name).is_file()]
    if missing:
        raise InputError(f"{prediction_folder} lacks predictions for {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    per_case = {}
    present: set[int] = set()
    for ref_path in references:
        reference, spacing, ref_image = _read(ref_path)
        present |= set(np.unique(reference).tolist())
        prediction, _, pred_image = _read(Path(prediction_folder) / ref_path.name)
        check_same_geometry(ref_image, ref_path, pred_image, Path(prediction_folder) / ref_path.name)
        per_case[ref_path.name[: -len(file_ending)]] = score_case(prediction, reference, spacing, spec)
    for name, value in spec.structures.items():
        if value not in present:  # both empty everywhere: Dice 1 by convention, which a typo would also get
            print(f"WARNING: structure {name}={value} appears in no reference file of {reference_folder}; its Dice "
                  f"of 1 only says that nothing was predicted either. Check --structures (values present: "
                  f"{sorted(present)})", file=sys.stderr)
    return {"per_case": per_case, "mean": mean_over_cases(per_case, list(spec.structures))}


def mean_over_cases(per_case: dict[str, dict], structures: list[str]) -> dict:
    """``{structure: {"Dice", "HD95", "HD95_misses"}}``: means over the cases of :func:`score_case`'s scores."""
    return {name: {"Dice": float(np.mean([c[name]["Dice"] for c in per_case.values()])),
                   "HD95": float(np.mean([c[name]["HD95"] for c in per_case.values()])),
                   "HD95_misses": int(sum(c[name]["HD95_miss"] for c in per_case.values()))}
            for name in structures}


def parse_spec(structures: list[str], remap: list[str] = (), ignore: list[str] = ()) -> LabelSpec:
    """``NAME=VALUE`` structures, ``P:R`` remaps and ``V[:NAME,...]`` ignore values -> :class:`LabelSpec`."""
    try:
        parsed = {k: int(v) for k, v in (s.split("=", 1) for s in structures)}
        mapping = {int(p): int(r) for p, r in (m.split(":", 1) for m in remap)}
        ignored = {}
        for item in ignore:
            value, _, names = item.partition(":")
            ignored[int(value)] = tuple(n for n in names.split(",") if n)
    except ValueError:
        raise InputError("use --structures NAME=VALUE, --remap P:R and --ignore V[:NAME,...] with integer values, "
                         "e.g. --structures LV=2 --remap 3:2 --ignore 254:LV") from None
    unknown = sorted({n for names in ignored.values() for n in names} - set(parsed))
    if unknown or not parsed:
        raise InputError(f"--ignore names {unknown} that are not among --structures {sorted(parsed)}" if unknown
                         else "give at least one --structures NAME=VALUE")
    return LabelSpec(parsed, mapping, ignored)


def markdown_table(result: dict) -> str:
    """Mean Dice and HD95 per structure as a Markdown table."""
    rows = [f"| {name} | {m['Dice']:.3f} | {m['HD95']:.2f} | {m['HD95_misses']} |" for name, m in result["mean"].items()]
    return "\n".join(["| structure | Dice | HD95 (mm) | missed (HD95 = diagonal) |", "| --- | --- | --- | --- |", *rows])


def evaluate_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", type=Path, required=True, help="reference labels (e.g. labelsTs)")
    p.add_argument("-pred", type=Path, required=True, help="predictions with the same file names")
    p.add_argument("--structures", nargs="+", required=True, metavar="NAME=VALUE")
    p.add_argument("--remap", nargs="*", default=[], metavar="P:R")
    p.add_argument("--ignore", action="append", default=[], metavar="V[:NAME,...]")
    p.add_argument("--file_ending", default=".nii.gz")
    p.add_argument("-o", type=Path, default=None, help="JSON output (default: PRED/evaluation.json)")
    a = p.parse_args(argv)
    try:
        result = evaluate_folder(a.ref, a.pred, parse_spec(a.structures, a.remap, a.ignore), a.file_ending)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_evaluate: error: {error_line(e)}")
    out = a.o or a.pred / "evaluation.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(markdown_table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    evaluate_entry()
