"""``nnunetv2_xlstm_plan_and_preprocess``: ``nnUNetv2_plan_and_preprocess`` with our planner as the default.

nnU-Net only searches its own package for planners, so this command calls nnU-Net's API with the planner class
directly. It takes the stock arguments, plus the XLSTMUNet ones; ``-pl`` may still name any stock nnU-Net planner.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from os.path import join

import nnunetv2
from nnunetv2.configuration import default_num_processes
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints,
    plan_experiment_dataset,
    preprocess,
)
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

from nnunetv2_xlstm.checkpoints import check_export_fits_its_plan, load_exported_encoder
from nnunetv2_xlstm.datasets import check_dataset_json, check_raw_dataset, find_raw_dataset
from nnunetv2_xlstm.env import InputError, error_line, require_env
from nnunetv2_xlstm.planning.planner import XLSTMUNetPlanner, encoder_geometry

OUR_PLANNERS = {"XLSTMUNetPlanner": XLSTMUNetPlanner}
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


def check_planner_kwargs(kwargs: dict) -> None:
    """Refuse out-of-range XLSTMUNet options with the option's name."""
    checks = {"n_mlstm_stages": (0, "--mlstm_stages must be >= 0 (0: no mLSTM blocks)"),
              "mlstm_blocks_per_stage": (1, "--mlstm_blocks must be >= 1 (2: one forward and one backward scan)"),
              "base_features": (1, "--base_features must be >= 1"),
              "max_features": (1, "--max_features must be >= 1"),
              "batch_size": (1, "--batch_size must be >= 1")}
    for key, (minimum, message) in checks.items():
        value = kwargs.get(key)
        if value is not None and value < minimum:
            raise InputError(f"{message}; got {value}")
    if kwargs.get("max_features", 1 << 30) < kwargs.get("base_features", 0):
        raise InputError(f"--max_features {kwargs['max_features']} is below --base_features {kwargs['base_features']}")


def plan_and_preprocess(dataset_ids: list[int], planner: str = "XLSTMUNetPlanner", configurations: list[str] = (
        "2d", "3d_fullres", "3d_lowres"), num_processes: list[int] | None = None, gpu_memory_target: float | None = None,
        overwrite_target_spacing: list[float] | None = None, overwrite_plans_name: str | None = None,
        preprocessor_name: str = "DefaultPreprocessor", fingerprint_extractor: str = "DatasetFingerprintExtractor",
        num_processes_fingerprint: int = default_num_processes, verify_dataset_integrity: bool = False,
        clean: bool = False, no_pp: bool = False, verbose: bool = False, planner_kwargs: dict | None = None,
        check_raw: bool = True) -> str:
    """Fingerprint, plan and (unless ``no_pp``) preprocess; returns the plans identifier (``nnUNetPlansXLSTM``).

    Inputs are checked before anything is written: the ``nnUNet_*`` variables, the configurations, the planner
    options, the data set ids, their ``dataset.json`` and (``check_raw``) every raw image and label. ``planner_kwargs`` go to our planner only (e.g. ``base_features=16``, or
    ``pretrained_encoder="encoder_export.pt"`` to plan like an exported encoder).
    """
    require_env("nnUNet_raw", "nnUNet_preprocessed")
    unknown = sorted(set(configurations) - set(CONFIGURATIONS))
    if unknown:
        raise InputError(f"-c {' '.join(unknown)}: unknown configuration(s); choose from {', '.join(CONFIGURATIONS)}")
    planner_kwargs = planner_kwargs or {}
    check_planner_kwargs(planner_kwargs)
    raw = {d: find_raw_dataset(d) for d in dataset_ids}
    dataset_jsons = {d: check_dataset_json(folder) for d, folder in raw.items()}
    if "pretrained_encoder" in planner_kwargs:
        export = load_exported_encoder(planner_kwargs["pretrained_encoder"])  # refuse a wrong file before any work
        check_export_fits_its_plan(planner_kwargs["pretrained_encoder"], export)
        plan = export[1]
        for d, dataset_json in dataset_jsons.items():
            if len(dataset_json["channel_names"]) != plan["pretrain_num_input_channels"]:
                raise InputError(f"{planner_kwargs['pretrained_encoder']} was pretrained on "
                                 f"{plan['pretrain_num_input_channels']} input channel(s); {raw[d].name} has "
                                 f"{len(dataset_json['channel_names'])}. Fine-tune on data with the same channels or "
                                 f"plan without --pretrained_encoder")
        shaped = sorted({"n_mlstm_stages", "mlstm_blocks_per_stage", "base_features", "max_features"} & set(planner_kwargs))
        if shaped:
            raise InputError(f"{shaped} come from the pretrained encoder and cannot be set with --pretrained_encoder")
        if "2d" in configurations:
            print("WARNING: the 2d configuration cannot use a 3D pretrained encoder; its plan stays XLSTMUNet 2D")
        geometry = encoder_geometry(plan)
        if geometry is not None and overwrite_target_spacing is None:  # the spacing the encoder learned
            overwrite_target_spacing = list(geometry["spacing"])
    if planner in OUR_PLANNERS:
        planner_class = partial(OUR_PLANNERS[planner], **(planner_kwargs or {}))
    else:
        if planner_kwargs:
            raise InputError(f"{sorted(planner_kwargs)} only apply to {', '.join(OUR_PLANNERS)}, not to -pl {planner}")
        planner_class = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                                    current_module="nnunetv2.experiment_planning")
        if planner_class is None:
            raise InputError(f"unknown planner -pl {planner}: use one of {', '.join(OUR_PLANNERS)} or an nnU-Net "
                             f"planner such as nnUNetPlannerResEncM")
    if check_raw:  # nothing is written before the raw data have been read once
        for d in dataset_ids:
            check_raw_dataset(raw[d], dataset_jsons[d], progress=verbose or sys.stdout.isatty())

    extract_fingerprints(dataset_ids, fingerprint_extractor, num_processes_fingerprint, verify_dataset_integrity,
                         clean, verbose)
    plans_identifier = None
    for d in dataset_ids:
        _, plans_identifier = plan_experiment_dataset(d, planner_class, gpu_memory_target, preprocessor_name,
                                                      overwrite_target_spacing, overwrite_plans_name)
    if not no_pp:
        n = num_processes or [{"2d": 8, "3d_lowres": 8}.get(c, 4) for c in configurations]  # stock defaults
        preprocess(dataset_ids, plans_identifier, list(configurations), n, verbose)
    return plans_identifier


def plan_and_preprocess_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", nargs="+", type=int, required=True, help="data set id(s), e.g. 801")
    p.add_argument("-pl", default="XLSTMUNetPlanner", help="planner class (default: XLSTMUNetPlanner)")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"], help="configurations to preprocess")
    p.add_argument("-np", nargs="+", type=int, default=None, help="processes per configuration (default 8 4 8)")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB (default 8)")
    p.add_argument("-overwrite_target_spacing", nargs="+", type=float, default=None,
                   help="target spacing for 3d_fullres, e.g. 10 3 3")
    p.add_argument("-overwrite_plans_name", default=None, help="plans name (default nnUNetPlansXLSTM)")
    p.add_argument("-preprocessor_name", default="DefaultPreprocessor")
    p.add_argument("-fpe", default="DatasetFingerprintExtractor", help="fingerprint extractor class")
    p.add_argument("-npfp", type=int, default=default_num_processes, help="processes for fingerprint extraction")
    p.add_argument("--verify_dataset_integrity", action="store_true")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("--clean", action="store_true", help="overwrite an existing fingerprint")
    p.add_argument("--verbose", action="store_true")
    g = p.add_argument_group("XLSTMUNet (XLSTMUNetPlanner only)")
    g.add_argument("--mlstm_stages", type=int, default=None, help="number of deepest stages with mLSTM blocks (2)")
    g.add_argument("--mlstm_blocks", type=int, default=None, help="mLSTM blocks per stage, even = bidirectional (2)")
    g.add_argument("--base_features", type=int, default=None, help="features of the first stage (32)")
    g.add_argument("--max_features", type=int, default=None, help="feature cap (320)")
    g.add_argument("--batch_size", type=int, default=None, help="fix the batch size (default: from memory target)")
    p.add_argument("--no_raw_check", action="store_true",
                   help="skip reading every raw image and label before planning (for large, known-good data sets)")
    g.add_argument("--pretrained_encoder", default=None, metavar="encoder_export.pt",
                   help="plan 3D networks like this exported encoder (stages, widths, kernels, mLSTM placement) for "
                        "nnUNetTrainerXLSTMPretrained; plans name nnUNetPlansXLSTMEncoder")
    a = p.parse_args(argv)
    kwargs = {k: v for k, v in {"n_mlstm_stages": a.mlstm_stages, "mlstm_blocks_per_stage": a.mlstm_blocks,
                                "base_features": a.base_features, "max_features": a.max_features,
                                "batch_size": a.batch_size, "pretrained_encoder": a.pretrained_encoder}.items()
              if v is not None}
    try:
        plan_and_preprocess(a.d, a.pl, a.c, a.np, a.gpu_memory_target, a.overwrite_target_spacing,
                            a.overwrite_plans_name, a.preprocessor_name, a.fpe, a.npfp, a.verify_dataset_integrity,
                            a.clean, a.no_pp, a.verbose, kwargs, check_raw=not a.no_raw_check)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_plan_and_preprocess: error: {error_line(e)}")
