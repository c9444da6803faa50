"""The progress PNG: loss and the collapse monitors, rewritten during training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nnunetv2_xlstm.atomic import atomic_write


def _smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def plot_history(history: dict[str, list[float]], path: Path, out_dim: int) -> None:
    """Six panels: DINO loss, teacher entropy (with log(out_dim), the uniform-collapse level), KL(teacher||student),
    embedding std, throughput and data-wait fraction. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "DINO loss"), ("teacher_entropy", "teacher entropy (nats)"), ("kl", "KL(teacher || student)"),
              ("embedding_std", "embedding std (0 = collapse)"), ("crops_per_s", "crops / s"),
              ("data_wait_fraction", "fraction of step waiting for data")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    window = max(1, len(history.get("loss", [])) // 50)
    for ax, (key, title) in zip(axes.flat, panels):
        values = history.get(key, [])
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, color="0.8", lw=0.8)
            smooth = _smooth(values, window)
            ax.plot(np.arange(len(values) - len(smooth) + 1, len(values) + 1), smooth, color="C0")
        if key == "teacher_entropy":
            ax.axhline(math.log(out_dim), color="C3", ls="--", lw=0.8, label="log(out_dim)")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    _save(fig, path)


def plot_masked_history(history: dict[str, list[float]], path: Path) -> None:
    """Masked distillation: the two losses, then per target stage the collapse guards (target and prediction
    variance, log scale, with their thresholds; cross-volume cosine of the targets), throughput and data wait.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunetv2_xlstm_pretraining.guards import MAX_CROSS_VOLUME_COSINE, MIN_PREDICTION_VAR, MIN_TARGET_VAR

    stages = sorted({k.rsplit("_", 1)[1] for k in history if k.startswith("target_var_")})
    panels = [(["distillation"], "distillation loss (masked positions)", None),
              (["reconstruction"], "reconstruction MSE (masked voxels)", None),
              ([f"target_var_{s}" for s in stages] + [f"prediction_var_{s}" for s in stages],
               "variance over space (collapse: below the lines)", (MIN_TARGET_VAR, MIN_PREDICTION_VAR)),
              ([f"cross_cosine_{s}" for s in stages], "cosine of targets between volumes", (MAX_CROSS_VOLUME_COSINE,)),
              (["crops_per_s"], "crops / s", None), (["data_wait_fraction"], "fraction of step waiting for data", None)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    window = max(1, len(history.get("loss", [])) // 50)
    for ax, (keys, title, lines) in zip(axes.flat, panels):
        for i, key in enumerate(keys):
            values = history.get(key, [])
            if not values:
                continue
            smooth = _smooth(values, window)
            ax.plot(np.arange(len(values) - len(smooth) + 1, len(values) + 1), smooth, color=f"C{i}",
                    label=key if len(keys) > 1 else None)
        for y in lines or ():
            ax.axhline(y, color="C3", ls="--", lw=0.8)
        if title.startswith("variance"):
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend(fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)
