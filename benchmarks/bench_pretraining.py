"""Pretraining throughput: crops per second and the share of wall time spent computing (not waiting for data).

Runs ``nnunetv2_xlstm_pretrain``'s loop for a few steps on synthetic CT and MRI volumes (or on ``--source`` folders),
skipping the first steps (start-up), and prints the medians. Target: at least 85% of wall time in compute.

    python benchmarks/bench_pretraining.py --preset cpu --steps 30
    python benchmarks/bench_pretraining.py --preset gpu --steps 100 --set num_workers=8     # on a GPU
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_xlstm_pretraining.cli import parse_source
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.train import pretrain


def synthetic_sources(folder: Path, n: int = 4, size: int = 64) -> list[SourceConfig]:
    """``n`` CT (HU) and ``n`` MRI-like volumes of ``size``^3 voxels at 2 mm: a body with a bright blob and noise."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    for modality, (air, body, blob) in {"CT": (-1000.0, 40.0, 350.0), "MRI": (5.0, 300.0, 900.0)}.items():
        (folder / modality).mkdir(parents=True)
        for i in range(n):
            inside = (grid[1] ** 2 + grid[2] ** 2) < 0.8
            spot = ((grid - rng.uniform(-0.3, 0.3, (3, 1, 1, 1))) ** 2).sum(0) < 0.08
            img = np.where(inside, body, air) + np.where(spot, blob - body, 0) + rng.normal(0, 10, grid.shape[1:])
            image = sitk.GetImageFromArray(img.astype(np.float32))
            image.SetSpacing((2.0,) * 3)
            sitk.WriteImage(image, str(folder / modality / f"{modality}{i}.nii.gz"))
    return [SourceConfig(str(folder / "CT"), "CT"), SourceConfig(str(folder / "MRI"), "MRI")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the medians")
    p.add_argument("--source", action="append", default=[], help="PATH:MODALITY (default: synthetic volumes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    logging.getLogger("nnunetv2_xlstm_pretraining").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        sources = [parse_source(s) for s in a.source] or synthetic_sources(Path(tmp) / "data")
        config = load_config(preset=a.preset, overrides=[f"steps={a.steps}", f"save_every={a.steps}",
                                                         f"plot_every={a.steps}", *a.set], sources=sources)
        history = pretrain(config, Path(tmp) / "run", progress=False)["history"]
    crops = history["crops_per_s"][a.skip:]
    wait = history["data_wait_fraction"][a.skip:]
    device = torch.cuda.get_device_name() if config.device != "cpu" and torch.cuda.is_available() else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; preset {a.preset}, batch {config.batch_size} x (2 + {config.num_local_crops}) crops, "
          f"{config.num_workers} data worker(s); median over steps {a.skip + 1}-{a.steps}")
    print(f"crops/s {statistics.median(crops):.1f}; compute share of wall time "
          f"{1 - statistics.median(wait):.1%} (mean {1 - statistics.mean(wait):.1%}); target >= 85%")


if __name__ == "__main__":
    main()
