"""``nnunetv2_xlstm_demo``: the whole chain on synthetic CT and MRI phantoms, through the real commands, on a CPU.

phantoms -> ``nnunetv2_xlstm_split`` (a few labelled cases) -> ``nnunetv2_xlstm_pretrain`` (tiny, on the training
images but the validation cases, labels unused) -> ``nnunetv2_xlstm_plan_and_preprocess --pretrained_encoder`` ->
``nnUNetv2_train`` twice, with ``nnUNetTrainerXLSTMPretrained_short`` and the matched
``nnUNetTrainerXLSTMScratch_short`` -> ``nnUNetv2_predict`` -> ``nnUNetv2_evaluate_folder`` -> Dice per structure, side by side, and an overlay PNG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_xlstm.atomic import atomic_write, atomic_write_text
from nnunetv2_xlstm.checkpoints import atomic_torch_save, load_nnunet_checkpoint
from nnunetv2_xlstm.commands import run_command
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError, error_line, nnunet_environment
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS

MARKER = ".nnunetv2_xlstm_demo"
PLANS = "nnUNetPlansXLSTMEncoder"
CONFIG = "3d_fullres"
GEOMETRY = PhantomGeometry((40, 40, 40), 3.6)  # 144 mm; with two trainings the demo fits 15 min on 2 cores
ARMS = {"pretrained": "nnUNetTrainerXLSTMPretrained", "scratch": "nnUNetTrainerXLSTMScratch"}


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).exists():
            raise InputError(f"{output} exists and is not a demo output folder; choose another --output.")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).touch()


def dice_table(summary_file: Path) -> dict[str, float]:
    """Per-structure Dice (and their ``mean``) from nnU-Net's ``summary.json``."""
    summary = json.loads(summary_file.read_text())
    names = {str(v): k for k, v in WHOLE_HEART_LABELS.items()}
    dice = {names[k]: v["Dice"] for k, v in summary["mean"].items()}
    dice["mean"] = summary["foreground_mean"]["Dice"]
    return dice


def overlay_png(images: Path, labels: Path, predictions: dict[str, Path], out: Path) -> None:
    """One row per test case: image, ground truth and each arm's prediction on the axial slice with most foreground."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(p.name for p in labels.glob("*.nii.gz"))
    columns = {"ground truth": labels, **predictions}
    fig, axes = plt.subplots(len(cases), 1 + len(columns), figsize=(3 * (1 + len(columns)), 3 * len(cases)),
                             squeeze=False)
    for row, case in zip(axes, cases):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(images / case.replace(".nii.gz", "_0000.nii.gz"))))
        segs = {title: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / case))) for title, folder in columns.items()}
        z = int(np.argmax((segs["ground truth"] > 0).sum((1, 2))))
        for ax, (title, seg) in zip(row, [("image", None), *segs.items()]):
            ax.imshow(img[z], cmap="gray")
            if seg is not None:
                ax.imshow(np.ma.masked_equal(seg[z], 0), cmap="tab10", vmin=0, vmax=9, alpha=0.5,
                          interpolation="nearest")
            ax.set_title(f"{case.split('.')[0]}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)


def run_demo(output: Path, dataset_id: int = 990, num_train: int = 10, num_test: int = 4, seed: int = 0,
             schedule: str = "short", labelled: int = 6, pretrain_preset: str = "demo") -> dict[str, dict[str, float]]:
    """Run the chain into ``output`` (nnUNet_raw/preprocessed/results inside it); return the test Dice per structure
    of each arm (``{"pretrained": {...}, "scratch": {...}}``). ``schedule`` is the trainers' suffix (``short`` or
    ``smoke``); ``labelled`` training cases get labels, 2 are for validation, the rest stay unlabelled."""
    if not 1 <= labelled <= num_train - 2 or num_test < 1:  # 2 training cases validate; checked before any work
        raise InputError(f"--labelled {labelled} with {num_train} training phantoms: give 1 to {num_train - 2} "
                         f"labelled cases (2 validate), and at least 1 test phantom")
    output = Path(output).resolve()
    _prepare_output(output)
    env = nnunet_environment(output)
    env.setdefault("nnUNet_def_n_proc", "2")  # nnU-Net's default spawns 8 export workers, which swamps 2 cores
    raw = Path(env["nnUNet_raw"])
    trainers = {arm: f"{name}_{schedule}" for arm, name in ARMS.items()}
    times: dict[str, float] = {}
    steps = ["phantoms", "split", "pretrain", "plan+preprocess", *(f"train {a}" for a in ARMS),
             *(f"predict {a}" for a in ARMS), *(f"evaluate {a}" for a in ARMS), "report"]
    bar = tqdm(steps, desc="demo", unit="step", file=sys.stdout)
    for step in bar:
        bar.set_postfix_str(step)
        tqdm.write(f"\n=== {step} ===", file=sys.stdout)
        t0 = time.perf_counter()
        arm = step.split(" ")[-1]
        if step == "phantoms":
            dataset = write_phantom_dataset(raw, dataset_id, num_train, num_test, seed=seed, geometry=GEOMETRY)
        elif step == "pretrain":  # the training images of each modality, labels unused; CT z-scored like nnU-Net's
            sources = []          # "zscore" channel of this mixed data set
            for modality in ("CT", "MRI"):
                listing = output / f"pretrain_{modality}.txt"
                listing.write_text("".join(f"{f}\n" for f in sorted((dataset / "imagesTr").glob(f"*_{modality}_*"))))
                sources += ["--source", f"{listing}:{modality}" + (":hu=false" if modality == "CT" else "")]
            # the validation cases stay out of the pool: fine-tuning refuses an encoder that saw them
            splits = Path(env["nnUNet_preprocessed"]) / dataset.name / "splits_final.json"
            held_out = json.loads(splits.read_text())[0]["val"]
            run_command(["nnunetv2_xlstm_pretrain", "--preset", pretrain_preset, "--output",
                         str(output / "pretraining"), *sources, "--exclude_patients", *held_out, "--no_pbar"], env)
            for checkpoint in (output / "pretraining").glob("checkpoint_*.pt"):  # the export is what the demo uses
                checkpoint.unlink()
        elif step == "split":
            run_command(["nnunetv2_xlstm_split", "-d", str(dataset_id), "--budget", str(labelled), "--val_budget",
                         "2", "--folds", "1", "--seed", str(seed)], env)
        elif step == "plan+preprocess":
            run_command(["nnunetv2_xlstm_plan_and_preprocess", "-d", str(dataset_id), "-c", CONFIG, "-np", "2",
                         "-npfp", "2", "--pretrained_encoder", str(output / "pretraining" / "encoder_export.pt"),
                         "--batch_size", "2"], env)
        elif step.startswith("train"):
            run_command(["nnUNetv2_train", str(dataset_id), CONFIG, "0", "-tr", trainers[arm], "-p", PLANS,
                         "-device", "cpu", "--npz"], env)  # --npz: validation probabilities, for ensembling
            folder = Path(env["nnUNet_results"]) / dataset.name / f"{trainers[arm]}__{PLANS}__{CONFIG}" / "fold_0"
            # disk: predictions use the final checkpoint, and its weights only (the optimiser state is 2/3 of it)
            (folder / "checkpoint_best.pth").unlink(missing_ok=True)
            final = load_nnunet_checkpoint(folder / "checkpoint_final.pth")
            atomic_torch_save({k: v for k, v in final.items() if k not in ("optimizer_state", "grad_scaler_state")},
                              folder / "checkpoint_final.pth")
        elif step.startswith("predict"):
            run_command(["nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(output / f"predictions_{arm}"),
                         "-d", str(dataset_id), "-c", CONFIG, "-f", "0", "-tr", trainers[arm], "-p", PLANS, "-device",
                         "cpu", "-npp", "1", "-nps", "1"], env)
        elif step.startswith("evaluate"):
            pre = Path(env["nnUNet_preprocessed"]) / dataset.name
            run_command(["nnUNetv2_evaluate_folder", str(dataset / "labelsTs"), str(output / f"predictions_{arm}"),
                         "-djfile", str(pre / "dataset.json"), "-pfile", str(pre / f"{PLANS}.json"), "-np", "2"],
                        env)
        else:
            dice = {a: dice_table(output / f"predictions_{a}" / "summary.json") for a in ARMS}
            overlay_png(dataset / "imagesTs", dataset / "labelsTs",
                        {a: output / f"predictions_{a}" for a in ARMS}, output / "overlay.png")
        times[step] = time.perf_counter() - t0
    bar.close()
    print(f"\nTest Dice on {num_test} held-out phantoms, {labelled} labelled training cases (fold 0):\n"
          f"{side_by_side(dice)}")
    print(CAVEAT)
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    print(f"overlay: {output / 'overlay.png'}")
    atomic_write_text(output / "demo_result.json",
                      json.dumps({"dice": dice, "trainers": trainers, "seconds": times}, indent=2))
    return dice


CAVEAT = ("\nWhat this table can show: that the whole chain (pretraining, planning like the encoder, fine-tuning, "
          "prediction,\nevaluation) runs and learns the phantoms' structures. What it cannot show: whether pretraining "
          "helps.\nIt is one seed on synthetic phantoms; between demo runs with other seeds the arms' mean Dice moves "
          "by\nseveral points either way (docs/demo.md), and phantoms say nothing about real anatomy. The measured\n"
          "pretrained-against-scratch comparisons on real scans are in docs/benchmarks.md.")


def side_by_side(dice: dict[str, dict[str, float]]) -> str:
    """A table with one row per structure and one column per arm."""
    arms = list(dice)
    lines = [f"{'structure':<10}" + "".join(f"{a:>12}" for a in arms)]
    lines += [f"{k:<10}" + "".join(f"{dice[a][k]:>12.3f}" for a in arms) for k in dice[arms[0]]]
    return "\n".join(lines)


def demo_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("demo_output"), help="work folder (default ./demo_output)")
    p.add_argument("-d", type=int, default=990, help="data set id of the phantoms (default 990)")
    p.add_argument("--num_train", type=int, default=10)
    p.add_argument("--num_test", type=int, default=4)
    p.add_argument("--labelled", type=int, default=6, help="labelled training cases (default 6; 2 validate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", default="short", choices=["short", "smoke"],
                   help="trainer schedule: short (about 4 min per arm) or smoke (seconds, learns nothing)")
    a = p.parse_args(argv)
    try:
        run_demo(a.output, a.d, a.num_train, a.num_test, a.seed, a.schedule, a.labelled,
                 "demo" if a.schedule == "short" else "smoke")
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_demo: error: {error_line(e)}")
