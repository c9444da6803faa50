"""Environment: nnU-Net's path variables, and the ``nnUNet_extTrainer`` hook that lets stock nnU-Net find our trainers."""

from __future__ import annotations

import errno
import os
from pathlib import Path

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class InputError(RuntimeError):
    """Bad user input (environment, files, arguments). The message names the culprit and the fix."""


OS_ERROR_FIXES = {errno.ENOSPC: "the disk is full: free space or write to another disk",
                  errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
                  errno.EROFS: "the file system is read-only: write to another folder",
                  errno.EACCES: "no permission: write to another folder or fix its permissions",
                  errno.EPERM: "not permitted: write to another folder or fix its permissions"}


def error_line(e: BaseException) -> str:
    """The one line a command prints for a refusal (:class:`InputError`) or a file-system error (``OSError``:
    naming the file, the cause and the fix)."""
    if isinstance(e, OSError) and not isinstance(e, InputError):
        where = e.filename or "a file"
        fix = OS_ERROR_FIXES.get(e.errno)
        return f"cannot write or read {where}: {e.strerror or e}" + (f" ({fix})" if fix else "")
    return str(e)


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
