"""``nnunetv2_xlstm_demo``: the whole chain on synthetic phantoms, through nnU-Net's own commands, on a CPU.

phantoms -> plan and preprocess (XLSTMUNetPlanner) -> ``nnUNetv2_train -tr nnUNetTrainerXLSTM_short`` ->
``nnUNetv2_predict`` -> ``nnUNetv2_evaluate_folder`` -> Dice table per structure and an overlay PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError, nnunet_environment
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS

MARKER = ".nnunetv2_xlstm_demo"
PLANS = "nnUNetPlansXLSTM"
CONFIG = "3d_fullres"
# sized for 2 CPU cores: widths 16..128 and batch 2 at the 48^3 phantom patch (about 1 s per iteration)
DEMO_PLANNER_KWARGS = {"base_features": 16, "max_features": 128, "batch_size": 2}


def run_command(args: list[str], env: dict[str, str]) -> None:
    """Run an nnU-Net console command, its output going to ours; raise with the command line if it fails.

    The command is looked up next to the running interpreter first, so an unactivated venv works too.
    """
    print("$ " + " ".join(args), flush=True)
    local = Path(sys.executable).parent / args[0]
    result = subprocess.run([str(local) if local.exists() else args[0], *args[1:]], env=env)
    if result.returncode:
        raise RuntimeError(f"command failed with exit code {result.returncode}: {' '.join(args)}")


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).exists():
            raise InputError(f"{output} exists and is not a demo output folder; choose another --output.")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).touch()


def dice_table(summary_file: Path) -> tuple[dict[str, float], str]:
    """Per-structure Dice from nnU-Net's ``summary.json`` and a printable table."""
    summary = json.loads(summary_file.read_text())
    names = {str(v): k for k, v in WHOLE_HEART_LABELS.items()}
    dice = {names[k]: v["Dice"] for k, v in summary["mean"].items()}
    dice["mean"] = summary["foreground_mean"]["Dice"]
    rows = "\n".join(f"{k:<10}{v:>8.3f}" for k, v in dice.items())
    return dice, f"{'structure':<10}{'Dice':>8}\n{rows}"


def overlay_png(images: Path, labels: Path, predictions: Path, out: Path) -> None:
    """One row per test case: image, ground truth and prediction on the axial slice with most foreground."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(p.name for p in labels.glob("*.nii.gz"))
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(images / case.replace(".nii.gz", "_0000.nii.gz"))))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / case)))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / case)))
        z = int(np.argmax((gt > 0).sum((1, 2))))
        for ax, seg, title in zip(row, (None, gt, pred), ("image", "ground truth", "prediction")):
            ax.imshow(img[z], cmap="gray")
            if seg is not None:
                ax.imshow(np.ma.masked_equal(seg[z], 0), cmap="tab10", vmin=0, vmax=9, alpha=0.5,
                          interpolation="nearest")
            ax.set_title(f"{case.split('.')[0]}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out)


def run_demo(output: Path, dataset_id: int = 990, num_train: int = 10, num_test: int = 4, seed: int = 0,
             trainer: str = "nnUNetTrainerXLSTM_short") -> dict[str, float]:
    """Run the chain into ``output`` (nnUNet_raw/preprocessed/results inside it); return the test Dice per structure."""
    from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess

    output = Path(output).resolve()
    _prepare_output(output)
    env = nnunet_environment(output)
    env.setdefault("nnUNet_def_n_proc", "2")  # nnU-Net's default spawns 8 export workers, which swamps 2 cores
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    raw = Path(env["nnUNet_raw"])
    times: dict[str, float] = {}
    steps = ["phantoms", "plan+preprocess", "train", "predict", "evaluate", "report"]
    bar = tqdm(steps, desc="demo", unit="step", file=sys.stdout)
    for step in bar:
        bar.set_postfix_str(step)
        tqdm.write(f"\n=== {step} ===", file=sys.stdout)
        t0 = time.perf_counter()
        if step == "phantoms":
            dataset = write_phantom_dataset(raw, dataset_id, num_train, num_test, seed=seed,
                                            geometry=PhantomGeometry((48, 48, 48), 3.0))
        elif step == "plan+preprocess":
            plan_and_preprocess([dataset_id], configurations=[CONFIG], num_processes=[2], num_processes_fingerprint=2,
                                planner_kwargs=DEMO_PLANNER_KWARGS)
        elif step == "train":
            run_command(["nnUNetv2_train", str(dataset_id), CONFIG, "0", "-tr", trainer, "-p", PLANS, "-device",
                         "cpu"], env)
        elif step == "predict":
            run_command(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(output / "predictions"),
                         "-d", str(dataset_id), "-c", CONFIG, "-f", "0", "-tr", trainer, "-p", PLANS, "-device",
                         "cpu", "-npp", "1", "-nps", "1"], env)
        elif step == "evaluate":
            pre = Path(env["nnUNet_preprocessed"]) / dataset.name
            run_command(["nnUNetv2_evaluate_folder", str(dataset / "labelsTs"), str(output / "predictions"),
                         "-djfile", str(pre / "dataset.json"), "-pfile", str(pre / f"{PLANS}.json"), "-np", "2"],
                        env)
        else:
            dice, table = dice_table(output / "predictions" / "summary.json")
            overlay_png(dataset / "imagesTs", dataset / "labelsTs", output / "predictions", output / "overlay.png")
        times[step] = time.perf_counter() - t0
    bar.close()
    print(f"\nTest Dice on {num_test} held-out phantoms ({trainer}, fold 0):\n{table}")
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    print(f"overlay: {output / 'overlay.png'}")
    (output / "demo_result.json").write_text(json.dumps({"dice": dice, "seconds": times}, indent=2))
    return dice


def demo_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="work folder (default ./demo_output)")
    p.add_argument("-d", type=int, default=990, help="data set id of the phantoms (default 990)")
    p.add_argument("--num_train", type=int, default=10)
    p.add_argument("--num_test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-tr", default="nnUNetTrainerXLSTM_short", help="trainer (nnUNetTrainerXLSTM_smoke: seconds)")
    a = p.parse_args(argv)
    try:
        run_demo(a.output, a.d, a.num_train, a.num_test, a.seed, a.tr)
    except InputError as e:
        sys.exit(f"nnunetv2_xlstm_demo: error: {e}")
