"""``nnunetv2_xlstm_check``: verify model files safely before anything unpickles them.

    nnunetv2_xlstm_check $nnUNet_results/Dataset801_ACDC/nnUNetTrainerXLSTM__nnUNetPlansXLSTM__3d_fullres
    nnunetv2_xlstm_check received_model/checkpoint_final.pth encoder_export.pt

Stock ``nnUNetv2_predict`` and ``nnUNetv2_train -pretrained_weights`` load checkpoints with ``weights_only=False``:
a checkpoint from an untrusted source can run code there. This command reads every ``*.pth`` / ``*.pt`` file under
the paths with ``weights_only=True`` (tensors, plain values and numpy scalars only) and reports each as safe or
refused; it exits non-zero if any is refused. It never unpickles anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError, error_line

MODEL_SUFFIXES = (".pth", ".pt")


def model_files(paths: list[Path]) -> list[Path]:
    """The model files named, or found (recursively) in the folders named."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in MODEL_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path} does not exist; give a results folder or a checkpoint file")
    if not files:
        raise InputError(f"no *.pth or *.pt file under {', '.join(map(str, paths))}")
    return files


def check_files(files: list[Path]) -> dict[Path, str | None]:
    """``{file: None if safe, else why it was refused}``."""
    out = {}
    for f in files:
        try:
            load_nnunet_checkpoint(f)
            out[f] = None
        except InputError as e:
            out[f] = str(e)
    return out


def check_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="results folders, checkpoints or exported encoders")
    a = p.parse_args(argv)
    try:
        results = check_files(model_files(a.paths))
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_check: error: {error_line(e)}")
    for f, why in results.items():
        print(f"{'safe' if why is None else 'REFUSED'}  {f}" + ("" if why is None else f": {why}"))
    refused = sum(why is not None for why in results.values())
    if refused:
        sys.exit(f"nnunetv2_xlstm_check: {refused} of {len(results)} file(s) hold objects beyond tensors and plain "
                 f"values; do not load them with nnUNetv2_predict or -pretrained_weights")
