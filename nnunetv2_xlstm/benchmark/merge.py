"""``nnunetv2_xlstm_benchmark_report``: one report from the ``benchmark.json`` files of several benchmark calls.

    nnunetv2_xlstm_benchmark_report runs/a/benchmark.json runs/b/benchmark.json --output runs/merged

Arms trained by separate processes (one per GPU after ``--plan_only``), on separate machines, or kept from an
earlier machine (a ``benchmark.json`` is a few hundred kB and holds every score the report needs) become one table:
the runs are pooled by budget, arm and seed, and the summary, paired patient-level intervals, Markdown and plots are
computed anew. Files that measured different things (data set, preset, training budget, labelled or development
patients) are refused, and so is one run that two files report differently.

    nnunetv2_xlstm_benchmark_report --folds loo_a/benchmark.json loo_b/benchmark.json loo_c/benchmark.json --output loo

With ``--folds`` each file is one fold of a cross-validation (e.g. leave-one-out on a data set too small to hold out
a development set): the folds score disjoint patients, and the runs of one budget, arm and seed are joined into one
run scored on every fold's held-out patients, each case by the model that did not train on it, as nnU-Net's own
cross-validation summary does. Paired differences then pair every patient's case between arms.

    nnunetv2_xlstm_benchmark_report 2x2/benchmark.json --output 2x2 --pair xlstm_pretrained_decoder_semi xlstm_semi

Each arm is paired with its twin (the scratch XLSTMUNet for a pretrained or semi-supervised arm, the arm without
semi-supervision for a pretrained semi-supervised one, the network without mLSTM for XLSTMUNet); ``--pair ARM OTHER``
adds the paired difference ARM − OTHER, with the same patient-level interval, e.g. the other side of a 2 × 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from nnunetv2_xlstm.benchmark.report import markdown_report, summarise
from nnunetv2_xlstm.env import InputError, error_line
from nnunetv2_xlstm.evaluation import mean_over_cases
from nnunetv2_xlstm.splits import DEFAULT_GROUP_PATTERN

# what two results must share to be one benchmark
IDENTITY = ("dataset", "format", "minutes", "iterations", "structures", "val_patients", "group_pattern")


def _identity(result: dict) -> dict:
    return {**{k: result.get(k) for k in IDENTITY}, "preset": result.get("preset", {}).get("name")}


def _same_run(a: dict, b: dict) -> bool:
    keys = ("status", "settings", "plans", "trainer", "dice")
    return all(a.get(k) == b.get(k) for k in keys)


def _listed(value: str | list[str] | None, sep: str | None = None) -> list[str]:
    """A field that one call writes as a string and a merge as a list (or, with ``sep``, joined by it)."""
    if isinstance(value, list):
        return value
    return [v for v in (value.split(sep) if sep else [value]) if v] if value else []


def _read(files: list[Path]) -> list[tuple[Path, dict]]:
    if not files:
        raise InputError("give at least one benchmark.json")
    results = []
    for f in files:
        try:
            results.append((f, json.loads(Path(f).read_text())))
        except (OSError, ValueError) as e:
            raise InputError(f"{f}: not a readable benchmark.json ({error_line(e)}); give the file a benchmark "
                             f"call wrote") from None
        if "runs" not in results[-1][1]:
            raise InputError(f"{f}: holds no runs (a --plan_only call?); give the benchmark.json of a call that "
                             f"trained")
    return results


def _check_identity(results: list[tuple[Path, dict]], ignore: tuple[str, ...] = ()) -> None:
    (first_file, first), *rest = results
    mine = {k: v for k, v in _identity(first).items() if k not in ignore}
    for f, result in rest:
        theirs = {k: v for k, v in _identity(result).items() if k not in ignore}
        if theirs != mine:
            differ = [k for k, v in theirs.items() if v != mine[k]]
            raise InputError(f"{f} and {first_file} measured different things ({', '.join(differ)} differ); merge "
                             f"only benchmarks of one data set, preset, budget per run and development patients")


def merge_results(files: list[Path], folds: bool = False, pairs: list[tuple[str, str]] | tuple = ()) -> dict:
    """The results of ``files`` as one: runs pooled by budget, arm and seed (the first file's fields otherwise, the
    union of seeds, machines and commands), summary recomputed, speed per arm from the file with its fastest step.
    ``folds``: each file is one fold of a cross-validation (:func:`_join_folds`). ``pairs``: ``(arm, other)``, paired
    differences to report beside the twins' (:func:`summarise`)."""
    results = _read(files)
    first_file, merged = results[0]  # read for this merge alone: extended in place
    if folds:
        _join_folds(results)
    else:
        _check_identity(results)
        _pool_runs(results)
    machines, commands = _listed(merged.get("machine"), "; "), _listed(merged.get("command"))
    for f, result in results[1:]:
        merged["seeds"] = sorted(set(merged.get("seeds", [])) | set(result.get("seeds", [])))
        merged["plans"] = {**result.get("plans", {}), **merged.get("plans", {})}
        merged["trainers"] = {**result.get("trainers", {}), **merged.get("trainers", {})}
        machines += _listed(result.get("machine"), "; ")
        commands += _listed(result.get("command"))
        for arm, entry in result.get("speed", {}).items():
            kept = merged.setdefault("speed", {}).get(arm)
            if kept is None or (entry.get("step_seconds") or float("inf")) < (kept.get("step_seconds") or float("inf")):
                merged["speed"][arm] = entry
    merged["machine"] = "; ".join(dict.fromkeys(machines))
    merged["command"] = list(dict.fromkeys(commands))
    merged["merged_from"] = [str(f) for f, _ in results]
    arms = dict.fromkeys(arm for budget in merged["runs"].values() for arm in budget)
    missing = [a for pair in pairs for a in pair if a not in arms]
    if missing:
        raise InputError(f"--pair: no run of {missing[0]} in {', '.join(map(str, files))} (its arms: "
                         f"{', '.join(arms)}); pair two arms the benchmark trained")
    merged["summary"] = summarise(merged["runs"], merged["structures"],
                                  merged.get("group_pattern") or DEFAULT_GROUP_PATTERN, pairs)
    return merged


def _pool_runs(results: list[tuple[Path, dict]]) -> None:
    """Add the later results' runs to the first's, refusing other labelled patients or a run reported twice
    differently."""
    first_file, merged = results[0]
    budgets = merged.get("budgets", {})
    source: dict[tuple[str, str, str], Path] = {(b, a, s): first_file for b, arms in merged["runs"].items()
                                               for a, seeds in arms.items() for s in seeds}
    for f, result in results[1:]:
        for budget, patients in result.get("budgets", {}).items():
            if budgets.setdefault(budget, patients) != patients:
                raise InputError(f"{f}: its {budget}-patient budget trains on other patients than {first_file}'s; "
                                 f"merge only benchmarks of the same labelled patients")
        for budget, arms in result["runs"].items():
            for arm, seeds in arms.items():
                for seed, run in seeds.items():
                    mine = merged["runs"].setdefault(budget, {}).setdefault(arm, {}).get(seed)
                    if mine is None or (mine.get("status") != "done" and run.get("status") == "done"):
                        merged["runs"][budget][arm][seed] = run
                        source[(budget, arm, seed)] = f
                    elif run.get("status") == "done" and not _same_run(mine, run):
                        raise InputError(f"{arm}, {budget} patients, seed {seed} differs between "
                                         f"{source[(budget, arm, seed)]} and {f}; keep one of the two files")


def _join_folds(results: list[tuple[Path, dict]]) -> None:
    """Make the first result the cross-validation of all: each file one fold, the folds' development patients
    disjoint; a budget, arm and seed finished in every fold becomes one run scored on all their patients (Dice and
    HD95 per structure the mean over all cases; iterations and wall time the mean over folds); one missing or
    unfinished in a fold is reported as not finished."""
    _check_identity(results, ignore=("val_patients",))
    first_file, merged = results[0]
    scored_by: dict[str, Path] = {}
    for f, result in results:
        for patient in result["val_patients"]:
            if patient in scored_by:
                raise InputError(f"{f} and {scored_by[patient]} both hold out {patient}: the folds of a "
                                 f"cross-validation score disjoint patients; give each fold's benchmark.json once")
            scored_by[patient] = f
    keys = dict.fromkeys((b, a, s) for _, r in results for b, arms in r["runs"].items() for a, seeds in arms.items()
                         for s in seeds)
    runs: dict = {}
    for budget, arm, seed in keys:
        parts = [(f, r["runs"].get(budget, {}).get(arm, {}).get(seed) or {}) for f, r in results]
        missing = [str(f) for f, run in parts if run.get("status") != "done"]
        runs.setdefault(budget, {}).setdefault(arm, {})[seed] = (
            {"status": f"not finished in {', '.join(missing)}", "label": parts[0][1].get("label", arm)} if missing
            else _joined_run([run for _, run in parts], merged["structures"]))
    merged["runs"] = runs
    merged["folds"] = [{"file": str(f), "val_patients": r["val_patients"], "budgets": r.get("budgets", {})}
                       for f, r in results]
    merged["val_patients"] = list(scored_by)
    merged["budgets"] = {b: sorted({p for _, r in results for p in r.get("budgets", {}).get(b, [])})
                         for b in runs}
    merged["evaluated_on"] = (f"{len(scored_by)} patients, each scored by the one of {len(results)} cross-validation "
                              f"folds that held it out (nnU-Net's final validation, final checkpoint)")


def _joined_run(runs: list[dict], structures: list[str]) -> dict:
    from nnunetv2_xlstm.benchmark.run_benchmark import scores

    per_case = {case: s for run in runs for case, s in run["per_case"].items()}
    walls = [r.get("wall_seconds") for r in runs]  # None: a reused run trained before its time was kept with it
    joined = {k: v for k, v in runs[0].items() if k != "wall_seconds"}
    return {**joined, "fold": None, "iterations": int(round(np.mean([r.get("iterations") or 0 for r in runs]))),
            **({} if None in walls else {"wall_seconds": float(np.mean(walls))}),
            "folds": [{k: r.get(k) for k in ("fold", "iterations", "wall_seconds", "dice")} for r in runs],
            **scores({"per_case": per_case, "mean": mean_over_cases(per_case, structures)}, structures)}


def report_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, metavar="benchmark.json")
    p.add_argument("--output", type=Path, required=True, help="folder for the merged benchmark.json, .md and plots")
    p.add_argument("--folds", action="store_true",
                   help="each file is one fold of a cross-validation (disjoint development patients): join them")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("ARM", "OTHER"),
                   help="also report the paired difference ARM − OTHER (repeatable), e.g. "
                        "xlstm_pretrained_decoder_semi xlstm_semi")
    a = p.parse_args(argv)
    from nnunetv2_xlstm.benchmark.run_benchmark import save

    try:
        merged = merge_results(a.results, a.folds, [tuple(pair) for pair in a.pair])
        a.output.mkdir(parents=True, exist_ok=True)
        save(merged, a.output.resolve(), figures=True)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_benchmark_report: error: {error_line(e)}")
    print(markdown_report(merged))
    print(f"wrote {a.output / 'benchmark.json'}, benchmark.md, dice.png, curves.png")


if __name__ == "__main__":
    report_entry()
