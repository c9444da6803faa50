"""Environment: nnU-Net's path variables, and the ``nnUNet_extTrainer`` hook that lets stock nnU-Net find our trainers."""

from __future__ import annotations

import os
from pathlib import Path

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class InputError(RuntimeError):
    """Bad user input (environment, files, arguments). The message names the culprit and the fix."""


def ext_trainer_path() -> str:
    """The folder to put in ``nnUNet_extTrainer`` so ``nnUNetv2_train/predict -tr nnUNetTrainerXLSTM...`` work."""
    return str(Path(__file__).resolve().parent / "training" / "nnunet_ext")


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with our folder added to ``current`` (kept if already there)."""
    parts = [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join(parts if ext_trainer_path() in parts else parts + [ext_trainer_path()])


def require_env(*names: str) -> dict[str, Path]:
    """Return the named environment variables as paths; raise :class:`InputError` naming the unset ones."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        example = "\n".join(f"  export {n}=/path/to/{n}" for n in missing)
        raise InputError(f"environment variable(s) {', '.join(missing)} not set. nnU-Net needs them to find its "
                         f"data; set them, e.g.\n{example}")
    return {n: Path(os.environ[n]) for n in names}


def env_entry() -> None:
    """Print a shell line that adds our trainers to ``nnUNet_extTrainer``: ``eval "$(nnunetv2_xlstm_env)"``."""
    print(f'export nnUNet_extTrainer="{ext_trainer_value(os.environ.get("nnUNet_extTrainer"))}"')


def nnunet_environment(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """A process environment whose nnU-Net folders live under ``root`` and which finds our trainers."""
    env = dict(os.environ if base is None else base)
    for name in NNUNET_PATH_VARIABLES:
        env[name] = str(Path(root) / name)
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer"))
    return env
