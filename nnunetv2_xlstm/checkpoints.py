"""Atomic checkpoint writing and the exported-encoder format (version 1) read by fine-tuning.

Exported encoder (``torch.save`` of plain types only, so ``torch.load(..., weights_only=True)`` reads it)::

    {
      "format": "nnunetv2_xlstm.encoder", "format_version": 1,
      "network_weights": {"encoder.stem.…": Tensor, "encoder.stages.…": Tensor, …},   # XLSTMUNet key names
      "nnssl_adaptation_plan": {                                                        # nnssl's layout
        "architecture_plans": {"arch_class_name": "nnunetv2_xlstm.network.xlstm_unet.XLSTMUNet",
                               "arch_kwargs": {…}, "arch_kwargs_requiring_import": [...]},
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [z, y, x],
        "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem", "keys_to_in_proj": [...],
        "pretrain_plan": {"target_spacing": [...], "normalisation": {...}, "modalities": [...], "config": {...}}
      }
    }
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nnunetv2_xlstm.env import InputError

EXPORT_FORMAT = "nnunetv2_xlstm.encoder"
EXPORT_VERSION = 1
REQUIRED_PLAN_KEYS = ("architecture_plans", "pretrain_num_input_channels", "key_to_encoder", "key_to_stem",
                      "pretrain_plan")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU; :class:`InputError` naming the file if it is not a plain checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, arbitrary objects refused by weights_only
        raise InputError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); it may be "
                         f"truncated or hold arbitrary Python objects, which we never unpickle") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def save_exported_encoder(path: str | Path, weights: dict[str, torch.Tensor], plan: dict) -> None:
    """Write an exported encoder (format above), atomically."""
    missing = [k for k in REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise ValueError(f"adaptation plan lacks {missing}")
    atomic_torch_save({"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                       "network_weights": {k: v.cpu() for k, v in weights.items()},
                       "nnssl_adaptation_plan": plan}, path)


def load_exported_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(network_weights, adaptation_plan)`` of an exported encoder; :class:`InputError` for anything else."""
    obj = safe_load(path)
    if obj.get("format") != EXPORT_FORMAT:
        raise InputError(f"{path} is not an exported encoder (format {obj.get('format')!r}, expected "
                         f"{EXPORT_FORMAT!r}); export one with nnunetv2_xlstm_pretrain")
    if obj.get("format_version") != EXPORT_VERSION:
        raise InputError(f"{path} has encoder format version {obj.get('format_version')}, this package reads "
                         f"version {EXPORT_VERSION}; re-export it with this package's nnunetv2_xlstm_pretrain")
    plan = obj.get("nnssl_adaptation_plan", {})
    missing = [k for k in REQUIRED_PLAN_KEYS if k not in plan]
    if missing or not isinstance(obj.get("network_weights"), dict):
        raise InputError(f"{path} is an incomplete export (missing {missing or ['network_weights']}); re-export it")
    return obj["network_weights"], plan
