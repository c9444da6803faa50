"""``nnunetv2_xlstm_pretrain``: student-teacher pretraining on unlabeled CT and MRI, before nnU-Net planning.

    nnunetv2_xlstm_pretrain --preset cpu --output runs/pre \\
        --source $nnUNet_raw/Dataset801_ACDC:MRI --source $nnUNet_raw/Dataset802_LA:MRI --source /data/CT:CT
    nnunetv2_xlstm_pretrain --preset cpu-hours --plans $nnUNet_preprocessed/Dataset801_ACDC/nnUNetPlansXLSTM.json \\
        --exclude_patients patient002 patient019 ... --source $nnUNet_raw/Dataset801_ACDC:MRI --output runs/pre
    torchrun --nproc_per_node 2 -m nnunetv2_xlstm_pretraining.cli --config my.yaml --output runs/pre
"""

from __future__ import annotations

import argparse
import sys

from nnunetv2_xlstm.env import InputError, error_line
from nnunetv2_xlstm_pretraining.config import PRESETS, SourceConfig, load_config


def parse_source(text: str) -> SourceConfig:
    """``PATH:MODALITY[:hu=auto|true|false]`` -> :class:`SourceConfig`."""
    parts = text.split(":")
    hu = "auto"
    if parts[-1].startswith("hu="):
        hu = parts.pop()[3:]
    if len(parts) < 2:
        raise InputError(f"--source {text!r}: use PATH:MODALITY, e.g. /data/ct:CT or /data/ct:CT:hu=false")
    path, modality = ":".join(parts[:-1]), parts[-1].upper()
    if modality not in ("CT", "MRI"):
        raise InputError(f"--source {text!r}: unknown modality {parts[-1]!r}; use CT or MRI")
    if hu.lower() not in ("auto", "true", "false", "1", "0", "yes", "no"):
        raise InputError(f"--source {text!r}: hu={hu!r} is not auto, true or false")
    return SourceConfig(path, modality, "auto" if hu.lower() == "auto" else hu.lower() in ("true", "1", "yes"))


def pretrain_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="run folder: config, log, progress.png, checkpoints, export")
    p.add_argument("--config", default=None, help="YAML/JSON config file (keys: see PretrainConfig)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="start from a preset")
    p.add_argument("--source", action="append", default=[], help="PATH:MODALITY[:hu=auto|true|false], repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. steps=200")
    p.add_argument("--plans", default=None, metavar="PLANS.json",
                   help="pretrain in the fine-tuning geometry of these nnU-Net XLSTMUNet plans (network, spacing, patch)")
    p.add_argument("-c", "--plans_configuration", default=None, help="the plans' configuration (3d_fullres)")
    p.add_argument("--exclude_patients", nargs="+", default=None, metavar="ID",
                   help="patients (or cases) kept out of the pool: the development and test patients of the runs "
                        "that will score the encoder")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoint_latest.pt")
    p.add_argument("--export_only", action="store_true",
                   help="only export the teacher's encoder of --output's latest checkpoint (a run stopped early)")
    p.add_argument("--no_pbar", action="store_true")
    a = p.parse_args(argv)
    try:
        from nnunetv2_xlstm_pretraining.train import describe, export_checkpoint, pretrain

        if a.export_only:
            print(f"exported encoder: {export_checkpoint(a.output)}")
            return

        excluded = a.exclude_patients and f"[{','.join(a.exclude_patients)}]"
        shorthands = [f"{k}={v}" for k, v in (("plans", a.plans), ("plans_configuration", a.plans_configuration),
                                              ("exclude_patients", excluded)) if v]
        config = load_config(a.config, a.preset, [*shorthands, *a.set], [parse_source(s) for s in a.source])
        print(describe(config), flush=True)
        result = pretrain(config, a.output, resume=a.resume, progress=not a.no_pbar)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_pretrain: error: {error_line(e)}")
    print(f"exported encoder: {result['export']}")


if __name__ == "__main__":
    pretrain_entry()
