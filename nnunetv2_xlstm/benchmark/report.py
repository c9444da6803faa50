"""What a benchmark measured: learning curves and speed from nnU-Net's checkpoint logging, the summary over seeds
with paired bootstrap intervals, and the Markdown and PNG outputs."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from nnunetv2_xlstm.atomic import atomic_write
from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.splits import DEFAULT_GROUP_PATTERN, group_patients

STOCK = "stock"  # the arm every other arm's paired difference refers to
# arms that change one thing of another arm, and that arm: their paired difference is reported as well (XLSTMUNet
# against the same network without its mLSTM blocks: what the mLSTM is worth)
TWINS = {"xlstm_pretrained": "xlstm", "xlstm_pretrained_decoder": "xlstm", "xlstm_semi": "xlstm",
         "xlstm_pretrained_semi": "xlstm_pretrained", "xlstm_pretrained_decoder_semi": "xlstm_pretrained_decoder",
         "xlstm": "xlstm_no_mlstm"}


def curve_from_checkpoint(folder: Path) -> list[dict]:
    """One dict per finished epoch (``epoch``, ``train_loss``, ``val_loss``, ``pseudo_dice`` (mean over classes),
    ``lr``, ``seconds``, and ``peak_memory_gib`` where our trainers logged it) from nnU-Net's checkpoint logging:
    ``checkpoint_final.pth``, else ``checkpoint_latest.pth``; read with ``weights_only=True``. Empty if neither
    exists."""
    folder = Path(folder)
    path = next((folder / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth") if (folder / n).is_file()), None)
    if path is None:
        return []
    log = load_nnunet_checkpoint(path)["logging"]
    columns = {"train_loss": "train_losses", "val_loss": "val_losses", "pseudo_dice": "mean_fg_dice", "lr": "lrs",
               "peak_memory_gib": "peak_memory_gib"}
    epochs = min(len(log["train_losses"]), len(log["epoch_end_timestamps"]))
    curve = []
    for e in range(epochs):
        row = {"epoch": e, "seconds": float(log["epoch_end_timestamps"][e] - log["epoch_start_timestamps"][e])}
        row.update({k: float(log[v][e]) for k, v in columns.items() if len(log.get(v, [])) > e})
        curve.append(row)
    return curve


def speed_from_curve(epochs: list[dict], iterations: int) -> dict:
    """Median seconds per training iteration (an epoch's wall time, validation batches and data loading included,
    over its training iterations; the first epoch is skipped when there are others) and the peak memory."""
    times = [e["seconds"] for e in epochs if "seconds" in e]
    times = times[1:] if len(times) > 1 else times
    memory = [e["peak_memory_gib"] for e in epochs if "peak_memory_gib" in e]
    return {"step_seconds": statistics.median(times) / iterations if times else None,
            "peak_memory_gib": max(memory) if memory else None}


def bootstrap_ci(values: np.ndarray | list[float], resamples: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval (resampling the values
    with replacement, ``resamples`` times, seeded). NaN values are dropped; all NaN if none is left."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def clustered_bootstrap_ci(clusters: dict[str, list[float]], resamples: int = 10_000, level: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float, int]:
    """``(mean, low, high, n_clusters)``: the mean of all values and its percentile bootstrap interval when whole
    clusters (patients: both frames and every seed) are resampled with replacement: each resample draws as many
    clusters as there are and takes the mean of all their values. NaN values are dropped (a cluster left empty
    too). With clusters of one value each this is :func:`bootstrap_ci`."""
    kept = [np.asarray(v, dtype=float) for v in clusters.values()]
    kept = [v[~np.isnan(v)] for v in kept]
    kept = [v for v in kept if v.size]
    if not kept:
        return float("nan"), float("nan"), float("nan"), 0
    sums, counts = np.array([v.sum() for v in kept]), np.array([v.size for v in kept], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(kept), (resamples, len(kept)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = 100 * (1 - level) / 2
    return (float(sums.sum() / counts.sum()), float(np.percentile(means, tail)),
            float(np.percentile(means, 100 - tail)), len(kept))


def _case_dice(run: dict, structures: list[str]) -> dict[str, dict[str, float]]:
    """``{case: {structure: Dice, "mean": mean over structures}}`` of a finished run."""
    out = {}
    for case, scores in run["per_case"].items():
        row = {s: float(scores[s]["Dice"]) for s in structures}
        values = [v for v in row.values() if not np.isnan(v)]
        out[case] = {**row, "mean": float(np.mean(values)) if values else float("nan")}
    return out


def summarise(runs: dict[str, dict[str, dict[str, dict]]], structures: list[str],
              group_pattern: str = DEFAULT_GROUP_PATTERN, pairs: list[tuple[str, str]] | tuple = ()) -> dict:
    """Per budget and arm, over its finished seeds: Dice mean ± sd per structure (the sd over seeds of each seed's
    mean over cases; None with one seed), the iterations reached, and the paired difference
    (:func:`paired_difference`) to the stock arm (``vs_stock``), for the arms in :data:`TWINS` to their twin
    (``vs_twin``), and for each ``(arm, other)`` of ``pairs`` to that other arm (``vs_arms[other]``: e.g. both
    cells of a 2 × 2 that no twin links)."""
    names = [*structures, "mean"]
    out: dict = {}
    for budget, arms in runs.items():
        done = {arm: {seed: r for seed, r in seeds.items() if r.get("status") == "done"} for arm, seeds in arms.items()}
        for arm, seeds in done.items():
            if not seeds:
                continue
            per_seed = np.array([[r["dice"][s] for s in names] for r in seeds.values()])
            entry = {"seeds": sorted(seeds, key=int),
                     "dice": {s: {"mean": float(per_seed[:, i].mean()),
                                  "sd": float(per_seed[:, i].std(ddof=1)) if len(seeds) > 1 else None}
                              for i, s in enumerate(names)},
                     "iterations": [r.get("iterations") for r in seeds.values()],
                     "hd95_mean": float(np.mean([r["hd95"]["mean"] for r in seeds.values()])),
                     "wall_minutes": _mean([r["wall_seconds"] / 60 for r in seeds.values() if "wall_seconds" in r])}
            if arm != STOCK and set(seeds) & set(done.get(STOCK, {})):
                entry["vs_stock"] = paired_difference(seeds, done[STOCK], structures, group_pattern)
            twin = TWINS.get(arm)
            if twin and set(seeds) & set(done.get(twin, {})):
                entry["vs_twin"] = {"arm": twin, **paired_difference(seeds, done[twin], structures, group_pattern)}
            for other in dict.fromkeys(b for a, b in pairs if a == arm and b not in (twin, STOCK)):  # not twice
                if set(seeds) & set(done.get(other, {})):
                    entry.setdefault("vs_arms", {})[other] = paired_difference(seeds, done[other], structures,
                                                                               group_pattern)
            out.setdefault(budget, {})[arm] = entry
    return out


def paired_difference(mine: dict[str, dict], theirs: dict[str, dict], structures: list[str],
                      group_pattern: str = DEFAULT_GROUP_PATTERN) -> dict:
    """Per structure and for the mean over structures: the mean difference ``mine - theirs`` over the pairs (case,
    seed) of the seeds both finished and its 95 % bootstrap interval over **patients** (a patient's cases, e.g. ACDC's
    two frames, and all its seeds are resampled together: :func:`clustered_bootstrap_ci`; patients from the cases by
    ``group_pattern``, as the split groups them), the numbers of pairs and patients, the seeds, each seed's mean
    difference (``per_seed``) and their sd (``seed_sd``; None with one seed)."""
    names = [*structures, "mean"]
    common = sorted(set(mine) & set(theirs), key=int)
    by_patient: dict[str, dict[str, list[float]]] = {s: {} for s in names}
    per_seed: dict[str, list[float]] = {s: [] for s in names}
    for seed in common:
        a, b = _case_dice(mine[seed], structures), _case_dice(theirs[seed], structures)
        common_cases = sorted(set(a) & set(b))
        for s in names:
            for patient, cases in group_patients(common_cases, group_pattern).items():
                by_patient[s].setdefault(patient, []).extend(a[c][s] - b[c][s] for c in cases)
            d = [a[c][s] - b[c][s] for c in common_cases]
            per_seed[s].append(float(np.nanmean(d)) if d else float("nan"))
    out = {}
    for s in names:
        mean, low, high, patients = clustered_bootstrap_ci(by_patient[s])
        out[s] = {"mean": mean, "low": low, "high": high, "pairs": sum(len(v) for v in by_patient[s].values()),
                  "patients": patients, "seeds": common, "per_seed": per_seed[s],
                  "seed_sd": float(np.std(per_seed[s], ddof=1)) if len(common) > 1 else None}
    return out


def _label(seeds: dict[str, dict], arm: str) -> str:
    """An arm's label as its runs record it (``arm`` if none does)."""
    return next((r["label"] for r in seeds.values() if "label" in r), arm)


def arm_order(result: dict) -> list[str]:
    """Every arm of ``result`` once, stock nnU-Net first and the others as they first appear: one colour, one row
    and one bar position per arm in every table and panel, whichever call ran which arm first."""
    arms = dict.fromkeys(arm for budget in result["runs"].values() for arm in budget)
    return sorted(arms, key=lambda arm: arm != STOCK)


def _ordered(arms: dict, order: list[str]) -> list[tuple[str, object]]:
    """``arms.items()`` in ``order`` (arms not in it last)."""
    return sorted(arms.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def _mean(values: list[float]) -> float | None:
    """The mean, or None for no values (e.g. the time of runs that another benchmark trained before it was kept)."""
    return float(np.mean(values)) if values else None


def _pm(entry: dict) -> str:
    return f"{entry['mean']:.3f}" + (f" ± {entry['sd']:.3f}" if entry.get("sd") is not None else "")


def _paired(entry: dict) -> list[tuple[str, dict]]:
    """``(other arm, paired difference)`` of an arm's summary entry: its twin first, then the arms of ``pairs``."""
    twin = [(entry["vs_twin"]["arm"], entry["vs_twin"])] if "vs_twin" in entry else []
    return twin + list(entry.get("vs_arms", {}).items())


def _difference_table(result: dict, budget: str, structures: list[str]) -> list[str]:
    """Per arm, its paired difference to its twin (:data:`TWINS`), then those asked for by ``pairs``: per
    structure the mean [95 % bootstrap interval] over patients (their cases and seeds together), and the sd over seeds
    of the per-seed mean difference."""
    arms = _ordered(result.get("summary", {}).get(budget, {}), arm_order(result))
    rows = [(arm, other, d) for arm, e in arms for other, d in _paired(e)]
    if not rows:
        return []
    lines = ["Paired differences (same split, seeds and schedule; mean over cases and seeds, [95 % bootstrap interval "
             "over patients, their frames and seeds resampled together]; sd: over seeds of each seed's mean "
             "difference):", "",
             "| difference | " + " | ".join(structures) + " | mean Dice | per seed | sd over seeds | patients | seed ids |",
             "| --- |" + " --- |" * (len(structures) + 5)]
    cell = lambda v: f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
    runs = result["runs"][budget]
    for arm, other, d in rows:
        sd = d["mean"]["seed_sd"]
        lines.append(f"| {_label(runs[arm], arm)} − {_label(runs.get(other, {}), other)} | "
                     + " | ".join(cell(d[s]) for s in structures)
                     + f" | **{cell(d['mean'])}** | {', '.join(f'{v:+.3f}' for v in d['mean'].get('per_seed', []))} | "
                       f"{'—' if sd is None else f'{sd:.3f}'} | {d['mean'].get('patients', '—')} | "
                       f"{', '.join(d['mean']['seeds'])} |")
    return lines + [""]


def _budget(result: dict) -> str:
    if result.get("iterations"):
        return f"{result['iterations']} training iterations (iteration-matched, no time budget)"
    if result.get("minutes"):
        return f"{result['minutes']:g} minutes of training (equal time)"
    return "the preset's epochs"


def markdown_report(result: dict) -> str:
    """Tables per budget: Dice mean ± sd per structure and arm, the paired difference to stock nnU-Net with its
    95 % bootstrap interval, iterations reached and wall time; failed runs listed; then the speed of every arm."""
    lines = [f"# Benchmark: {result['dataset']}, preset `{result['preset']['name']}`", "",
             f"Preset: {result['preset']['purpose']}. Changes from nnU-Net's defaults: "
             + "; ".join(result["preset"]["changes"]) + ".", "",
             f"Budget per run: {_budget(result)}. "
             f"Machine: {result['machine']}. Evaluated on: {result['evaluated_on']}. Seeds: "
             f"{', '.join(map(str, result.get('seeds', [0])))}. Dice: mean ± sd over seeds of each seed's mean over "
             f"cases. Δ stock: the mean paired difference to stock nnU-Net over cases × seeds, [95 % bootstrap "
             f"interval over patients: a patient's frames and seeds resampled together]. HD95: mean over structures, cases and seeds; a structure missed (or predicted where there is none) "
             f"counts as the image diagonal.",
             ""]
    structures = result["structures"]
    summary = result.get("summary", {})
    order = arm_order(result)
    for budget, arms in result["runs"].items():
        lines += [f"## {budget} labelled patients", "",
                  "| arm | " + " | ".join(structures) + " | mean Dice | Δ stock (mean Dice) | mean HD95 (mm) | "
                  "iterations | wall time |", "| --- |" + " --- |" * (len(structures) + 5)]
        failed = []
        for arm, seeds in _ordered(arms, order):
            label = _label(seeds, arm)
            failed += [f"{label}, seed {seed}: {r['status']}" for seed, r in seeds.items()
                       if r.get("status") not in ("done", None)]
            entry = summary.get(budget, {}).get(arm)
            if entry is None:
                lines.append(f"| {label} | " + " | ".join("—" for _ in structures) + " | — | | | | |")
                continue
            d = entry.get("vs_stock", {}).get("mean")
            delta = "" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            its = sorted({i for i in entry["iterations"] if i is not None})
            its = "–".join(str(i) for i in dict.fromkeys(its[:1] + its[-1:]))  # the range over seeds
            lines.append(f"| {label} | " + " | ".join(_pm(entry["dice"][s]) for s in structures)
                         + f" | **{_pm(entry['dice']['mean'])}** | {delta} | {entry['hd95_mean']:.1f} | {its} | "
                           + ("— |" if entry["wall_minutes"] is None else f"{entry['wall_minutes']:.1f} min |"))
        lines += [""] + [f"- {f}" for f in failed] + ([""] if failed else [])
        lines += _difference_table(result, budget, structures)
    if "speed" not in result:  # a run in progress: the speed table comes at the end
        return "\n".join(lines)
    lines += ["## Speed", "", "| arm | parameters | training step | peak memory | prediction per volume |",
              "| --- | --- | --- | --- | --- |"]
    for arm, s in _ordered(result["speed"], order):
        fmt = lambda v, f: "—" if v is None else f.format(v)
        lines.append(f"| {s['label']} | {s['parameters'] / 1e6:.2f} M | {fmt(s.get('step_seconds'), '{:.2f} s')} | "
                     f"{fmt(s.get('peak_memory_gib'), '{:.2f} GiB')} | "
                     f"{fmt(s.get('predict_seconds_per_volume'), '{:.1f} s')} |")
    lines += ["", "Training step: median epoch wall time over its training iterations (validation batches and data "
              "loading included), the fastest of the arm's runs. Peak memory: CUDA tensors on a GPU, the training "
              "process's resident set on a CPU. Prediction: `nnUNetv2_predict` wall time over the volumes "
              "predicted, model loading included.", ""]
    return "\n".join(lines)


def plot_dice(result: dict, out: Path) -> None:
    """Two rows of panels, one column per budget: Dice per structure and arm (bars: mean over seeds, error bars:
    sd over seeds), and each arm's paired difference to stock nnU-Net (points, error bars: 95 % bootstrap
    interval); without a stock arm, each arm's difference to its twin (:data:`TWINS`) and to the other arms it was
    paired with (``vs_arms``, other markers); without either, one row."""
    plt = _pyplot()
    summary = result.get("summary", {})
    budgets = list(summary) or list(result["runs"])
    structures = [*result["structures"], "mean"]
    entries = [e for arms in summary.values() for e in arms.values()]
    key = "vs_stock" if any("vs_stock" in e for e in entries) else "vs_twin"
    order = arm_order(result)
    width = 0.8 / max(len(order), 1)
    rows = 2 if any(key in e or (key == "vs_twin" and "vs_arms" in e) for e in entries) else 1
    fig, axes = plt.subplots(rows, len(budgets), figsize=(2.5 + 0.9 * len(structures) * len(budgets), 3.2 * rows),
                             squeeze=False, sharey="row", layout="constrained")
    for col, budget in enumerate(budgets):
        x = np.arange(len(structures))
        for arm, entry in _ordered(summary.get(budget, {}), order):
            i = order.index(arm)
            label = _label(result["runs"][budget][arm], arm)
            sd = [entry["dice"][s]["sd"] or 0 for s in structures]
            axes[0][col].bar(x + i * width, [entry["dice"][s]["mean"] for s in structures], width, yerr=sd,
                             capsize=2, label=label, color=f"C{i}")
            if key == "vs_stock":
                diffs = [(entry[key], label)] if key in entry else []
            else:  # its twin, then the arms it was paired with
                diffs = [(d, f"{label} − {_label(result['runs'][budget].get(other, {}), other)}")
                         for other, d in _paired(entry)]
            for j, (d, text) in enumerate(diffs):
                _interval(axes[1][col], x + i * width + j * width / 3, [d[s] for s in structures], f"C{i}",
                          "os^v"[j % 4], text)
        for ax in axes[:, col]:
            ax.set_xticks(x + 0.4 - width / 2, structures)
            ax.grid(axis="y", alpha=0.3)
        axes[0][col].set_title(f"{budget} labelled patients")
        axes[0][col].set_ylim(0, 1)
        axes[-1][col].axhline(0, color="k", lw=0.8)
    axes[0][0].set_ylabel("Dice (held out), mean ± sd over seeds")
    _legend(fig, axes[0], "upper")
    if rows == 2:
        paired = " or paired arm" if key == "vs_twin" and any("vs_arms" in e for e in entries) else ""
        axes[1][0].set_ylabel(("Δ Dice vs stock nnU-Net" if key == "vs_stock" else "Δ Dice vs its twin" + paired)
                              + "\n(95 % bootstrap CI over patients)")
        if key == "vs_twin":
            _legend(fig, axes[1], "lower")
    _save(fig, out)


def plot_curves(result: dict, out: Path) -> None:
    """Learning curves side by side, every seed a line: pseudo Dice (nnU-Net's validation batches) and training
    loss against training iterations."""
    plt = _pyplot()

    budgets = list(result["runs"])
    order = arm_order(result)
    fig, axes = plt.subplots(2, len(budgets), figsize=(5 * len(budgets) + 1.5, 6), squeeze=False, sharex="col",
                             layout="constrained")
    for col, budget in enumerate(budgets):
        for arm, seeds in _ordered(result["runs"][budget], order):
            i = order.index(arm)
            for j, run in enumerate(seeds.values()):
                curve = run.get("curve") or []
                x = [(e["epoch"] + 1) * run.get("iterations_per_epoch", 1) for e in curve]
                label = run.get("label", arm) if j == 0 else None
                axes[0][col].plot(x, [e.get("pseudo_dice", np.nan) for e in curve], color=f"C{i}", label=label)
                axes[1][col].plot(x, [e.get("train_loss", np.nan) for e in curve], color=f"C{i}", label=label)
        axes[0][col].set_title(f"{budget} labelled patients")
        axes[0][col].set_ylabel("pseudo Dice (validation batches)")
        axes[1][col].set_ylabel("training loss")
        axes[1][col].set_xlabel("training iterations")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    _legend(fig, axes[0], "lower")
    _save(fig, out)


def _interval(ax, x: np.ndarray, d: list[dict], color: str, marker: str, label: str) -> None:
    """Paired differences as points with their 95 % intervals."""
    mean = np.array([v["mean"] for v in d])
    err = np.array([[m - v["low"] for m, v in zip(mean, d)], [v["high"] - m for m, v in zip(mean, d)]])
    ax.errorbar(x, mean, yerr=err, fmt=marker, capsize=3, color=color, label=label)


def _legend(fig, axes, side: str) -> None:
    """One legend for a row of panels (every arm once, in the order of its colours), above or below all panels,
    one arm a line: labels as long as a protocol's settings neither shrink the panels nor get cut off."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc=f"outside {side} center", fontsize=7)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight"))
    _pyplot().close(fig)
