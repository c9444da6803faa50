"""Semi-supervised few-label training inside nnU-Net: a mean teacher labels unlabelled scans, and bidirectional
copy-paste mixes them with the labelled patches (BCP, Bai et al., CVPR 2023; mean teacher, Tarvainen & Valpola 2017).

=============================================  ==============================================================
``nnUNetTrainerXLSTMSemi``                     the scratch recipe (:class:`nnUNetTrainerXLSTMScratch`) plus the
                                               unlabelled scans
``nnUNetTrainerXLSTMPretrainedSemi``           the same from the plans' pretrained encoder
``*_smoke``, ``*_cpu``, ``*_cpulong``, ...    the schedules of the supervised trainers of that suffix
=============================================  ==============================================================

Each training step:

- **warm start** (the first ``warm_start_fraction`` of training): labelled patches only, each pasted into another's
  box (copy-paste between labelled patches), with their ground truth;
- **afterwards**: the EMA teacher (a copy of the student at the end of the warm start, then momentum
  ``ema_momentum`` per step) labels an unlabelled batch; each labelled patch and an unlabelled one are mixed both ways
  through a box of ``box_fraction`` of the patch; ground truth supervises the labelled part of each mixed patch and
  the teacher's pseudo-labels with a softmax probability of at least ``pseudo_label_confidence`` the rest, weighted
  by ``unlabelled_weight``.

The unlabelled scans are the fold's ``unlabelled_fold{k}.txt`` (written by ``nnunetv2_xlstm_split``) or the list file
or folder named by ``NNUNETV2_XLSTM_UNLABELLED``. They are preprocessed once by nnU-Net's own preprocessor of these
plans into ``<preprocessed data>_unlabelled_<hash>``, without their labels, so no label of an unlabelled case reaches
training. nnU-Net's augmentation, deep supervision, validation, ``--c`` (the teacher is in the checkpoint),
``progress.png`` and ``nnUNetv2_predict`` (the student) work as for the supervised trainers; the labelled and
unlabelled loss terms and the share of confident pseudo-labels are logged per epoch and plotted in
``progress_semi.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import atomic_torch_save, load_nnunet_checkpoint
from nnunetv2_xlstm.ema import ema_update
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.training.copy_paste import box_mask, mix, mixed_targets, pseudo_labels
from nnunetv2_xlstm.training.pretrained import nnUNetTrainerXLSTMPretrained
from nnunetv2_xlstm.training.schedules import CPU, CPU_LONG, GPU15MIN, SMOKE
from nnunetv2_xlstm.training.xlstm import nnUNetTrainerXLSTMScratch

UNLABELLED_ENV = "NNUNETV2_XLSTM_UNLABELLED"  # a list file (one image path per line) or a folder of images
SEMI_LOG_KEYS = ("loss_labelled", "loss_unlabelled", "pseudo_share")


def case_of(path: Path, file_ending: str) -> str:
    """``.../patient001_frame01_0000.nii.gz`` -> ``patient001_frame01`` (nnU-Net's raw naming: case + channel)."""
    name = path.name[: -len(file_ending)] if path.name.endswith(file_ending) else path.name
    return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name


def unlabelled_image_files(source: Path, file_ending: str, channels: int) -> dict[str, list[str]]:
    """``{case: [channel files]}`` of a list file (one image path per line, any channel of a case) or a folder of
    images named like nnU-Net's raw data (``CASE_0000<ending>``...); :class:`InputError` naming what is wrong."""
    if source.is_dir():
        entries = sorted(p for p in source.iterdir() if p.name.endswith(file_ending))
    elif source.is_file():
        entries = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        raise InputError(f"unlabelled source {source} does not exist; run nnunetv2_xlstm_split for this data set (it "
                         f"writes unlabelled_fold<k>.txt) or set {UNLABELLED_ENV} to a list file or folder of images")
    cases: dict[str, list[str]] = {}
    for entry in entries:
        if not entry.is_file():
            raise InputError(f"{source} names {entry}, which does not exist")
        case = case_of(entry, file_ending)
        cases[case] = [str(entry.with_name(f"{case}_{c:04d}{file_ending}")) for c in range(channels)]
        missing = [f for f in cases[case] if not Path(f).is_file()]
        if missing:
            raise InputError(f"{source}: case {case} lacks {missing[0]}; the data set has {channels} channel(s) and "
                             f"every unlabelled case needs them all")
    if not cases:
        raise InputError(f"{source} lists no unlabelled images: semi-supervised training needs some. Give a list file "
                         f"or folder of images in {UNLABELLED_ENV}, or train the supervised trainer instead")
    return cases


class SemiSupervision:
    """The semi-supervised step for a :class:`ScheduledTrainer`; mixed in before it (see the module docstring)."""

    ema_momentum: float = 0.99
    warm_start_fraction: float = 0.2
    box_fraction: float = 2 / 3
    pseudo_label_confidence: float = 0.8
    unlabelled_weight: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key in SEMI_LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging[key] = []
        self.teacher = None
        self.dataloader_unlabelled = None
        self.teacher_started = False

    def initialize(self) -> None:
        super().initialize()
        self.teacher = deepcopy(self.plain_network()).requires_grad_(False)
        self.ignore_value = int(max(self.label_manager.all_labels)) + 1  # marks voxels a loss term leaves out
        self.masked_loss = self._loss_with_ignore_label(self.ignore_value)

    def _loss_with_ignore_label(self, ignore: int) -> torch.nn.Module:
        """nnU-Net's own loss (Dice + CE, deep supervision weights) as it builds it for a data set whose ignore
        label is ``ignore``."""
        saved = self.label_manager._ignore_label
        self.label_manager._ignore_label = ignore
        try:
            return self._build_loss()
        finally:
            self.label_manager._ignore_label = saved

    # --- the unlabelled scans -----------------------------------------------------------------------------------
    def unlabelled_source(self) -> Path:
        value = os.environ.get(UNLABELLED_ENV)
        return Path(value) if value else Path(self.preprocessed_dataset_folder_base) / f"unlabelled_fold{self.fold}.txt"

    def unlabelled_cases(self) -> dict[str, list[str]]:
        """The unlabelled cases' image files, refusing labelled and development cases of this fold."""
        source = self.unlabelled_source()
        cases = unlabelled_image_files(source, self.dataset_json["file_ending"], len(self.dataset_json["channel_names"]))
        labelled, development = self.do_split()
        for kind, keys in (("labelled", labelled), ("development (validation)", development)):
            clash = sorted(set(cases) & set(keys))
            if clash:
                raise InputError(f"{source} names {len(clash)} {kind} case(s) of fold {self.fold} "
                                 f"({', '.join(clash[:4])}); unlabelled scans must be neither, or the labels and the "
                                 f"development set leak into training. Fix the list or re-run nnunetv2_xlstm_split")
        return cases

    def preprocess_unlabelled(self, cases: dict[str, list[str]]) -> Path:
        """nnU-Net's preprocessor of these plans run on every unlabelled case, without labels, into a folder keyed
        by the cases and the configuration; reused when complete."""
        key = hashlib.sha256(json.dumps([self.plans_manager.plans_name, self.configuration_name, sorted(
            cases.items())]).encode()).hexdigest()[:10]
        folder = Path(f"{self.preprocessed_dataset_folder}_unlabelled_{key}")
        if (folder / "complete.json").is_file():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        self.print_to_log_file(f"preprocessing {len(cases)} unlabelled cases into {folder}")
        for case, files in sorted(cases.items()):
            data, _, properties = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                                        self.dataset_json)
            properties["class_locations"] = {}
            nnUNetDatasetNumpy.save_case(data, np.zeros((1, *data.shape[1:]), np.int8), properties,
                                         str(folder / case))
        atomic_write_text(folder / "complete.json", json.dumps({"cases": sorted(cases)}))
        return folder

    def get_unlabelled_loader(self):
        """nnU-Net's data loader and training augmentation over the unlabelled cases (random patches: no
        foreground oversampling, which would need their labels)."""
        folder = self.preprocess_unlabelled(self.unlabelled_cases())
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            foreground_labels=self.label_manager.foreground_labels)
        loader = nnUNetDataLoader(nnUNetDatasetNumpy(str(folder)), self.batch_size, initial_patch_size, patch_size,
                                  self.label_manager, oversample_foreground_percent=0.0, transforms=transforms)
        processes = self.augmentation_processes()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, max(1, processes // 2), max(3, processes // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.dataloader_unlabelled = self.get_unlabelled_loader()

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabelled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabelled._finish()

    # --- the step -----------------------------------------------------------------------------------------------
    def in_warm_start(self) -> bool:
        return self.schedule_epoch() < self.warm_start_fraction * self.num_epochs

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in batch["target"]]
        self.optimizer.zero_grad(set_to_none=True)
        mask = box_mask(tuple(data.shape), self.box_fraction, device=self.device)
        if self.in_warm_start():  # copy-paste between labelled patches: each into the next one's box
            mixed = mix(data, data.roll(1, 0), mask)
            loss_l = self.loss(self.network(mixed), [mix(t, t.roll(1, 0), mask) for t in target])
            loss_u, share = torch.zeros(()), float("nan")
        else:
            if not self.teacher_started:  # the teacher starts from the warm-started student
                self.teacher.load_state_dict(self.plain_network().state_dict())
                self.teacher_started = True
            unlabelled = next(self.dataloader_unlabelled)["data"].to(self.device, non_blocking=True)
            with torch.no_grad():
                self.teacher.eval()
                logits = self.teacher(unlabelled)
                pseudo, confident = pseudo_labels(logits[0] if isinstance(logits, (list, tuple)) else logits,
                                                  self.pseudo_label_confidence)
            inward, outward = mix(data, unlabelled, mask), mix(unlabelled, data, mask)
            parts = [[mixed_targets(t, pseudo, confident, mask, self.ignore_value, inside) for t in target]
                     for inside in (True, False)]
            ground_truth = [torch.cat([a[0], b[0]]) for a, b in zip(*parts)]
            teacher_labels = [torch.cat([a[1], b[1]]) for a, b in zip(*parts)]
            output = self.network(torch.cat([inward, outward]))
            loss_l = self.masked_loss(output, ground_truth)
            loss_u = self.masked_loss(output, teacher_labels)
            # the pseudo-labelled part of the two mixes together is one batch of patches
            share = 2 * (teacher_labels[0] != self.ignore_value).float().mean().item()
        loss = loss_l + self.unlabelled_weight * loss_u
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        if self.teacher_started:
            ema_update(self.teacher, self.plain_network(), self.ema_momentum)
        return {"loss": loss.detach().cpu().numpy(), "loss_labelled": loss_l.detach().cpu().numpy(),
                "loss_unlabelled": loss_u.detach().cpu().numpy(), "pseudo_share": np.float64(share)}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        values = {k: float(np.mean([o[k] for o in train_outputs])) for k in SEMI_LOG_KEYS}
        for key, value in values.items():
            self.logger.log(key, value, self.current_epoch)
        self.print_to_log_file(" ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_semi_progress(self.logger.local_logger.my_fantastic_logging, Path(self.output_folder))

    # --- the teacher in the checkpoint --------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank == 0 and not self.disable_checkpointing and self.teacher is not None:
            checkpoint = load_nnunet_checkpoint(filename)  # our own file, just written
            checkpoint.update(teacher_weights=self.teacher.state_dict(), teacher_started=self.teacher_started)
            atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = (load_nnunet_checkpoint(filename_or_checkpoint) if isinstance(filename_or_checkpoint, str)
                      else filename_or_checkpoint)
        if "teacher_weights" in checkpoint:
            self.teacher.load_state_dict(checkpoint["teacher_weights"])
            self.teacher_started = bool(checkpoint.get("teacher_started", True))


def plot_semi_progress(log: dict, folder: Path) -> None:
    """``progress_semi.png``: the labelled and unlabelled loss terms and the share of confident pseudo-labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunetv2_xlstm.atomic import atomic_write

    fig, (ax, share) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("train_losses", "loss_labelled", "loss_unlabelled"):
        ax.plot(log.get(key, []), label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    share.plot(log.get("pseudo_share", []), color="C3")
    share.set_ylim(0, 1.02)
    share.set_xlabel("epoch")
    share.set_ylabel("confident share of pseudo-labelled voxels")
    for a in (ax, share):
        a.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(folder / "progress_semi.png", lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)


class nnUNetTrainerXLSTMSemi(SemiSupervision, nnUNetTrainerXLSTMScratch):
    pass


class nnUNetTrainerXLSTMPretrainedSemi(SemiSupervision, nnUNetTrainerXLSTMPretrained):
    pass


class nnUNetTrainerXLSTMSemi_smoke(nnUNetTrainerXLSTMSemi):
    schedule = SMOKE


class nnUNetTrainerXLSTMSemi_cpu(nnUNetTrainerXLSTMSemi):
    schedule = CPU


class nnUNetTrainerXLSTMSemi_cpulong(nnUNetTrainerXLSTMSemi):
    schedule = CPU_LONG


class nnUNetTrainerXLSTMSemi_gpu15min(nnUNetTrainerXLSTMSemi):
    schedule = GPU15MIN


class nnUNetTrainerXLSTMPretrainedSemi_smoke(nnUNetTrainerXLSTMPretrainedSemi):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrainedSemi_cpu(nnUNetTrainerXLSTMPretrainedSemi):
    schedule = CPU


class nnUNetTrainerXLSTMPretrainedSemi_cpulong(nnUNetTrainerXLSTMPretrainedSemi):
    schedule = CPU_LONG


class nnUNetTrainerXLSTMPretrainedSemi_gpu15min(nnUNetTrainerXLSTMPretrainedSemi):
    schedule = GPU15MIN


__all__ = ["nnUNetTrainerXLSTMSemi", "nnUNetTrainerXLSTMPretrainedSemi", "nnUNetTrainerXLSTMSemi_smoke",
           "nnUNetTrainerXLSTMSemi_cpu", "nnUNetTrainerXLSTMSemi_cpulong", "nnUNetTrainerXLSTMPretrainedSemi_smoke",
           "nnUNetTrainerXLSTMPretrainedSemi_cpu", "nnUNetTrainerXLSTMPretrainedSemi_cpulong",
           "nnUNetTrainerXLSTMSemi_gpu15min", "nnUNetTrainerXLSTMPretrainedSemi_gpu15min"]
