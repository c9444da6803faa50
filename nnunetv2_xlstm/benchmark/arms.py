"""The benchmark's arms and their plans.

Reduced presets plan and preprocess once (XLSTMUNet planning at the preset's spacing, widths and batch) and derive
every arm's plans from that, so the arms share data, spacing, patch and batch and differ only in the network:

=====================  =====================================================================================
``stock``              nnU-Net's ``PlainConvUNet`` (2 convs per stage), the planned topology and widths
``resenc_m``           ``ResidualEncoderUNet`` with ResEnc-M's blocks per stage (1, 3, 4, 6, ...)
``xlstm``              ``XLSTMUNet``, shaped like the pretrained encoder when one is given; from scratch
``xlstm_pretrained``   the same plans, starting from the pretrained encoder
``xlstm_pretrained_``  the same, starting from the pretrained encoder and decoder (exports made in the plans'
``decoder``            geometry carry both)
``xlstm_no_mlstm``     the ``xlstm`` network with its mLSTM blocks removed (``mlstm_stages=[]``): the ablation
``xlstm_light``        the ``xlstm`` network with one residual block per stage (mLSTM kept): about stock nnU-Net's
                       step time, so that the mLSTM is also judged at equal cost
``xlstm_semi``         the ``xlstm`` plans, trained semi-supervised on the fold's unlabelled patients too
``xlstm_pretrained_``  the same from the pretrained encoder
``semi``
``xlstm_pretrained_``  the same from the pretrained encoder and decoder
``decoder_semi``
=====================  =====================================================================================

The semi-supervised arms, ``xlstm_pretrained_decoder`` and ``xlstm_light`` run only when named in ``--arms`` (:data:`DEFAULT_ARMS` are the
others).

The ``full`` preset plans the stock arms with nnU-Net's own planners (``nnUNetPlans``, ``nnUNetResEncUNetMPlans``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.benchmark.presets import Preset, scaled_spacing
from nnunetv2_xlstm.checkpoints import file_sha256, load_exported_encoder
from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess
from nnunetv2_xlstm.planning.planner import XLSTMUNetPlanner, attach_encoder

ARMS = {"stock": "nnU-Net (PlainConvUNet)", "resenc_m": "ResEnc-M", "xlstm": "XLSTMUNet, scratch",
        "xlstm_pretrained": "XLSTMUNet, pretrained",
        "xlstm_pretrained_decoder": "XLSTMUNet, pretrained encoder and decoder", "xlstm_no_mlstm": "XLSTMUNet without mLSTM",
        "xlstm_light": "XLSTMUNet, one block per stage", "xlstm_semi": "XLSTMUNet, semi-supervised",
        "xlstm_pretrained_semi": "XLSTMUNet, pretrained, semi-supervised",
        "xlstm_pretrained_decoder_semi": "XLSTMUNet, pretrained encoder and decoder, semi-supervised"}
DEFAULT_ARMS = ("stock", "resenc_m", "xlstm", "xlstm_pretrained", "xlstm_no_mlstm")
# arms with plans of their own; the others use xlstm's
DERIVED = ("stock", "resenc_m", "xlstm", "xlstm_no_mlstm", "xlstm_light")
PRETRAINED = ("xlstm_pretrained", "xlstm_pretrained_decoder", "xlstm_pretrained_semi",  # arms that need an encoder
              "xlstm_pretrained_decoder_semi")
SEMI = ("xlstm_semi", "xlstm_pretrained_semi", "xlstm_pretrained_decoder_semi")
CONFIG = "3d_fullres"
PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_ENCODER_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
MLSTM_KEYS = ("mlstm_stages", "mlstm_blocks_per_stage")


def stock_architecture(xlstm: dict) -> dict:
    """nnU-Net's default network (PlainConvUNet: 2 convs per encoder and decoder stage) with ``xlstm``'s topology."""
    kwargs = {k: v for k, v in xlstm["arch_kwargs"].items() if k not in (*MLSTM_KEYS, "n_blocks_per_stage")}
    n = kwargs["n_stages"]
    return {**xlstm, "network_class_name": PLAIN_CONV_UNET,
            "arch_kwargs": {**kwargs, "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1)}}


def resenc_m_architecture(xlstm: dict) -> dict:
    """ResEnc-M (what XLSTMUNetPlanner plans, since it is ResEnc-M planning) without the mLSTM blocks' keys."""
    kwargs = {k: v for k, v in xlstm["arch_kwargs"].items() if k not in MLSTM_KEYS}
    return {**xlstm, "network_class_name": RESIDUAL_ENCODER_UNET, "arch_kwargs": kwargs}


def without_mlstm(xlstm: dict) -> dict:
    return {**xlstm, "arch_kwargs": {**xlstm["arch_kwargs"], "mlstm_stages": []}}


def one_block_per_stage(xlstm: dict) -> dict:
    """The XLSTMUNet with one residual block per encoder stage (its mLSTM blocks kept)."""
    n = xlstm["arch_kwargs"]["n_stages"]
    return {**xlstm, "arch_kwargs": {**xlstm["arch_kwargs"], "n_blocks_per_stage": [1] * n}}


def bench_plans_name(preset: Preset, arm: str | None = None) -> str:
    """``nnUNetPlansBench_<preset>``, the shared base plans, or ``..._<arm>``, an arm's derived plans."""
    return f"nnUNetPlansBench_{preset.name}" + (f"_{arm}" if arm else "")


def derived_plans(base: dict, name: str, architecture: dict) -> dict:
    """``base`` renamed to ``name``, with only its 3D configuration, whose network is ``architecture``; the data
    identifier is kept, so the preprocessed data is shared."""
    plans = copy.deepcopy(base)
    plans.pop("pretrained_encoder", None)
    plans["plans_name"] = name
    plans["configurations"] = {CONFIG: {**plans["configurations"][CONFIG], "architecture": architecture}}
    return plans


def plan_arms(dataset_id: int, preset: Preset, encoder: Path | None) -> tuple[dict[str, str], list[str]]:
    """Plan and preprocess for ``preset``; return ``{arm: plans name}`` (``xlstm_pretrained`` only with an encoder)
    and the planning warnings. Needs the ``nnUNet_*`` variables."""
    procs = min(4, os.cpu_count() or 1)
    common = dict(configurations=[CONFIG], num_processes=[procs], num_processes_fingerprint=procs)
    warnings: list[str] = []
    if preset.stock_recipe:
        names = {"stock": plan_and_preprocess([dataset_id], "ExperimentPlanner", **common),
                 "resenc_m": plan_and_preprocess([dataset_id], "nnUNetPlannerResEncM", **common),
                 "xlstm": plan_and_preprocess([dataset_id], planner_kwargs={"pretrained_encoder": str(encoder)}
                                              if encoder else None, **common)}
        folder = _preprocessed_folder(dataset_id)
        xlstm = json.loads((folder / f"{names['xlstm']}.json").read_text())
        arch = xlstm["configurations"][CONFIG]["architecture"]
        names["xlstm_no_mlstm"] = _save(folder, derived_plans(xlstm, f"{names['xlstm']}_no_mlstm", without_mlstm(arch)))
        names["xlstm_light"] = _save(folder, derived_plans(xlstm, f"{names['xlstm']}_light", one_block_per_stage(arch)))
    else:
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints

        folder = _preprocessed_folder(dataset_id)
        base_name = bench_plans_name(preset)
        # the data depend on the preset, not on the encoder: preprocessed once, never redone (nnU-Net deletes the
        # folder first) under the training of a call with another encoder or none
        if not _preprocessed(folder, base_name):
            extract_fingerprints([dataset_id], num_processes=procs, clean=False)
            spacing = scaled_spacing(list(XLSTMUNetPlanner(dataset_id).determine_fullres_target_spacing()),
                                     preset.spacing_factor)
            base_name = plan_and_preprocess(
                [dataset_id], overwrite_target_spacing=spacing, overwrite_plans_name=base_name,
                planner_kwargs={"base_features": preset.base_features, "max_features": preset.max_features,
                                **({"batch_size": preset.batch_size} if preset.batch_size else {})}, **common)
        base = json.loads((folder / f"{base_name}.json").read_text())
        planned = base["configurations"][CONFIG]["architecture"]
        xlstm = planned
        if encoder is not None:  # the XLSTMUNet arms take the encoder's architecture, with the planned strides
            xlstm = {**planned, "arch_kwargs": XLSTMUNetPlanner(dataset_id, pretrained_encoder=encoder).match_encoder(
                planned["arch_kwargs"])}
        names = {}
        for arm, arch in (("stock", stock_architecture(planned)), ("resenc_m", resenc_m_architecture(planned)),
                          ("xlstm", xlstm), ("xlstm_no_mlstm", without_mlstm(xlstm)),
                          ("xlstm_light", one_block_per_stage(xlstm))):
            plans = derived_plans(base, bench_plans_name(preset, arm), arch)
            if arm == "xlstm" and encoder is not None:
                warnings += attach_encoder(plans, encoder, load_exported_encoder(encoder)[1], folder)
            names[arm] = _save(folder, plans)
    return _with_aliases(names, encoder), warnings


def _with_aliases(names: dict[str, str], encoder: Path | None) -> dict[str, str]:
    """The arms that train on the ``xlstm`` plans (the pretrained ones only with an encoder)."""
    aliases = [a for a in ARMS if a not in DERIVED and (encoder is not None or a not in PRETRAINED)]
    return {**names, **{a: names["xlstm"] for a in aliases}}


def planned_arms(dataset_id: int, preset: Preset, encoder: Path | None) -> dict[str, str] | None:
    """The arms' plans names if an earlier call planned this reduced preset with this encoder (same file hash) and
    preprocessed its data, else None: so benchmark processes for other arms or outputs reuse them."""
    if preset.stock_recipe:
        return None
    folder = _preprocessed_folder(dataset_id)
    names = {arm: bench_plans_name(preset, arm) for arm in DERIVED}
    if not all((folder / f"{n}.json").is_file() for n in names.values()) or \
            not _preprocessed(folder, bench_plans_name(preset)):
        return None
    recorded = json.loads((folder / f"{names['xlstm']}.json").read_text()).get("pretrained_encoder")
    if (recorded or {}).get("sha256") != (file_sha256(encoder) if encoder is not None else None):
        return None
    return _with_aliases(names, encoder)


def _preprocessed(folder: Path, plans_name: str) -> bool:
    """Whether ``plans_name`` is planned in ``folder`` and its 3D data preprocessed for every training case (nnU-Net
    writes a case's properties last), so that an interrupted preprocessing is redone rather than reused."""
    data = folder / f"{plans_name}_{CONFIG}"
    if not (folder / f"{plans_name}.json").is_file() or not (folder / "dataset.json").is_file() or not data.is_dir():
        return False
    return len(list(data.glob("*.pkl"))) == json.loads((folder / "dataset.json").read_text())["numTraining"]


def _preprocessed_folder(dataset_id: int) -> Path:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    return Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(dataset_id)


def _save(folder: Path, plans: dict) -> str:
    atomic_write_text(folder / f"{plans['plans_name']}.json", json.dumps(plans, indent=2))
    return plans["plans_name"]
