"""Fine-tuning trainers: strict loading of the plans' pretrained encoder (and decoder), refused when its pool holds
a patient the run validates or tests on.

========================================  ======================================================================
``nnUNetTrainerXLSTMPretrained``          loads the plans' pretrained encoder strictly; encoder frozen while the
                                          lr warms up over the first 10 % of epochs, then poly
``nnUNetTrainerXLSTMPretrainedDecoder``   the same, loading the pretrained decoder too
``*_short`` / ``*_smoke`` / ``*_cpu`` / ``*_gpu15min`` / ``*_cpulong``   the schedules of :mod:`.schedules`
========================================  ======================================================================

``NNUNETV2_XLSTM_FINETUNE="name=value,..."`` sets the fine-tuning protocol for one run: ``warmup`` (share of the
training with the lr warm-up, 0.1), ``warmup_encoder_lr`` (the encoder's lr factor during it, 0: frozen),
``encoder_lr`` (the pretrained encoder's lr factor afterwards, 1) and ``layer_decay`` (a further factor per encoder
stage below the bottleneck, 1: none).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import file_sha256, load_encoder_into, load_exported_encoder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.leakage import check_no_leak, raw_test_cases
from nnunetv2_xlstm.training.schedules import CPU, CPU_LONG, FINE_TUNING_WARMUP, GPU15MIN, SHORT, SMOKE
from nnunetv2_xlstm.training.xlstm import nnUNetTrainerXLSTM

__all__ = ["nnUNetTrainerXLSTMPretrained", "nnUNetTrainerXLSTMPretrainedDecoder",
           "nnUNetTrainerXLSTMPretrainedDecoder_cpu", "nnUNetTrainerXLSTMPretrainedDecoder_cpulong",
           "nnUNetTrainerXLSTMPretrainedDecoder_gpu15min", "nnUNetTrainerXLSTMPretrainedDecoder_smoke",
           "nnUNetTrainerXLSTMPretrained_cpu", "nnUNetTrainerXLSTMPretrained_cpulong",
           "nnUNetTrainerXLSTMPretrained_gpu15min", "nnUNetTrainerXLSTMPretrained_short",
           "nnUNetTrainerXLSTMPretrained_smoke"]


FINETUNE_ENV = "NNUNETV2_XLSTM_FINETUNE"  # "name=value,...": the fine-tuning protocol of one run (module docstring)


class nnUNetTrainerXLSTMPretrained(nnUNetTrainerXLSTM):
    """Fine-tuning: the plans' encoder, frozen while the lr warms up over the first 10 % of the epochs."""

    load_decoder: bool = False  # also load the decoder exported with the encoder (all but the segmentation heads)
    warmup_fraction = FINE_TUNING_WARMUP
    settings_variable = FINETUNE_ENV
    settings = {"warmup": ("warmup_fraction", float), "warmup_encoder_lr": ("encoder_warmup_lr_factor", float),
                "encoder_lr": ("encoder_lr_factor", float), "layer_decay": ("layer_decay", float)}

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self.current_epoch == 0:  # not when continuing (--c): the checkpoint has the weights
            self.load_pretrained_encoder()  # before the data loader workers start, so a refusal exits cleanly
        super().on_train_start()

    def load_pretrained_encoder(self) -> None:
        """Load the plans' encoder strictly (see :func:`load_encoder_into`) and log what was loaded."""
        info = self.plans_manager.plans.get("pretrained_encoder")
        if info is None:
            raise InputError(f"plans '{self.plans_manager.plans_name}' name no pretrained encoder. Plan with "
                             f"nnunetv2_xlstm_plan_and_preprocess --pretrained_encoder encoder_export.pt, or train "
                             f"from scratch with nnUNetTrainerXLSTMScratch")
        path = Path(self.preprocessed_dataset_folder_base) / info["file"]
        if not path.is_file() or file_sha256(path) != info["sha256"]:
            raise InputError(f"{path}, the encoder these plans were made for, is missing or has changed since "
                             f"planning; plan again with --pretrained_encoder")
        export = load_exported_encoder(path)
        self.check_encoder_pool(path, export[1])
        report = load_encoder_into(self.plain_network(), path, self.configuration_manager.network_arch_init_kwargs,
                                   self.num_input_channels, decoder=self.load_decoder, export=export)
        count = lambda keys: ", ".join(f"{k} {n}" for k, n in Counter(".".join(k.split(".")[:2]) for k in keys).items())
        listing = atomic_write_text(Path(self.output_folder) / "pretrained_encoder_keys.json",
                                    json.dumps({"encoder": str(path), "source": info.get("source"), **report}, indent=1))
        self.print_to_log_file(f"loaded pretrained encoder {path} (from {info.get('source')}): "
                               f"{len(report['loaded'])} tensors ({count(report['loaded'])}); initialised afresh: "
                               f"{len(report['fresh'])} tensors ({count(report['fresh'])}); every key in {listing}")

    def check_encoder_pool(self, path: Path, plan: dict) -> None:
        """Refuse an encoder (``plan``: its adaptation plan) pretrained on a patient this fold validates on, or on a
        test image of the raw data set (``imagesTs``); ``NNUNETV2_XLSTM_TRANSDUCTIVE=1`` allows it, logged
        (:mod:`nnunetv2_xlstm.leakage`)."""
        _, val_keys = self.do_split()
        note = check_no_leak(plan, [*val_keys, *raw_test_cases(self.plans_manager.dataset_name)], path,
                             "validation or test")
        if note:
            self.print_to_log_file(f"WARNING: {note}")


class nnUNetTrainerXLSTMPretrainedDecoder(nnUNetTrainerXLSTMPretrained):
    """Fine-tuning from the pretrained encoder and decoder (masked-distillation exports carry both)."""

    load_decoder = True


class nnUNetTrainerXLSTMPretrainedDecoder_smoke(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrainedDecoder_cpu(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = CPU


class nnUNetTrainerXLSTMPretrainedDecoder_gpu15min(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = GPU15MIN


class nnUNetTrainerXLSTMPretrainedDecoder_cpulong(nnUNetTrainerXLSTMPretrainedDecoder):
    schedule = CPU_LONG


class nnUNetTrainerXLSTMPretrained_short(nnUNetTrainerXLSTMPretrained):
    schedule = SHORT


class nnUNetTrainerXLSTMPretrained_smoke(nnUNetTrainerXLSTMPretrained):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrained_cpu(nnUNetTrainerXLSTMPretrained):
    schedule = CPU


class nnUNetTrainerXLSTMPretrained_gpu15min(nnUNetTrainerXLSTMPretrained):
    schedule = GPU15MIN


class nnUNetTrainerXLSTMPretrained_cpulong(nnUNetTrainerXLSTMPretrained):
    schedule = CPU_LONG
