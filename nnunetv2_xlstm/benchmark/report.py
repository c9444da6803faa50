"""What a benchmark run measured: learning curves and speed from nnU-Net's training logs, and the JSON, Markdown
and PNG outputs."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np

from nnunetv2_xlstm.atomic import atomic_write

_LINE = re.compile(r"^\S+ \S+: (Epoch (?P<epoch>\d+)|train_loss (?P<train_loss>\S+)|val_loss (?P<val_loss>\S+)|"
                   r"Pseudo dice \[(?P<dice>[^\]]*)\]|Epoch time: (?P<time>\S+) s|Peak memory: (?P<mem>\S+) GiB.*?)\s*$")


def parse_training_log(folder: Path) -> list[dict]:
    """One dict per epoch (``epoch``, ``train_loss``, ``val_loss``, ``pseudo_dice`` (mean over classes),
    ``seconds``, ``peak_memory_gib`` where logged) from every ``training_log_*.txt`` in ``folder``, in order; a
    resumed run's repeated epochs keep their last values."""
    epochs: dict[int, dict] = {}
    current = None
    for log in sorted(Path(folder).glob("training_log_*.txt")):
        for line in log.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            g = match.groupdict()
            if g["epoch"] is not None:
                current = epochs.setdefault(int(g["epoch"]), {"epoch": int(g["epoch"])})
            elif current is not None:
                if g["dice"] is not None:
                    values = [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", re.sub(
                        r"np\.float\d+\(", "", g["dice"]))]
                    current["pseudo_dice"] = float(np.mean(values)) if values else float("nan")
                else:
                    key, value = next((k, v) for k, v in g.items() if v is not None and k != "epoch")
                    current[{"time": "seconds", "mem": "peak_memory_gib"}.get(key, key)] = float(value)
    return [epochs[k] for k in sorted(epochs)]


def speed_from_log(epochs: list[dict], iterations: int) -> dict:
    """Median seconds per training iteration (an epoch's wall time, validation batches and data loading included,
    over its training iterations; the first epoch is skipped when there are others) and the peak memory."""
    times = [e["seconds"] for e in epochs if "seconds" in e]
    times = times[1:] if len(times) > 1 else times
    memory = [e["peak_memory_gib"] for e in epochs if "peak_memory_gib" in e]
    return {"step_seconds": statistics.median(times) / iterations if times else None,
            "peak_memory_gib": max(memory) if memory else None}


def markdown_report(result: dict) -> str:
    """Tables: Dice per structure and arm for every budget, then the speed of every arm."""
    lines = [f"# Benchmark: {result['dataset']}, preset `{result['preset']['name']}`", "",
             f"Preset: {result['preset']['purpose']}. Changes from nnU-Net's defaults: "
             + "; ".join(result["preset"]["changes"]) + ".", "",
             f"Machine: {result['machine']}. Evaluated on: {result['evaluated_on']}. HD95 is averaged over the "
             f"cases where both prediction and reference contain the structure; Dice over all.", ""]
    structures = result["structures"]
    for budget, arms in result["runs"].items():
        lines += [f"## {budget} labelled patients", "",
                  "| arm | " + " | ".join(structures) + " | mean Dice | mean HD95 (mm) | wall time |",
                  "| --- |" + " --- |" * (len(structures) + 3)]
        for arm, run in arms.items():
            if "dice" not in run:
                lines.append(f"| {run['label']} | " + " | ".join("—" for _ in structures) + f" | {run.get('status')} | | |")
                continue
            lines.append(f"| {run['label']} | " + " | ".join(f"{run['dice'][s]:.3f}" for s in structures)
                         + f" | **{run['dice']['mean']:.3f}** | {run['hd95']['mean']:.1f} | "
                         f"{run['wall_seconds'] / 60:.1f} min |")
        lines.append("")
    if "speed" not in result:  # a run in progress: the speed table comes at the end
        return "\n".join(lines)
    lines += ["## Speed", "", "| arm | parameters | training step | peak memory | prediction per volume |",
              "| --- | --- | --- | --- | --- |"]
    for arm, s in result["speed"].items():
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
    """Grouped bars: one panel per budget, structures on the x axis, one bar per arm."""
    plt = _pyplot()
    budgets = list(result["runs"])
    structures = [*result["structures"], "mean"]
    fig, axes = plt.subplots(1, len(budgets), figsize=(2.5 + 0.8 * len(structures) * len(budgets), 3.6),
                             squeeze=False, sharey=True)
    for ax, budget in zip(axes[0], budgets):
        arms = [(a, r) for a, r in result["runs"][budget].items() if "dice" in r]
        width = 0.8 / max(len(arms), 1)
        for i, (arm, run) in enumerate(arms):
            ax.bar(np.arange(len(structures)) + i * width, [run["dice"][s] for s in structures], width,
                   label=run["label"])
        ax.set_xticks(np.arange(len(structures)) + 0.4 - width / 2, structures)
        ax.set_title(f"{budget} labelled patients")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice (held out)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, out)


def plot_curves(result: dict, out: Path) -> None:
    """Learning curves side by side: pseudo Dice (nnU-Net's validation batches) and training loss per epoch."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    budgets = list(result["runs"])
    fig, axes = plt.subplots(2, len(budgets), figsize=(5 * len(budgets) + 1.5, 6), squeeze=False, sharex="col")
    for col, budget in enumerate(budgets):
        for arm, run in result["runs"][budget].items():
            curve = run.get("curve") or []
            x = [e["epoch"] for e in curve]
            axes[0][col].plot(x, [e.get("pseudo_dice", np.nan) for e in curve], marker=".", label=run["label"])
            axes[1][col].plot(x, [e.get("train_loss", np.nan) for e in curve], marker=".", label=run["label"])
        axes[0][col].set_title(f"{budget} labelled patients")
        axes[0][col].set_ylabel("pseudo Dice (validation batches)")
        axes[1][col].set_ylabel("training loss")
        axes[1][col].set_xlabel("epoch")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    _pyplot().close(fig)
