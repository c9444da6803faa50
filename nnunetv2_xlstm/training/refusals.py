"""One-line refusals inside nnU-Net's own commands, and the check of ``-pretrained_weights`` before nnU-Net
unpickles it. Installed by our trainers when nnU-Net builds one, never at import."""

from __future__ import annotations

import sys
from pathlib import Path

from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError

__all__ = ["check_pretrained_weights_argument", "install_refusal_hook"]


class _RefusalsWithoutTraceback:
    """nnU-Net's commands (``nnUNetv2_train``, ``_predict``) end with a traceback for any error; a refusal of ours
    (:class:`InputError`: wrong plans, a changed encoder, a bad unlabelled list) already says what to fix, so it is
    printed as one line. Installed by our trainers when nnU-Net builds one, never at import."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, kind: type, value: BaseException, tb) -> None:
        if issubclass(kind, InputError):
            print(f"{Path(sys.argv[0]).name}: error: {value}", file=sys.stderr)
        else:
            self.previous(kind, value, tb)


def install_refusal_hook() -> None:
    """Print our refusals in this process as one line (idempotent)."""
    if not isinstance(sys.excepthook, _RefusalsWithoutTraceback):
        sys.excepthook = _RefusalsWithoutTraceback(sys.excepthook)


def check_pretrained_weights_argument(argv: list[str] | None = None) -> None:
    """``nnUNetv2_train -pretrained_weights FILE`` unpickles FILE (``weights_only=False``) after building the trainer
    and before any trainer method runs: nnU-Net gives a trainer no hook there. Our trainers therefore read FILE with
    ``weights_only=True`` when they are built, and refuse it if it holds anything but tensors and plain values."""
    argv = sys.argv if argv is None else argv
    if "-pretrained_weights" in argv[:-1]:
        path = argv[argv.index("-pretrained_weights") + 1]
        try:
            load_nnunet_checkpoint(path)
        except InputError as e:
            raise InputError(f"refusing -pretrained_weights {path}: {e}") from None
