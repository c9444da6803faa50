"""``nnunetv2_xlstm_check``: verify model files safely before anything unpickles them.

    nnunetv2_xlstm_check $nnUNet_results/Dataset801_ACDC/nnUNetTrainerXLSTM__nnUNetPlansXLSTM__3d_fullres
    nnunetv2_xlstm_check received_model/checkpoint_final.pth encoder_export.pt

Stock ``nnUNetv2_predict`` and ``nnUNetv2_train -pretrained_weights`` load checkpoints with ``weights_only=False``:
a checkpoint from an untrusted source can run code there. This command reads every ``*.pth`` / ``*.pt`` file under
the paths with ``weights_only=True`` (tensors, plain values and numpy scalars only) and reports each as safe or
refused; it exits non-zero if any is refused. It never unpickles anything else.

``nnunetv2_xlstm_predict`` is ``nnUNetv2_predict`` with the same arguments, run only once every checkpoint it would
load (``-d -tr -p -c -f -chk``) has passed that check: a truncated, damaged or booby-trapped checkpoint ends in one
line naming the file, before nnU-Net unpickles anything.
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


PREDICT_HELP = ("``nnunetv2_xlstm_predict``: ``nnUNetv2_predict`` after a safe check of every checkpoint it will "
                "load.\n\n    nnunetv2_xlstm_predict -i imagesTs -o predictions -d 801 -c 3d_fullres -f 0 "
                "-tr nnUNetTrainerXLSTM -p nnUNetPlansXLSTM\n\nThe checkpoints of -d/-tr/-p/-c/-f/-chk are read "
                "with weights_only=True first; a truncated or unsafe one ends in one line naming it.")


def prediction_checkpoints(argv: list[str]) -> list[Path]:
    """The checkpoints that ``nnUNetv2_predict argv`` would load, resolved as nnU-Net resolves them."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    p = argparse.ArgumentParser(add_help=False)
    for flag, default in (("-d", None), ("-p", "nnUNetPlans"), ("-tr", "nnUNetTrainer"), ("-c", None),
                          ("-chk", "checkpoint_final.pth")):
        p.add_argument(flag, default=default)
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"])
    a, _ = p.parse_known_args(argv)
    if a.d is None or a.c is None:
        raise InputError("give -d DATASET and -c CONFIGURATION, as for nnUNetv2_predict (see nnUNetv2_predict -h)")
    try:
        folder = Path(get_output_folder(a.d, a.tr, a.p, a.c))
    except RuntimeError as e:  # nnU-Net's "could not find a dataset with the ID ..."
        raise InputError(f"-d {a.d}: {e}") from None
    files = [folder / f"fold_{f}" / a.chk for f in a.f]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f} does not exist: train that fold, or choose trained folds with -f and the "
                             f"checkpoint with -chk")
    return files


def predict_entry(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(f"usage: nnunetv2_xlstm_predict [nnUNetv2_predict's arguments]\n\n{PREDICT_HELP}\n\n"
              f"nnUNetv2_predict's arguments follow.\n")
    else:
        try:
            refused = {f: why for f, why in check_files(prediction_checkpoints(argv)).items() if why}
        except (InputError, OSError) as e:
            sys.exit(f"nnunetv2_xlstm_predict: error: {error_line(e)}")
        if refused:
            sys.exit("nnunetv2_xlstm_predict: error: " + "; ".join(refused.values()))
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    sys.argv = ["nnUNetv2_predict", *argv]
    predict_entry_point()


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
