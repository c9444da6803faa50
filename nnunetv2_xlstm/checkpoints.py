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

import hashlib
from pathlib import Path
from typing import Any

import torch

from nnunetv2_xlstm.atomic import atomic_write
from nnunetv2_xlstm.env import InputError

EXPORT_FORMAT = "nnunetv2_xlstm.encoder"
EXPORT_VERSION = 1
REQUIRED_PLAN_KEYS = ("architecture_plans", "pretrain_num_input_channels", "key_to_encoder", "key_to_stem",
                      "pretrain_plan")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves a half-written file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def load_nnunet_checkpoint(path: str | Path) -> dict:
    """An nnU-Net training checkpoint (``checkpoint_latest.pth`` ...) read with ``weights_only=True``: plain types,
    tensors, and the numpy scalars and arrays of its ``logging``; :class:`InputError` naming the file otherwise."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 / 1
    allowed = [np.dtype, np.ndarray, multiarray.multiarray.scalar, multiarray.multiarray._reconstruct,
               *{type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")}]
    with torch.serialization.safe_globals(allowed):
        return safe_load(path)


def save_exported_encoder(path: str | Path, weights: dict[str, torch.Tensor], plan: dict) -> None:
    """Write an exported encoder (format above), atomically."""
    missing = [k for k in REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise ValueError(f"adaptation plan lacks {missing}")
    atomic_torch_save({"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                       "network_weights": share_aliases(weights), "nnssl_adaptation_plan": plan}, path)


def share_aliases(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors of ``weights`` in which keys that alias one tensor (dynamic-network-architectures registers each
    conv twice: ``conv.weight`` and ``all_modules.0.weight``) share one copy, so that ``torch.save`` writes it once."""
    out, seen = {}, {}
    for k, v in weights.items():
        alias = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        out[k] = seen.setdefault(alias, v.detach().cpu())
    return out


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


# keys of the architecture that fix the encoder's weights; strides, the decoder and the patch size do not
ENCODER_ARCH_KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "n_blocks_per_stage", "conv_op", "conv_bias",
                     "norm_op", "norm_op_kwargs", "nonlin", "mlstm_stages", "mlstm_blocks_per_stage")


def load_encoder_into(network: torch.nn.Module, path: str | Path, arch_kwargs: dict | None = None,
                      input_channels: int | None = None, decoder: bool = False,
                      export: tuple[dict, dict] | None = None) -> dict[str, list[str]]:
    """Load an exported encoder (and, with ``decoder``, its decoder) into ``network`` (an XLSTMUNet) strictly; return
    ``{"loaded": keys, "fresh": keys}``.

    Every key under the plan's ``key_to_encoder`` / ``key_to_stem`` in the network (with ``decoder``: also every
    ``decoder.*`` key but the segmentation heads) must be in the file with the same shape, and every such key of the
    file must exist in the network; otherwise nothing is loaded and :class:`InputError` lists the keys that differ and
    why. ``arch_kwargs`` (the network's plans kwargs) and ``input_channels``, when given, are compared with the
    export's first, for a message in terms of the architecture. ``fresh`` lists the network's other keys (decoder,
    segmentation heads), which keep their initialisation. ``export``: the file's :func:`load_exported_encoder`
    result when the caller has read it already (``path`` then only names it in messages).
    """
    weights, plan = export if export is not None else load_exported_encoder(path)
    if decoder and not any(k.startswith("decoder.") for k in weights):
        raise InputError(f"{path} holds no decoder (exported with export_decoder=false, or by the DINO objective); "
                         f"load its encoder alone (nnUNetTrainerXLSTMPretrained)")
    if not decoder:
        weights = {k: v for k, v in weights.items() if not k.startswith("decoder.")}
    if input_channels is not None and plan["pretrain_num_input_channels"] != input_channels:
        raise InputError(f"{path} was pretrained on {plan['pretrain_num_input_channels']} input channel(s), this data "
                         f"set has {input_channels}: the stem's first convolution cannot be reused. Fine-tune on a "
                         f"data set with the same channels, or train from scratch")
    if arch_kwargs is not None:
        exported = plan["architecture_plans"]["arch_kwargs"]
        differ = [f"{k}: encoder {exported.get(k)!r}, plans {arch_kwargs.get(k)!r}" for k in ENCODER_ARCH_KEYS
                  if _plain(exported.get(k)) != _plain(arch_kwargs.get(k))]
        if differ:
            raise InputError(f"{path} does not match the plans' architecture ({'; '.join(differ)}). Plan with "
                             f"nnunetv2_xlstm_plan_and_preprocess --pretrained_encoder {path}, which copies them")
    prefixes = tuple(f"{plan[k]}." for k in ("key_to_encoder", "key_to_stem")) + (("decoder.",) if decoder else ())
    model = network.state_dict()
    wanted = {k: v for k, v in model.items()
              if k.startswith(prefixes) and not k.startswith(("decoder.encoder.", "decoder.seg_layers."))}
    problems = {"missing from the file": [k for k in wanted if k not in weights],
                "not in the network": [k for k in weights if k not in wanted],
                "of another shape": [f"{k} (file {tuple(weights[k].shape)}, network {tuple(v.shape)})"
                                     for k, v in wanted.items() if k in weights and weights[k].shape != v.shape]}
    if any(problems.values()):
        shown = "; ".join(f"{len(keys)} key(s) {why}: {', '.join(keys[:3])}" + (", ..." if len(keys) > 3 else "")
                          for why, keys in problems.items() if keys)
        raise InputError(f"{path} does not fit this network's {'encoder and decoder' if decoder else 'encoder'} "
                         f"({shown}). A different architecture or input channel count; plan with "
                         f"--pretrained_encoder {path}")
    state = {**model, **weights}
    # the decoder holds a reference to the encoder (DNA's UNetDecoder): its "decoder.encoder.*" aliases load the same
    state.update({k: state[k.replace("decoder.encoder.", "encoder.", 1)] for k in model if k.startswith("decoder.encoder.")})
    network.load_state_dict(state, strict=True)
    fresh = [k for k in model if k not in wanted and k.replace("decoder.encoder.", "encoder.", 1) not in wanted]
    return {"loaded": sorted(wanted), "fresh": fresh}


def check_export_fits_its_plan(path: str | Path, export: tuple[dict, dict] | None = None) -> None:
    """Build the network an export's adaptation plan describes and load the export into it strictly (encoder, and
    decoder where it has one): :class:`InputError` for tensors that do not match their own architecture.
    ``export``: the file's :func:`load_exported_encoder` result, if already read."""
    import pydoc

    from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet

    weights, plan = export = export if export is not None else load_exported_encoder(path)
    arch = plan["architecture_plans"]
    imports = set(arch.get("arch_kwargs_requiring_import", ()))
    kwargs = {k: pydoc.locate(v) if k in imports and v is not None else v for k, v in arch["arch_kwargs"].items()}
    network = XLSTMUNet(input_channels=plan["pretrain_num_input_channels"], num_classes=1, **kwargs)
    load_encoder_into(network, path, decoder=any(k.startswith("decoder.") for k in weights), export=export)


def _plain(value: Any) -> Any:
    """Tuples as lists, so plans (JSON) and exports (torch) compare equal."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
