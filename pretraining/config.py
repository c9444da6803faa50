"""Typed pretraining config: defaults < preset < config file (JSON or YAML) < command-line ``--set key=value``.

Every field is our own choice (the method's paper gives no hyper-parameters); the comments say why. Unknown keys are
errors that name the file and suggest the closest field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import yaml

from nnunetv2_xlstm.env import InputError

Modality = Literal["CT", "MRI"]


@dataclass
class SourceConfig:
    """One source of unlabeled images: a folder of images, or an nnU-Net raw data set (labels ignored)."""

    path: str
    modality: Modality
    hu: bool | Literal["auto"] = "auto"  # CT only: values in Hounsfield units? "auto" decides per volume from its range


@dataclass
class NetworkConfig:
    """The XLSTMUNet encoder (the same class and kwargs fine-tuning builds). Widths must be multiples of 16."""

    features_per_stage: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    n_blocks_per_stage: list[int] = field(default_factory=lambda: [1, 3, 4, 6])  # ResEnc-M's
    kernel_size: int = 3
    mlstm_stages: list[int] | None = None  # None: the two deepest stages
    mlstm_blocks_per_stage: int = 2


@dataclass
class ProbeConfig:
    """The transfer probe (``nnunetv2_xlstm_probe``) run on the teacher's encoder every ``every`` steps of
    pretraining, either objective (0: never), on nnU-Net's preprocessed data of a labelled data set; see
    docs/how-to/pretraining.md."""

    every: int = 0
    dataset: str = ""  # id or name, preprocessed with plans/configuration
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    train_patients: list[str] = field(default_factory=list)
    val_patients: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 200


@dataclass
class PretrainConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    # "masked_distillation" (default): one crop per volume; the EMA teacher sees it whole, the student with blocks of
    # the bottleneck grid masked, and regresses the teacher's instance-normalised features of the deepest stages at the
    # masked positions, plus reconstructs the masked voxels through the decoder (data2vec 2.0 / I-JEPA style
    # distillation + MAE; no batch statistics, so it works at batch 4). "dino": DINO self-distillation of pooled
    # multi-crop embeddings, which needs batches of hundreds (docs/explanation.md)
    objective: Literal["masked_distillation", "dino"] = "masked_distillation"
    # the fine-tuning geometry: an nnU-Net plans JSON of XLSTMUNet plans (and its configuration). When set, the
    # network, target_spacing and the crop (global_crop_voxels = the patch, global_crop_mm = patch x spacing) come
    # from it, and volumes are resampled with nnU-Net's own resampling (pretraining/geometry.py); "": isotropic
    plans: str = ""
    plans_configuration: str = "3d_fullres"
    # patients (or cases) left out of every source: a benchmark's development and test patients, say; grouped into
    # patients as nnunetv2_xlstm_split does (patientNNN_frameXX -> patientNNN). The export records the pool it saw
    exclude_patients: list[str] = field(default_factory=list)
    target_spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # mm (z, y, x), every source
    ct_fraction: float = 0.5  # share of samples drawn from CT; the real pool is ~240 MRI vs 11 CT volumes
    foreground_fraction: float = 0.9  # a sample's anchor inside the body mask (Otsu), else anywhere
    # multi-crop: physical size = scale * global_crop_mm, resampled to the crop's voxel size; all views of a sample lie
    # near one anchor (global crops within 1/4, local crops within 1/2 of global_crop_mm of it)
    # 64 mm: the LA volumes are cropped to ~55 mm in z, and the smallest global crop (0.6 * 64) must fit every volume
    global_crop_mm: list[float] = field(default_factory=lambda: [64.0, 64.0, 64.0])
    global_crop_voxels: list[int] = field(default_factory=lambda: [32, 32, 32])
    global_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    num_local_crops: int = 4
    local_crop_voxels: list[int] = field(default_factory=lambda: [16, 16, 16])
    local_scale: list[float] = field(default_factory=lambda: [0.25, 0.5])
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # DINO head and loss (DINO's defaults scaled down for a small 3D encoder)
    out_dim: int = 4096
    head_hidden_dim: int = 1024
    head_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    # "ema": DINO's centre. "sinkhorn": DINOv2's Sinkhorn-Knopp centring (no better in our CPU probes: with 8 global
    # crops a step and 4096 prototypes it spreads every target over ~K/B prototypes); see docs/explanation.md
    centering: Literal["ema", "sinkhorn"] = "ema"
    # DINOv2's KoLeo regulariser on the student's pooled embeddings of each global view (0: off). Off, as iBOT: neither
    # slowed the teacher's drift towards uniform on the real pool (docs/explanation.md, second probe round)
    koleo_weight: float = 0.0
    ibot: bool = False  # iBOT masked-token loss on the bottleneck tokens
    ibot_weight: float = 1.0
    ibot_mask_ratio: float = 0.3
    # masked distillation (objective "masked_distillation"); its crop is global_crop_mm -> global_crop_voxels
    mask_ratio: list[float] = field(default_factory=lambda: [0.6, 0.8])  # share of bottleneck cells masked, uniform
    target_stages: int = 3  # targets: the teacher's features of this many deepest encoder stages
    distill_beta: float = 2.0  # smooth-L1's beta on the instance-normalised targets
    reconstruction_weight: float = 1.0  # MSE on the masked voxels through the decoder (0: off)
    teacher_momentum_end: float = 0.999  # the momentum rises teacher_momentum -> this (cosine): slow teacher, small batch
    collapse_stop: bool = False  # stop (with an error) when the collapse guards fire, instead of only warning
    export_decoder: bool = True  # also export the pretrained decoder (fine-tuning may load it)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # optimisation
    steps: int = 1000
    batch_size: int = 4  # volumes per step (per process); each gives 2 global + num_local_crops local crops
    lr: float = 5e-4  # AdamW, linear warm-up then cosine to min_lr (DINO's base lr)
    min_lr: float = 1e-6
    warmup_steps: int = 50
    weight_decay: float = 0.04
    clip_grad: float = 3.0
    teacher_momentum: float = 0.996  # cosine schedule towards 1
    # bookkeeping
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2  # checkpoint_step*.pt files kept besides checkpoint_latest.pt and the export
    plot_every: int = 25
    device: str = "auto"  # auto: cuda if available, else cpu


PRESETS: dict[str, dict[str, Any]] = {
    # CI-sized: seconds
    "smoke": {"steps": 6, "batch_size": 2, "num_local_crops": 2, "global_crop_voxels": [16, 16, 16],
              "local_crop_voxels": [8, 8, 8], "global_crop_mm": [48.0, 48.0, 48.0], "out_dim": 256,
              "head_hidden_dim": 128, "head_bottleneck_dim": 64, "warmup_steps": 2, "save_every": 3, "log_every": 1,
              "plot_every": 3, "num_workers": 0, "network": {"features_per_stage": [16, 32, 64],
                                                             "strides": [1, 2, 2], "n_blocks_per_stage": [1, 1, 1]}},
    # about an hour on a 2-core CPU (measured: see docs/explanation.md)
    "cpu": {"steps": 1400, "batch_size": 4, "num_local_crops": 4, "save_every": 100, "warmup_steps": 40,
            "num_workers": 1},
    # hours on a 2-core CPU in the fine-tuning geometry: give --set plans=... (and probe.dataset, its patients)
    "cpu-hours": {"steps": 4000, "batch_size": 2, "warmup_steps": 200, "save_every": 50, "log_every": 10,
                  "plot_every": 50, "keep_checkpoints": 1, "num_workers": 1, "ct_fraction": 0.1,
                  "probe": {"every": 500, "seeds": [0, 1, 2], "steps": 200}},
    # the demo's tiny run on 40^3 phantoms at 3.6 mm (about a minute on 2 cores)
    "demo": {"steps": 60, "batch_size": 4, "num_local_crops": 4, "target_spacing": [3.6, 3.6, 3.6],
             "global_crop_mm": [96.0, 96.0, 96.0], "global_crop_voxels": [24, 24, 24],
             "local_crop_voxels": [16, 16, 16], "out_dim": 1024, "warmup_steps": 10, "save_every": 30, "plot_every": 20, "log_every": 10,
             "num_workers": 1},
    # GPU: larger crops and batch
    "gpu": {"steps": 20000, "batch_size": 16, "num_local_crops": 8, "global_crop_voxels": [64, 64, 64],
            "local_crop_voxels": [32, 32, 32], "global_crop_mm": [96.0, 96.0, 96.0], "target_spacing": [1.5] * 3,
            "network": {"features_per_stage": [32, 64, 128, 256, 320], "strides": [1, 2, 2, 2, 2],
                        "n_blocks_per_stage": [1, 3, 4, 6, 6]}, "num_workers": 8, "save_every": 1000},
}


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce ``value`` to the type ``hint`` (dataclasses from dicts, scalars from strings)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping for {hint.__name__}, got {value!r}")
        return _build(hint, value, where)
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in get_args(hint):
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
        return value
    if origin is not None:  # a union: try each member
        if type(None) in get_args(hint) and (value is None or str(value).lower() in ("none", "null")):
            return None
        errors = []
        for member in get_args(hint):
            if member is type(None):
                continue
            try:
                return _convert(value, member, where)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[-1])
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    try:
        return hint(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected {hint.__name__}, got {value!r}") from None


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        raise InputError(f"{where}: unknown key {unknown[0]!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                                    f"; known keys: {', '.join(names)}"))
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def merge_dicts(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(values: dict, dotted: str, raw: str) -> None:
    *parents, key = dotted.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[key] = yaml.safe_load(raw) if raw.strip() else raw


def load_config(file: str | Path | None = None, preset: str | None = None, overrides: list[str] = (),
                sources: list[SourceConfig] | None = None) -> PretrainConfig:
    """Resolve a config: defaults, then ``preset``, then ``file``, then ``key=value`` overrides (dotted keys)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        values = merge_dicts(values, PRESETS[preset])
    where = "config"
    if file is not None:
        path = Path(file)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except FileNotFoundError:
            raise InputError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise InputError(f"{path} is not valid YAML/JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
        values = merge_dicts(values, loaded)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: use key=value, e.g. --set steps=200 or --set network.strides=[1,2,2]")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), raw)
        where = f"{where} (with --set {item})" if file is None else where
    if sources:
        values["sources"] = [*values.get("sources", []), *[dataclasses.asdict(s) for s in sources]]
    config = _build(PretrainConfig, values, where)
    apply_plans_geometry(config)
    check_crops(config, where)
    return config


def apply_plans_geometry(config: PretrainConfig) -> None:
    """With ``plans``: the target spacing and the crop become the plans configuration's spacing and patch size."""
    from nnunetv2_xlstm_pretraining.geometry import plans_geometry

    geometry = plans_geometry(config)
    if geometry is not None:
        config.target_spacing = geometry.spacing
        config.global_crop_voxels = geometry.patch_size
        config.global_crop_mm = [p * s for p, s in zip(geometry.patch_size, geometry.spacing)]


def check_crops(config: PretrainConfig, where: str = "config") -> None:
    """Every crop must be divisible by the encoder's total stride and leave a bottleneck of at least 2 voxels per axis
    (instance normalisation needs more than one element); the mask ratio lies in (0, 1) and the target stages exist."""
    bounds = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "save_every": 1, "log_every": 1, "plot_every": 1,
              "keep_checkpoints": 0, "num_workers": 0, "num_local_crops": 0, "target_stages": 1}
    for name, minimum in bounds.items():
        if getattr(config, name) < minimum:
            raise InputError(f"{where}: {name} {getattr(config, name)} must be >= {minimum}")
    for name in ("lr", "min_lr", "weight_decay", "clip_grad", "reconstruction_weight", "distill_beta"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            raise InputError(f"{where}: {name} {value} must be a finite number {'> 0' if name == 'lr' else '>= 0'}")
    for name in ("ct_fraction", "foreground_fraction"):
        if not 0 <= getattr(config, name) <= 1:
            raise InputError(f"{where}: {name} {getattr(config, name)} must lie in [0, 1]")
    if config.probe.every < 0 or config.probe.steps < 1:
        raise InputError(f"{where}: probe.every {config.probe.every} must be >= 0 and probe.steps >= 1")
    low, high = mask_range(config)
    if len(config.mask_ratio) not in (1, 2) or not 0 < low <= high < 1:
        raise InputError(f"{where}: mask_ratio {config.mask_ratio} must be one share or a [low, high] range inside "
                         f"(0, 1), e.g. [0.6, 0.8]")
    if config.objective == "masked_distillation" and not 1 <= config.target_stages <= len(
            config.network.features_per_stage):
        raise InputError(f"{where}: target_stages {config.target_stages} must be between 1 and the encoder's "
                         f"{len(config.network.features_per_stage)} stages")
    if not 0 < config.teacher_momentum <= config.teacher_momentum_end <= 1:
        raise InputError(f"{where}: need 0 < teacher_momentum ({config.teacher_momentum}) <= teacher_momentum_end "
                         f"({config.teacher_momentum_end}) <= 1")
    from nnunetv2_xlstm_pretraining.geometry import architecture, total_strides

    strides = total_strides(architecture(config))
    crops = ["global_crop_voxels"] + (["local_crop_voxels"] if config.objective == "dino" or not config.plans else [])
    for name in crops:
        crop = getattr(config, name)
        if len(crop) != 3 or any(c % s or c // s < 2 for c, s in zip(crop, strides)):
            stride = strides[0] if len(set(strides)) == 1 else strides
            raise InputError(f"{where}: {name} {crop} must be multiples of the encoder's total stride {stride} and at "
                             f"least {2 * np.asarray(stride)} voxels (a bottleneck of 2 or more per axis); e.g. "
                             f"{[max(2 * s, c // s * s) for c, s in zip(crop, strides)]}")


def mask_range(config: PretrainConfig) -> tuple[float, float]:
    """``mask_ratio`` as a ``(low, high)`` range: one value is a fixed ratio."""
    ratio = list(config.mask_ratio) or [float("nan")]
    return ratio[0], ratio[-1]


def config_to_dict(config: PretrainConfig) -> dict[str, Any]:
    """Plain, JSON-able dict of ``config`` (what checkpoints and the output folder store)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
