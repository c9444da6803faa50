"""``nnunetv2_xlstm_benchmark``: every arm on the same splits, label budgets, training budget and evaluation.

    nnunetv2_xlstm_benchmark -d 801 --preset cpu --budgets 3 7 --pretrained_encoder encoder_export.pt \\
        --val_patients patient002 patient019 ...

Steps, each through nnU-Net's own commands or API: few-label splits (one fold per budget, development patients held
out in every fold) -> planning and preprocessing for the preset (see ``nnunetv2_xlstm.benchmark.arms``) ->
``nnUNetv2_train`` of every arm on every budget and seed -> Dice and HD95 on the held-out development patients
(nnU-Net's final validation, final checkpoint) and, if there is a test folder (``imagesTs`` + ``labelsTs``), on it via
``nnUNetv2_predict`` -> ``benchmark.json`` (every number), ``benchmark.md``, ``dice.png`` and ``curves.png``.

Seeds (``--seeds``) repeat every run on the same split; the report gives mean ± sd over seeds and each arm's paired
difference to stock nnU-Net with a 95 % bootstrap interval over patients (a patient's frames and seeds together);
arms that change one thing of another (pretrained, semi-supervised) are also paired with that arm, with the sd over
seeds of the difference.
``--minutes`` (or a preset's own budget, e.g. ``cpu-long``) trains every arm for the same training time instead of
the same iterations; ``--iterations`` trains every arm for the same number of iterations, with no time budget (on a
shared machine, wall-clock noise moves the iterations an equal-time run reaches). The report gives the iterations and
the time of every run either way.

``--finetune SETTINGS`` runs the pretrained arms with another fine-tuning protocol (``NNUNETV2_XLSTM_FINETUNE``,
e.g. ``encoder_lr=0.3,warmup=0.2``) and ``--semi SETTINGS`` the semi-supervised arms with other settings
(``NNUNETV2_XLSTM_SEMI``); their runs get folders of their own, while the other arms' runs (the scratch twin) are
shared with every benchmark of the same preset, seeds and budget, and reused rather than repeated.

Nothing is lost on a crash: the JSON is rewritten after every run, and a second call with the same arguments skips
finished runs and continues interrupted ones from nnU-Net's latest checkpoint (``--c``, after checking that the
checkpoint holds no arbitrary objects).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.benchmark.arms import ARMS, CONFIG, DEFAULT_ARMS, PRETRAINED, SEMI, plan_arms, planned_arms
from nnunetv2_xlstm.benchmark.presets import PRESETS, Preset, get_preset
from nnunetv2_xlstm.benchmark.report import (curve_from_checkpoint, markdown_report, plot_curves, plot_dice,
                                              speed_from_curve, summarise)
from nnunetv2_xlstm.checkpoints import load_exported_encoder, load_nnunet_checkpoint
from nnunetv2_xlstm.commands import run_command
from nnunetv2_xlstm.datasets import check_dataset_json, find_raw_dataset
from nnunetv2_xlstm.env import InputError, error_line, ext_trainer_value, require_env
from nnunetv2_xlstm.evaluation import LabelSpec, evaluate_folder, parse_spec
from nnunetv2_xlstm.leakage import TRANSDUCTIVE_ENV, case_id, check_no_leak
from nnunetv2_xlstm.splits import DEFAULT_GROUP_PATTERN, write_few_label_splits
from nnunetv2_xlstm.training.pretrained import FINETUNE_ENV, nnUNetTrainerXLSTMPretrained
from nnunetv2_xlstm.training.scheduled import ITERATIONS_ENV, MINUTES_ENV, SEED_ENV
from nnunetv2_xlstm.training.semi import SEMI_ENV
from nnunetv2_xlstm.training.semi import parse_settings as parse_semi_settings

RESULT_FORMAT = 2  # runs[budget][arm][seed]
VARIANT_ARMS = {FINETUNE_ENV: PRETRAINED, SEMI_ENV: SEMI}  # the arms that each setting variable changes
WALL_SECONDS_FILE = "benchmark_wall_seconds.json"  # a run's training and validation time, in its folder


def check_seeds(seeds: list[int]) -> list[int]:
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {' '.join(map(str, seeds))}: give distinct integers >= 0, e.g. --seeds 0 1 2")
    return list(seeds)


def parse_budget_seeds(items: list[str]) -> dict[str, list[int]]:
    """``["7=0", "16=0,1"]`` -> ``{"7": [0], "16": [0, 1]}``: the seeds of a budget, instead of ``--seeds``."""
    out = {}
    for item in items:
        budget, _, seeds = item.partition("=")
        try:
            out[budget.strip()] = check_seeds([int(x) for x in seeds.split(",")])
        except (ValueError, InputError):
            raise InputError(f"--budget_seeds {item}: give BUDGET=SEED[,SEED...], e.g. 7=0 (the 7-patient budget, "
                             f"seed 0 only)") from None
    return out


def check_budget_seeds(budget_seeds: dict[str, list[int]], budgets: list[str]) -> None:
    """Refuse ``--budget_seeds`` for a budget the benchmark does not have."""
    unknown = sorted(set(budget_seeds) - set(budgets))
    if unknown:
        raise InputError(f"--budget_seeds names budget(s) {unknown}; the budgets are {', '.join(budgets)} labelled "
                         f"patients")


def job_list(seeds_of: dict[str, list[int]], arms: list[str]) -> list[tuple[int, int, str, str]]:
    """``(seed, fold, budget, arm)`` of every run, seed-major: every arm and budget gets its first seed before any
    gets its second. ``seeds_of``: ``{budget: seeds}``, the budgets in fold order."""
    return [(seed, fold, budget, arm) for seed in sorted(set().union(*seeds_of.values()))
            for fold, budget in enumerate(seeds_of) if seed in seeds_of[budget] for arm in arms]


def check_minutes(minutes: float | None) -> float | None:
    if minutes is not None and not minutes > 0:
        raise InputError(f"--minutes {minutes}: give a training time > 0 per run, e.g. --minutes 20")
    return minutes


def check_iterations(iterations: int | None, minutes: float | None) -> int | None:
    if iterations is not None and iterations < 1:
        raise InputError(f"--iterations {iterations}: give a number of training iterations >= 1 per run")
    if iterations is not None and minutes is not None:
        raise InputError("--iterations and --minutes both given: a run is matched by time or by iterations")
    return iterations


def check_variants(finetune: str | None, semi: str | None) -> dict[str, str]:
    """``{setting variable: settings}`` of ``--finetune`` / ``--semi``, checked now rather than in the first run."""
    variants = {}
    if finetune:
        nnUNetTrainerXLSTMPretrained.checked_settings(finetune)
        variants[FINETUNE_ENV] = finetune.replace(" ", "")
    if semi:
        parse_semi_settings(semi)
        variants[SEMI_ENV] = semi.replace(" ", "")
    return variants


def variant_env(arm: str, variants: dict[str, str]) -> dict[str, str]:
    """The setting variables that apply to ``arm``."""
    return {var: settings for var, settings in sorted(variants.items()) if arm in VARIANT_ARMS[var]}


def variant_folder(folder: Path, arm: str, variants: dict[str, str]) -> Path:
    """``folder``, or a subfolder ``variant_<settings>`` where settings change ``arm``."""
    tags = list(variant_env(arm, variants).values())
    return folder / ("variant_" + re.sub(r"[^A-Za-z0-9.=]+", "_", "_".join(tags))) if tags else folder


def results_folder(results: Path, seed: int, minutes: float | None, preset: Preset,
                   iterations: int | None = None) -> Path:
    """Where nnU-Net keeps one seed's runs: ``nnUNet_results`` itself for seed 0 at the preset's own budget, else a
    subfolder ``benchmark_seed<S>[_<M>min|_<N>it]``, so that seeds and budgets never share a run folder."""
    if iterations is not None:
        return results / f"benchmark_seed{seed}_{iterations}it"
    if seed == 0 and minutes == preset.minutes:
        return results
    return results / (f"benchmark_seed{seed}" + (f"_{minutes:g}min" if minutes != preset.minutes else ""))


def run_benchmark(dataset_id: int, preset: Preset, output: Path, budgets: list[str] | None = None,
                  train_patients: list[list[str]] | None = None, val_patients: list[str] | None = None,
                  val_budget: str = "0.2", seed: int = 0, encoder: Path | None = None, arms: list[str] | None = None,
                  device: str = "cpu", group_pattern: str = DEFAULT_GROUP_PATTERN, overwrite_splits: bool = False,
                  test_folder: Path | None = None, test_spec: LabelSpec | None = None, timing_cases: int = 2,
                  plan_only: bool = False, seeds: list[int] = (0,), minutes: float | None = None,
                  transductive: bool = False, iterations: int | None = None, finetune: str | None = None,
                  semi: str | None = None, budget_seeds: dict[str, list[int]] | None = None) -> dict:
    """Run (or continue) the benchmark; return the result that ``output/benchmark.json`` holds.

    Budgets are patient counts or shares (nested seeded draws), or come from ``train_patients`` (one fixed list per
    budget). ``test_folder`` (default: the raw data set's, if it has ``imagesTs`` and ``labelsTs``) is scored with
    ``test_spec`` (default: the data set's labels). ``plan_only``: stop after splits and plans (then several
    processes, e.g. one per GPU, can train their ``arms`` on them). ``seeds`` repeat every run (``budget_seeds``:
    ``{budget: seeds}`` instead, for some budgets); ``minutes`` (default:
    the preset's) is each run's training-time budget, ``iterations`` instead its number of iterations (no time
    budget). ``finetune`` / ``semi``: settings of the pretrained / semi-supervised arms (module docstring). Needs the
    ``nnUNet_*`` variables. Every input is checked before anything is written.
    """
    require_env("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    seeds, minutes = check_seeds(list(seeds)), check_minutes(minutes)
    iterations = check_iterations(iterations, minutes)
    variants = check_variants(finetune, semi)
    budget_seeds = budget_seeds or {}
    if train_patients is not None:
        check_budget_seeds(budget_seeds, [str(len(t)) for t in train_patients])
    if minutes is None and iterations is None:
        minutes = preset.minutes
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is a file; give a folder")
    encoder_plan = load_exported_encoder(encoder)[1] if encoder is not None else None  # refused now, not after planning
    if test_folder is not None and not ((test_folder / "imagesTs").is_dir() and (test_folder / "labelsTs").is_dir()):
        raise InputError(f"--test_folder {test_folder} needs imagesTs/ and labelsTs/ folders")
    raw = find_raw_dataset(dataset_id)
    dataset_json = check_dataset_json(raw)
    arms = list(arms or DEFAULT_ARMS)
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise InputError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if encoder is None and set(arms) & set(PRETRAINED):
        print(f"no --pretrained_encoder: {', '.join(a for a in arms if a in PRETRAINED)} left out")
        arms = [a for a in arms if a not in PRETRAINED]
    if train_patients is None and not budgets:
        raise InputError("give --budgets (patient counts or shares) or one --train_patients list per budget")
    structures = {k: v for k, v in dataset_json["labels"].items() if isinstance(v, int) and v != 0}
    spec = LabelSpec(structures)
    if test_folder is None and (raw / "imagesTs").is_dir() and (raw / "labelsTs").is_dir():
        test_folder = raw
    env = {**os.environ, "nnUNet_extTrainer": ext_trainer_value(os.environ.get("nnUNet_extTrainer"))}
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))

    result_file = output / "benchmark.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    identity = lambda r: (r.get("dataset"), r.get("preset", {}).get("name"), r.get("minutes"), r.get("iterations"),
                          r.get("format"), r.get("variants", {}))
    if result and identity(result) != (raw.name, preset.name, minutes, iterations, RESULT_FORMAT, variants):
        raise InputError(f"{result_file} is a benchmark of {result.get('dataset')} with preset "
                         f"{result.get('preset', {}).get('name')}, {result.get('minutes')} minutes or "
                         f"{result.get('iterations')} iterations per run, settings {result.get('variants', {})} "
                         f"(result format {result.get('format')}); choose another --output to benchmark {raw.name} "
                         f"with preset {preset.name}, {minutes} minutes or {iterations} iterations and settings "
                         f"{variants}")
    output.mkdir(parents=True, exist_ok=True)
    if not os.access(output, os.W_OK):
        raise InputError(f"--output {output} is not writable")
    splits = write_few_label_splits(dataset_id, "nested" if train_patients is None else "fixed lists", seed=seed,
                                    val_patients=val_patients, val_budget=val_budget, train_patients=train_patients,
                                    group_pattern=group_pattern, overwrite=overwrite_splits,
                                    nested_budgets=None if train_patients else budgets)
    summary = json.loads((splits.parent / "few_label_splits.json").read_text())
    leakage = None
    if encoder is not None:  # no score on a patient the encoder was pretrained on, unless asked for
        scored = summary["val_patients"] + (
            [case_id(f) for f in (test_folder / "imagesTs").iterdir()] if test_folder is not None else [])
        leakage = check_no_leak(encoder_plan, scored, encoder, "development or test", transductive, group_pattern)
        if leakage:
            print(f"WARNING: {leakage}")
        if transductive:  # the trainers check the encoder against their fold too
            env[TRANSDUCTIVE_ENV] = "1"
    budget_names = [str(len(t)) for t in summary["train_patients"]]
    check_budget_seeds(budget_seeds, budget_names)
    seeds_of = {b: budget_seeds.get(b, seeds) for b in budget_names}
    plans = planned_arms(dataset_id, preset, encoder)
    if plans is None:
        plans, result["planning_warnings"] = plan_arms(dataset_id, preset, encoder)
    result.update({
        "format": RESULT_FORMAT, "minutes": minutes, "iterations": iterations, "variants": variants,
        "seeds": sorted(set(result.get("seeds", [])).union(*seeds_of.values())),
        "dataset": raw.name, "preset": {"name": preset.name, "purpose": preset.purpose, "changes": preset.changes()},
        "machine": machine_description(device), "device": device, "structures": list(structures),
        "budgets": {b: t for b, t in zip(budget_names, summary["train_patients"])},
        "val_patients": summary["val_patients"], "plans": plans,
        "trainers": {**result.get("trainers", {}), **{a: preset.trainer(a) for a in arms}},
        "encoder": str(encoder) if encoder else None,
        "encoder_leakage": leakage, "group_pattern": group_pattern,
        "evaluated_on": f"{len(summary['val_patients'])} held-out development patients (every fold's validation "
                        f"set; nnU-Net's final validation, final checkpoint)"
                        + (f"; test folder {test_folder}" if test_folder else ""),
        "command": " ".join(sys.argv) if sys.argv and "benchmark" in sys.argv[0] else None,
    })
    if plan_only:
        save(result, output)
        print(f"planned {', '.join(f'{a}: {p}' for a, p in plans.items())}")
        return result
    runs = result.setdefault("runs", {})
    gt = splits.parent / "gt_segmentations"
    jobs = job_list(seeds_of, arms)
    bar = tqdm(jobs, desc="benchmark", unit="run", file=sys.stdout)
    results_root = Path(os.environ["nnUNet_results"])
    for seed, fold, budget, arm in bar:
        bar.set_postfix_str(f"{arm}, {budget} patients, seed {seed}")
        run = runs.setdefault(budget, {}).setdefault(arm, {}).setdefault(str(seed), {})
        if run.get("status") == "done":  # finished by an earlier call with these arguments
            continue
        settings = variant_env(arm, variants)
        run.update(label=ARMS[arm] + "".join(f" ({s})" for s in settings.values()), fold=fold,
                   trainer=preset.trainer(arm), plans=plans[arm], seed=seed, settings=settings,
                   iterations_per_epoch=preset.schedule.iterations if preset.schedule else 250)
        folder = variant_folder(results_folder(results_root, seed, minutes, preset, iterations), arm, variants)
        run_env = {**{k: v for k, v in env.items() if k not in (MINUTES_ENV, ITERATIONS_ENV, *VARIANT_ARMS)},
                   SEED_ENV: str(seed), "nnUNet_results": str(folder), **settings}
        if minutes is not None:
            run_env[MINUTES_ENV] = f"{minutes:g}"
        if iterations is not None:
            run_env[ITERATIONS_ENV] = str(iterations)
        tag = f"{arm}_{budget}" + (f"_seed{seed}" if seed else "")
        try:
            train_and_score(run, dataset_id, raw.name, device, run_env, output / "logs" / f"{tag}.log",
                            validation=(gt, summary["folds"][fold]["val"], spec, dataset_json["file_ending"]),
                            split={k: summary["folds"][fold][k] for k in ("train", "val")},
                            test=(test_folder, test_spec or spec) if test_folder is not None else None,
                            predictions=output / "predictions" / tag)
            run["status"] = "done"
            tqdm.write(f"{ARMS[arm]}, {budget} patients, seed {seed}: mean Dice {run['dice']['mean']:.3f} after "
                       f"{run['iterations']} iterations", file=sys.stdout)
        except (RuntimeError, InputError) as e:  # a failed run is reported, the others go on
            run["status"] = f"failed: {e}"
            tqdm.write(f"{arm}, {budget} patients, seed {seed}: {run['status']}", file=sys.stdout)
        result["summary"] = summarise(runs, result["structures"], group_pattern)
        save(result, output, figures=True)
    bar.close()
    result["summary"] = summarise(runs, result["structures"], group_pattern)
    result["speed"] = speed(result, arms, dataset_id, dataset_json, test_folder,
                            summary["folds"][0]["val"][:timing_cases], device, env, output)
    save(result, output, figures=True)
    print(markdown_report(result))
    print(f"wrote {output / 'benchmark.json'}, benchmark.md, dice.png, curves.png")
    return result


def train_and_score(run: dict, dataset_id: int, dataset_name: str, device: str, env: dict[str, str], log: Path,
                    validation: tuple[Path, list[str], LabelSpec, str], test: tuple[Path, LabelSpec] | None,
                    predictions: Path, split: dict[str, list[str]] | None = None) -> None:
    """Train ``run`` (its ``trainer``, ``plans``, ``fold``) with ``nnUNetv2_train``, continuing an interrupted
    attempt, and add its learning curve and scores on the development cases (``validation``: reference folder,
    cases, spec, file ending) and, if given, on the test folder to ``run``. ``split`` (the fold's training and
    validation cases) is recorded in the run folder, and a folder that recorded another split is refused rather
    than reused: a fold index names different cases in every call with other patients (e.g. each fold of a
    leave-one-out)."""
    folder = (Path(env["nnUNet_results"]) / dataset_name / f"{run['trainer']}__{run['plans']}__{CONFIG}"
              / f"fold_{run['fold']}")
    if split is not None:
        marker = folder / "benchmark_split.json"
        if marker.is_file() and json.loads(marker.read_text()) != split:
            raise InputError(f"{folder} holds a run trained on another split ({marker}); give this split its own "
                             f"nnUNet_results folder (e.g. one per cross-validation fold), or delete the run to "
                             f"retrain it")
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            atomic_write_text(marker, json.dumps(split))
    train = ["nnUNetv2_train", str(dataset_id), CONFIG, str(run["fold"]), "-tr", run["trainer"], "-p", run["plans"],
             "-device", device]
    timing = folder / WALL_SECONDS_FILE  # kept with the run, so a benchmark that reuses it can report its time
    recorded = json.loads(timing.read_text()) if timing.is_file() else run.get("wall_seconds")
    if not (folder / "checkpoint_final.pth").is_file():
        resume = (folder / "checkpoint_latest.pth").is_file()
        if resume:  # nnU-Net's --c unpickles it in full: refuse one that holds arbitrary objects
            load_nnunet_checkpoint(folder / "checkpoint_latest.pth")
        t0 = time.perf_counter()
        try:  # training and nnU-Net's final validation, summed over interrupted attempts
            run_command(train + (["--c"] if resume else []), env, log)
        finally:
            run["wall_seconds"] = (recorded or 0) + time.perf_counter() - t0
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(timing, json.dumps(run["wall_seconds"]))
    else:
        if recorded is not None:  # else trained before its time was kept with it: reported as unknown
            run["wall_seconds"] = recorded
        if not (folder / "validation" / "summary.json").is_file():
            run_command(train + ["--val"], env, log)
    run["curve"] = curve_from_checkpoint(folder)
    run["iterations"] = len(run["curve"]) * run["iterations_per_epoch"]
    references, cases, spec, ending = validation
    run.update(scores(evaluate_folder(references, folder / "validation", spec, ending, cases), spec.structures))
    if test is not None:
        test_folder, test_spec = test
        run["predict_seconds_per_volume"] = predict(test_folder / "imagesTs", predictions, dataset_id, run["fold"],
                                                    run, device, env, log)
        run["test"] = scores(evaluate_folder(test_folder / "labelsTs", predictions, test_spec, ending),
                             test_spec.structures)


def scores(evaluation: dict, structures: dict[str, int] | list[str]) -> dict:
    """Mean Dice and HD95 per structure, and their mean over structures."""
    out = {}
    for metric in ("Dice", "HD95"):
        values = {s: evaluation["mean"][s][metric] for s in structures}
        out[metric.lower()] = {**values, "mean": sum(values.values()) / len(values)}
    out["per_case"] = evaluation["per_case"]
    return out


def predict(images: Path, out: Path, dataset_id: int, fold: int, run: dict, device: str, env: dict[str, str],
            log: Path) -> float:
    """``nnUNetv2_predict`` of ``images`` with a run's model into ``out``; seconds per volume, model load included."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    model = Path(env["nnUNet_results"]) / maybe_convert_to_dataset_name(dataset_id) / \
        f"{run['trainer']}__{run['plans']}__{CONFIG}" / f"fold_{fold}" / "checkpoint_final.pth"
    load_nnunet_checkpoint(model)  # nnUNetv2_predict unpickles it in full: refuse arbitrary objects first
    t0 = time.perf_counter()
    run_command(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", CONFIG, "-f",
                 str(fold), "-tr", run["trainer"], "-p", run["plans"], "-device", device, "-npp", "1", "-nps", "1"],
                env, log)
    return (time.perf_counter() - t0) / max(1, len(list(out.glob("*.nii.gz"))))


def speed(result: dict, arms: list[str], dataset_id: int, dataset_json: dict, test_folder: Path | None,
          timing_cases: list[str], device: str, env: dict[str, str], output: Path) -> dict:
    """Per arm (``arms``, added to those of earlier calls): parameters; training step time (the fastest of its runs' medians: on a shared machine noise only
    slows) and peak memory (the largest) from the training logs; prediction time per volume (the first budget's
    test folder prediction, or the images of the development cases ``timing_cases``, predicted for timing alone)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    schedule = PRESETS[result["preset"]["name"]].schedule
    previous = result.get("speed", {})
    out = dict(previous)  # the arms of earlier calls into this output keep their entries
    for arm in arms:
        runs = [r for budget in result["runs"].values() for r in budget.get(arm, {}).values()
                if r.get("status") == "done"]
        plans = json.loads((Path(os.environ["nnUNet_preprocessed"]) / result["dataset"]
                            / f"{result['plans'][arm]}.json").read_text())
        arch = plans["configurations"][CONFIG]["architecture"]
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                         arch["_kw_requires_import"], len(dataset_json["channel_names"]),
                                         len(dataset_json["labels"]), allow_init=False)
        logs = [speed_from_curve(r.get("curve") or [], schedule.iterations if schedule else 250) for r in runs]
        steps = [x["step_seconds"] for x in logs if x["step_seconds"] is not None]
        memory = [x["peak_memory_gib"] for x in logs if x["peak_memory_gib"] is not None]
        entry = {"label": ARMS[arm], "parameters": sum(p.numel() for p in network.parameters()),
                 "step_seconds": min(steps) if steps else None, "peak_memory_gib": max(memory) if memory else None}
        if runs:
            seconds = runs[0].get("predict_seconds_per_volume") or previous.get(arm, {}).get(
                "predict_seconds_per_volume")
            if seconds is None and test_folder is None and timing_cases:
                images = output / "timing_inputs"
                if not images.is_dir():
                    _link_images(images, timing_cases, dataset_id, dataset_json)
                run_env = {**env, "nnUNet_results": str(results_folder(Path(os.environ["nnUNet_results"]),
                                                                       runs[0]["seed"], result["minutes"],
                                                                       PRESETS[result["preset"]["name"]]))}
                seconds = predict(images, output / "timing_predictions" / arm, dataset_id, runs[0]["fold"], runs[0],
                                  device, run_env, output / "logs" / f"{arm}_timing.log")
            entry["predict_seconds_per_volume"] = seconds
        out[arm] = entry
    return out


def _link_images(folder: Path, cases: list[str], dataset_id: int, dataset_json: dict) -> None:
    """A folder of symbolic links to the images (all channels) of the training ``cases``."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    files = get_filenames_of_train_images_and_targets(str(find_raw_dataset(dataset_id)), dataset_json)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for image in files[case]["images"]:
            link = tmp / Path(image).name
            if not link.exists():
                link.symlink_to(Path(image).resolve())
    os.replace(tmp, folder)


def save(result: dict, output: Path, figures: bool = False) -> None:
    atomic_write_text(output / "benchmark.json", json.dumps(result, indent=1))
    if figures:
        atomic_write_text(output / "benchmark.md", markdown_report(result))
        plot_dice(result, output / "dice.png")
        plot_curves(result, output / "curves.png")


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def benchmark_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", type=int, required=True, help="data set id")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS),
                   help="; ".join(f"{k}: {v.purpose}" for k, v in PRESETS.items()))
    p.add_argument("--budgets", nargs="+", default=None, help="labelled patients per fold: counts (3 7) or shares")
    p.add_argument("--train_patients", nargs="+", action="append", default=None,
                   help="fixed labelled patients of one budget; repeat per budget (instead of --budgets)")
    p.add_argument("--val_patients", nargs="+", default=None, help="development patients, held out in every fold")
    p.add_argument("--val_budget", default="0.2", help="share or count of development patients if not given (0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-label draw (--budgets)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds: every run is repeated once per seed on the same split (default: 0)")
    p.add_argument("--budget_seeds", nargs="+", default=[], metavar="BUDGET=SEEDS",
                   help="seeds of one budget instead of --seeds, e.g. 7=0 (the 7-patient budget with seed 0 only)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time per run, for an equal-time comparison (default: the preset's; cpu-long: "
                        "20); the preset's epochs become a cap")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations per run instead, for an iteration-matched comparison (no time budget)")
    p.add_argument("--group_pattern", default=DEFAULT_GROUP_PATTERN, help="regex; group 1 is the patient id")
    p.add_argument("--pretrained_encoder", type=Path, default=None, metavar="encoder_export.pt",
                   help="exported encoder for the xlstm_pretrained arm (left out without it)")
    p.add_argument("--arms", nargs="+", default=None, choices=list(ARMS),
                   help=f"default: {' '.join(DEFAULT_ARMS)} (the semi-supervised arms only when named)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--test_folder", type=Path, default=None,
                   help="a folder with imagesTs and labelsTs (default: the data set's own, if it has both)")
    p.add_argument("--test_structures", nargs="+", default=None, metavar="NAME=VALUE",
                   help="the test labels' structures, if their convention differs (see nnunetv2_xlstm_evaluate)")
    p.add_argument("--test_remap", nargs="*", default=[], metavar="P:R")
    p.add_argument("--test_ignore", action="append", default=[], metavar="V[:NAME,...]")
    p.add_argument("--timing_cases", type=int, default=2, help="development images predicted for timing (2)")
    p.add_argument("--overwrite_splits", action="store_true", help="replace an existing, different splits_final.json")
    p.add_argument("--plan_only", action="store_true", help="write splits and plans, train nothing")
    p.add_argument("--finetune", default=None, metavar="SETTINGS",
                   help="fine-tuning protocol of the pretrained arms, e.g. encoder_lr=0.3,warmup=0.2,layer_decay=0.8 "
                        "(NNUNETV2_XLSTM_FINETUNE)")
    p.add_argument("--semi", default=None, metavar="SETTINGS",
                   help="settings of the semi-supervised arms, e.g. class_quantile=none (NNUNETV2_XLSTM_SEMI)")
    p.add_argument("--transductive", action="store_true",
                   help="allow an encoder pretrained on images of the development or test patients (reported)")
    p.add_argument("--output", type=Path, default=None, help="report folder (default ./benchmark_<id>_<preset>)")
    a = p.parse_args(argv)
    if (a.budgets is None) == (a.train_patients is None):
        p.error("give one of --budgets and --train_patients")
    import torch

    try:
        test_spec = parse_spec(a.test_structures, a.test_remap, a.test_ignore) if a.test_structures else None
        budget_seeds = parse_budget_seeds(a.budget_seeds)
        result = run_benchmark(a.d, get_preset(a.preset), a.output or Path(f"benchmark_{a.d}_{a.preset}"), a.budgets,
                      a.train_patients, a.val_patients, a.val_budget, a.seed, a.pretrained_encoder, a.arms,
                      a.device or ("cuda" if torch.cuda.is_available() else "cpu"), a.group_pattern,
                      a.overwrite_splits, a.test_folder, test_spec, a.timing_cases, a.plan_only, a.seeds, a.minutes,
                      a.transductive, a.iterations, a.finetune, a.semi, budget_seeds)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_benchmark: error: {error_line(e)}")
    failed = [f"{arm}, {budget} patients, seed {seed}" for budget, arms in result.get("runs", {}).items()
              for arm, seeds in arms.items() for seed, run in seeds.items() if run.get("status", "done") != "done"]
    if failed:
        sys.exit(f"nnunetv2_xlstm_benchmark: {len(failed)} run(s) failed ({'; '.join(failed)}); see their logs under "
                 f"{a.output or Path(f'benchmark_{a.d}_{a.preset}')}/logs, fix the cause and run the same command "
                 f"again to continue")


if __name__ == "__main__":
    benchmark_entry()
