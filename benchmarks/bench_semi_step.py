"""Step time of the semi-supervised trainer against the supervised one, on a data set's real plans.

Builds the benchmark's supervised XLSTMUNet trainer (``nnUNetTrainerBenchmark_<suffix>``) and
``nnUNetTrainerXLSTMSemi_<suffix>`` for the plans and
configuration given, and times ``train_step`` on batches of the plans' patch and batch size (random images and
labels: the step's cost does not depend on the values): the supervised step, the semi trainer's warm-start step
(labelled copy-paste) and its semi step (teacher pass on half a batch of unlabelled patches, both mixes, one student
pass). Data loading and augmentation are not in these times (they are the same loader for both trainers, plus one
half-size unlabelled batch per semi step). Median of ``--steps`` steps after ``--warmup`` steps.

    export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...
    python benchmarks/bench_semi_step.py -d 801 -p nnUNetPlansBench_cpu-long_xlstm --steps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def trainer(cls: type, plans_file: Path, configuration: str, device: torch.device):
    folder = plans_file.parent
    plans = {**json.loads(plans_file.read_text()), "continue_training": False}
    t = cls(plans, configuration, 0, json.loads((folder / "dataset.json").read_text()), device)
    t.initialize()
    t.optimizer, t.lr_scheduler = t.configure_optimizers()
    return t


def batch(t, n: int, classes: int) -> dict:
    x = torch.randn(n, 1, *t.configuration_manager.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in t.plain_network()(x)]
    return {"data": x, "target": [torch.randint(0, classes, (n, 1, *s)).float() for s in shapes]}


def timed(step, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from nnunetv2_xlstm.training import benchmark, semi

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="data set folder name or id under nnUNet_preprocessed")
    p.add_argument("-p", default="nnUNetPlansXLSTM", help="plans name")
    p.add_argument("-c", default="3d_fullres", help="configuration")
    p.add_argument("--suffix", default="cpulong", help="trainer schedule suffix (smoke, cpu, cpulong, ...)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import os

    root = Path(os.environ["nnUNet_preprocessed"])
    folder = next(f for f in root.iterdir() if f.name == a.d or f.name.startswith(f"Dataset{int(a.d):03d}_")) \
        if a.d.isdigit() else root / a.d
    plans_file, device = folder / f"{a.p}.json", torch.device(a.device)
    supervised = trainer(getattr(benchmark, f"nnUNetTrainerBenchmark_{a.suffix}"), plans_file, a.c, device)
    classes = len(supervised.label_manager.all_labels)
    b = batch(supervised, supervised.batch_size, classes)
    results = {"supervised": timed(lambda: supervised.train_step(b), a.steps, a.warmup)}
    del supervised
    s = trainer(getattr(semi, f"nnUNetTrainerXLSTMSemi_{a.suffix}"), plans_file, a.c, device)
    results["semi: warm start"] = timed(lambda: s.train_step(b), a.steps, a.warmup)
    s.start_semi_phase("benchmark")
    half = (s.batch_size + 1) // 2
    s.dataloader_unlabelled = iter(lambda: {"data": torch.randn(half, 1, *s.configuration_manager.patch_size)}, None)
    s.schedule_epoch = lambda: s.num_epochs  # past the ramp
    results["semi: semi phase"] = timed(lambda: s.train_step(b), a.steps, a.warmup)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.device}; plans {a.p} {a.c}, "
          f"patch {s.configuration_manager.patch_size}, batch {s.batch_size}")
    for name, seconds in results.items():
        print(f"{name:18s} {seconds:.3f} s/step  ({seconds / results['supervised']:.2f}x supervised)")


if __name__ == "__main__":
    main()
