"""Semi-supervised few-label training inside nnU-Net: a mean teacher labels unlabelled scans, and bidirectional
copy-paste mixes them with the labelled patches (BCP, Bai et al., CVPR 2023; mean teacher, Tarvainen & Valpola 2017).

=============================================  ==============================================================
``nnUNetTrainerXLSTMSemi``                     the scratch recipe (:class:`nnUNetTrainerXLSTMScratch`) plus the
                                               unlabelled scans
``nnUNetTrainerXLSTMPretrainedSemi``           the same from the plans' pretrained encoder
``nnUNetTrainerXLSTMPretrainedDecoderSemi``    the same from the pretrained encoder and decoder
``*_smoke``, ``*_cpu``, ``*_cpulong``, ...    the schedules of the supervised trainers of that suffix
=============================================  ==============================================================

Two phases:

- **warm start**: labelled patches only, each pasted into another's box (copy-paste between labelled patches), with
  their ground truth, until a criterion (:class:`SemiSupervision`'s settings): ``warm_start_iterations`` iterations,
  or the student's Dice on its labelled training patches (mean over an epoch) reaching ``warm_start_dice``, and at
  the latest at ``warm_start_fraction`` of the training. BCP likewise trains a supervised copy-paste stage first, so
  that the teacher copied from it is worth copying. ``start_from`` (a supervised ``checkpoint_final.pth`` of the same
  plans) skips it: the semi phase starts from that model.
- **semi phase**: the EMA teacher (the student at the end of the warm start, then momentum ``ema_momentum`` per
  step) labels a batch of half as many unlabelled patches, without autograd and in the network's precision; each
  unlabelled patch is mixed with two labelled ones, once through the box each way, so the student sees one batch of
  the usual size in one forward pass. Ground truth supervises the labelled part of each mixed patch, the teacher's
  confident pseudo-labels (:func:`~nnunetv2_xlstm.training.copy_paste.pseudo_labels`: a confidence threshold,
  optionally relaxed per class, optionally the largest connected component per structure) the rest, weighted by
  ``unlabelled_weight`` ramped up over the first ``unlabelled_rampup`` of the phase (Laine & Aila's sigmoid ramp).

Settings are class attributes of :class:`SemiSupervision`; ``NNUNETV2_XLSTM_SEMI="name=value,..."`` overrides them
for one run (e.g. ``warm_start_iterations=300,largest_component=0``).

The unlabelled scans are the fold's ``unlabelled_fold{k}.txt`` (written by ``nnunetv2_xlstm_split``) or the list file
or folder named by ``NNUNETV2_XLSTM_UNLABELLED``. Before any data loader starts, a list naming a labelled,
development or test patient (any frame) is refused, and so are missing, unreadable or non-image files. Rank 0
preprocesses them once with nnU-Net's own preprocessor of these plans (the other ranks wait at a barrier) into
``<preprocessed data>_unlabelled_<hash>``, keyed by the plans' contents and the files, without their labels. The
teacher is saved in the one checkpoint nnU-Net's ``--c`` resumes from (a checkpoint without it is refused);
``progress_semi.png`` plots the loss terms, the labelled Dice and the confident share per class; ``nnUNetv2_predict``
uses the student.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.ema import ema_update
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.leakage import patients_of, raw_test_cases, split_group_pattern
from nnunetv2_xlstm.training.copy_paste import box_mask, mix, mixed_targets, pseudo_labels
from nnunetv2_xlstm.training.pretrained import nnUNetTrainerXLSTMPretrained, nnUNetTrainerXLSTMPretrainedDecoder
from nnunetv2_xlstm.training.schedules import CPU, CPU_LONG, GPU15MIN, SMOKE
from nnunetv2_xlstm.training.settings import parse_settings as parse
from nnunetv2_xlstm.training.xlstm import nnUNetTrainerXLSTMScratch

UNLABELLED_ENV = "NNUNETV2_XLSTM_UNLABELLED"  # a list file (one image path per line) or a folder of images
SEMI_LOG_KEYS = ("loss_labelled", "loss_unlabelled", "pseudo_share", "labelled_dice", "unlabelled_weight",
                 "pseudo_share_per_class")


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
        try:
            text = source.read_text()
        except UnicodeDecodeError:
            raise InputError(f"unlabelled list {source} is not a text file; it must name one image path per line "
                             f"(nnunetv2_xlstm_split writes one)") from None
        entries = [Path(line.strip()) for line in text.splitlines() if line.strip()]
        odd = [e for e in entries if not e.name.endswith(file_ending)]
        if odd:
            raise InputError(f"unlabelled list {source} names {odd[0]}, which is not a {file_ending} image of this "
                             f"data set; list image files only")
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


SEMI_ENV = "NNUNETV2_XLSTM_SEMI"  # "name=value,...": overrides SemiSupervision's settings for one run
SETTINGS = {"ema_momentum": float, "warm_start_iterations": int, "warm_start_dice": float,
            "warm_start_fraction": float, "start_from": str, "box_fraction": float, "pseudo_label_confidence": float,
            "class_quantile": float, "largest_component": bool, "unlabelled_weight": float,
            "unlabelled_rampup": float}


def parse_settings(text: str) -> dict:
    """``"name=value,..."`` -> ``{name: value}`` typed as :data:`SETTINGS` (:func:`.settings.parse_settings`)."""
    return parse(text, SETTINGS, SEMI_ENV, ("warm_start_fraction", "box_fraction", "pseudo_label_confidence",
                                            "class_quantile", "unlabelled_rampup", "ema_momentum"))


def sigmoid_rampup(progress: float, length: float) -> float:
    """Laine & Aila's ramp, ``exp(-5 (1 - t)^2)`` for ``t = progress / length`` in [0, 1]; 1 when ``length`` is 0."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def foreground_dice(logits: torch.Tensor, target: torch.Tensor, classes: list[int]) -> float:
    """Mean hard Dice over the ``classes`` present in prediction or ``target`` (NaN if none is)."""
    prediction = logits.argmax(1, keepdim=True)
    scores = []
    for c in classes:
        p, t = prediction == c, target == c
        total = p.sum() + t.sum()
        if total > 0:
            scores.append((2 * (p & t).sum() / total).item())
    return float(np.mean(scores)) if scores else float("nan")


class SemiSupervision:
    """The semi-supervised step for a :class:`ScheduledTrainer`; mixed in before it (see the module docstring)."""

    ema_momentum: float = 0.99
    warm_start_iterations: int | None = None  # end the warm start after this many iterations ...
    warm_start_dice: float | None = 0.8  # ... or once the labelled training patches' epoch Dice reaches this ...
    warm_start_fraction: float = 0.5  # ... and at the latest at this share of the training (epochs or time)
    start_from: str | None = None  # a supervised checkpoint of these plans: skip the warm start, start from it
    box_fraction: float = 2 / 3
    pseudo_label_confidence: float = 0.8
    class_quantile: float | None = 0.5  # relax a class's threshold to this quantile of its voxels' confidence
    largest_component: bool = True
    unlabelled_weight: float = 0.5
    unlabelled_rampup: float = 0.3  # share of the semi phase over which the unlabelled weight ramps up

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in parse_settings(os.environ.get(SEMI_ENV, "")).items():
            setattr(self, name, value)
        for key in SEMI_LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging[key] = []
        self.teacher = None
        self.dataloader_unlabelled = None
        self.semi_started_at = None  # the schedule epoch at which the teacher was copied (None: warm start)
        self.semi_iterations = 0  # training iterations so far, both phases

    def initialize(self) -> None:
        super().initialize()
        self.teacher = deepcopy(self.plain_network()).requires_grad_(False).eval()
        self.ignore_value = int(max(self.label_manager.all_labels)) + 1  # marks voxels a loss term leaves out
        self.masked_loss = self._loss_with_ignore_label(self.ignore_value)
        self.print_to_log_file("semi-supervised settings: " + ", ".join(
            f"{name}={getattr(self, name)}" for name in SETTINGS))

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
        """The unlabelled cases' image files, refusing any whose patient (any frame) is labelled or validated on in
        this fold, or has an image in the raw data set's ``imagesTs``."""
        source = self.unlabelled_source()
        cases = unlabelled_image_files(source, self.dataset_json["file_ending"], len(self.dataset_json["channel_names"]))
        pattern = split_group_pattern(Path(self.preprocessed_dataset_folder_base))
        labelled, development = self.do_split()
        test = raw_test_cases(self.plans_manager.dataset_name)
        mine = patients_of(list(cases), pattern)
        for kind, keys in (("labelled", labelled), ("development (validation)", development), ("test", test)):
            clash = sorted(mine & patients_of(list(keys), pattern))
            if clash:
                raise InputError(f"{source} names images of {len(clash)} {kind} patient(s) of fold {self.fold} "
                                 f"({', '.join(clash[:4])}); unlabelled scans must be none of them, or labels, "
                                 f"development or test patients leak into training. Fix the list or re-run "
                                 f"nnunetv2_xlstm_split")
        return cases

    def unlabelled_folder(self, cases: dict[str, list[str]]) -> Path:
        """Where the preprocessed cases live: keyed by the plans' contents, the configuration and the files."""
        files = {case: [(f, Path(f).stat().st_size) for f in fs] for case, fs in sorted(cases.items())}
        key = hashlib.sha256(json.dumps([self.plans_manager.plans, self.configuration_name, files], sort_keys=True,
                                        default=str).encode()).hexdigest()[:10]
        return Path(f"{self.preprocessed_dataset_folder}_unlabelled_{key}")

    def preprocess_unlabelled(self, cases: dict[str, list[str]], folder: Path) -> None:
        """nnU-Net's preprocessor of these plans run on every unlabelled case, without labels; reused when
        complete. :class:`InputError` naming the file that cannot be read."""
        if (folder / "complete.json").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        self.print_to_log_file(f"preprocessing {len(cases)} unlabelled cases into {folder}")
        for case, files in sorted(cases.items()):
            try:
                data, _, properties = preprocessor.run_case(files, None, self.plans_manager,
                                                            self.configuration_manager, self.dataset_json)
            except (RuntimeError, OSError, ValueError) as e:
                reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
                raise InputError(f"{self.unlabelled_source()}: cannot read the unlabelled case {case} ({files[0]}: "
                                 f"{reason}); is it an image of this data set? Remove it from the list") from None
            properties["class_locations"] = {}
            nnUNetDatasetNumpy.save_case(data, np.zeros((1, *data.shape[1:]), np.int8), properties,
                                         str(folder / case))
        atomic_write_text(folder / "complete.json", json.dumps({"cases": sorted(cases)}))

    def get_unlabelled_loader(self, folder: Path):
        """nnU-Net's data loader and training augmentation over the unlabelled cases (random patches: no
        foreground oversampling, which would need their labels), half the labelled batch size (rounded up)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        transforms = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            foreground_labels=self.label_manager.foreground_labels)
        loader = nnUNetDataLoader(nnUNetDatasetNumpy(str(folder)), (self.batch_size + 1) // 2, initial_patch_size,
                                  patch_size, self.label_manager, oversample_foreground_percent=0.0,
                                  transforms=transforms)
        processes = self.augmentation_processes()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, max(1, processes // 2), max(3, processes // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        cases = self.unlabelled_cases()  # every refusal before a data loader starts: the process exits cleanly
        folder = self.unlabelled_folder(cases)
        if self.local_rank == 0:
            self.preprocess_unlabelled(cases, folder)
        if self.is_ddp:
            dist.barrier()
        super().on_train_start()
        if self.start_from and self.current_epoch == 0:
            self.start_from_checkpoint(Path(self.start_from))
        self.dataloader_unlabelled = self.get_unlabelled_loader(folder)

    def start_from_checkpoint(self, path: Path) -> None:
        """The student and the teacher from a supervised checkpoint of these plans; the semi phase starts now."""
        weights = load_nnunet_checkpoint(path)["network_weights"]
        try:
            self.plain_network().load_state_dict(weights)
        except RuntimeError as e:
            raise InputError(f"start_from {path}: its network does not match these plans ({str(e).splitlines()[0]});"
                             f" give a checkpoint trained with the same plans and configuration") from None
        self.start_semi_phase(f"started from {path}")

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabelled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabelled._finish()

    # --- the phases ---------------------------------------------------------------------------------------------
    def warm_start_over(self) -> str | None:
        """Why the warm start ends now (checked at each epoch start), or None while it goes on."""
        dice = self.logger.local_logger.my_fantastic_logging["labelled_dice"]
        if self.warm_start_iterations is not None and self.semi_iterations >= self.warm_start_iterations:
            return f"{self.semi_iterations} warm-start iterations"
        if self.warm_start_dice is not None and dice and dice[-1] >= self.warm_start_dice:
            return f"labelled training Dice {dice[-1]:.3f} >= {self.warm_start_dice}"
        if self.schedule_epoch() >= self.warm_start_fraction * self.num_epochs:
            return f"{self.warm_start_fraction:g} of the training spent"
        return None

    def start_semi_phase(self, reason: str) -> None:
        self.teacher.load_state_dict(self.plain_network().state_dict())
        self.semi_started_at = self.schedule_epoch()
        self.print_to_log_file(f"semi phase from epoch {self.current_epoch} ({self.semi_iterations} iterations): "
                               f"{reason}; the teacher is a copy of the student")

    def on_train_epoch_start(self) -> None:
        if self.semi_started_at is None:
            reason = self.warm_start_over()
            if self.is_ddp:  # every rank ends the warm start together
                flag = torch.tensor(float(reason is not None), device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                reason = reason or ("another rank's criterion" if flag.item() else None)
            if reason:
                self.start_semi_phase(reason)
        super().on_train_epoch_start()

    def current_unlabelled_weight(self) -> float:
        phase = max(self.num_epochs - self.semi_started_at, 1e-8)
        return self.unlabelled_weight * sigmoid_rampup(self.schedule_epoch() - self.semi_started_at,
                                                       self.unlabelled_rampup * phase)

    # --- the step -----------------------------------------------------------------------------------------------
    def precision(self):
        """nnU-Net's CUDA autocast, as its supervised step uses it (bf16 is the network's own, when on)."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in batch["target"]]
        self.optimizer.zero_grad(set_to_none=True)
        mask = box_mask(tuple(data.shape), self.box_fraction, device=self.device)
        nan = np.float64("nan")
        record = {"labelled_dice": nan, "pseudo_share": nan, "unlabelled_weight": np.float64(0.0),
                  "pseudo_share_per_class": np.full(len(self.label_manager.foreground_labels), nan)}
        if self.semi_started_at is None:  # copy-paste between labelled patches: each into the next one's box
            with self.precision():
                output = self.network(mix(data, data.roll(1, 0), mask))
                mixed = [mix(t, t.roll(1, 0), mask) for t in target]
                loss_l = self.loss(output, mixed)
            loss_u, weight = torch.zeros((), device=self.device), 0.0
            record["labelled_dice"] = np.float64(foreground_dice(
                output[0] if isinstance(output, (list, tuple)) else output, mixed[0],
                list(self.label_manager.foreground_labels)))
        else:
            unlabelled = next(self.dataloader_unlabelled)["data"].to(self.device, non_blocking=True)
            with torch.no_grad(), self.precision():
                logits = self.teacher(unlabelled)
            pseudo, confident = pseudo_labels(logits[0] if isinstance(logits, (list, tuple)) else logits,
                                              self.pseudo_label_confidence, self.class_quantile,
                                              self.largest_component)
            # sample i: the unlabelled patch i // 2, with the labelled one inside the box (even i) or around it
            pair = torch.arange(data.shape[0], device=self.device) // 2
            inside = (torch.arange(data.shape[0], device=self.device) + self.semi_iterations) % 2 == 0
            shows_labelled = torch.where(inside.view(-1, *[1] * (mask.dim() - 1)), mask, 1 - mask)
            parts = [mixed_targets(t, pseudo[pair], confident[pair], shows_labelled, self.ignore_value, True)
                     for t in target]
            with self.precision():
                output = self.network(mix(data, unlabelled[pair], shows_labelled))
                loss_l = self.masked_loss(output, [p[0] for p in parts])
                loss_u = self.masked_loss(output, [p[1] for p in parts])
            weight = self.current_unlabelled_weight()
            shown = (1 - shows_labelled).sum().clamp(min=1)
            record.update(pseudo_share=np.float64(((parts[0][1] != self.ignore_value).sum() / shown).item()),
                          unlabelled_weight=np.float64(weight),
                          pseudo_share_per_class=np.array([
                              confident[pseudo == c].float().mean().item() if (pseudo == c).any() else nan
                              for c in self.label_manager.foreground_labels]))
        loss = loss_l + weight * loss_u
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
        self.semi_iterations += 1
        if self.semi_started_at is not None:
            ema_update(self.teacher, self.plain_network(), self.ema_momentum)
        return {"loss": loss.detach().cpu().numpy(), "loss_labelled": loss_l.detach().cpu().numpy(),
                "loss_unlabelled": loss_u.detach().cpu().numpy(), **record}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        values = {k: float(np.nanmean([o[k] for o in train_outputs])) if any(np.isfinite(o[k]) for o in train_outputs)
                  else float("nan") for k in SEMI_LOG_KEYS if k != "pseudo_share_per_class"}
        stacked = np.stack([o["pseudo_share_per_class"] for o in train_outputs])
        per_class = [float(np.nanmean(c)) if np.isfinite(c).any() else float("nan") for c in stacked.T]
        for key, value in {**values, "pseudo_share_per_class": per_class}.items():
            self.logger.log(key, value, self.current_epoch)
        self.print_to_log_file(" ".join(f"{k} {v:.4f}" for k, v in values.items())
                               + " pseudo_share_per_class " + " ".join(f"{v:.3f}" for v in per_class))

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.local_rank == 0:
            names = {v: k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
            plot_semi_progress(self.logger.local_logger.my_fantastic_logging, Path(self.output_folder),
                               [names.get(c, f"class {c}") for c in self.label_manager.foreground_labels])

    # --- the teacher in the checkpoint --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "teacher_weights": self.teacher.state_dict(),
                "semi_started_at": self.semi_started_at, "semi_iterations": self.semi_iterations}

    def restore_checkpoint_state(self, checkpoint: dict) -> None:
        super().restore_checkpoint_state(checkpoint)
        if "teacher_weights" not in checkpoint:
            raise InputError(f"this checkpoint of {checkpoint.get('trainer_name')} holds no teacher, so the "
                             f"semi-supervised run cannot continue from it (--c). Start the run again without --c, "
                             f"or start its semi phase from this model with {SEMI_ENV}=start_from=<checkpoint>")
        self.teacher.load_state_dict(checkpoint["teacher_weights"])
        self.semi_started_at = checkpoint.get("semi_started_at")
        self.semi_iterations = int(checkpoint.get("semi_iterations", 0))


def plot_semi_progress(log: dict, folder: Path, class_names: list[str] = ()) -> plt.Figure:
    """``progress_semi.png``: the loss terms, the labelled and validation Dice, and the confident share of the
    pseudo-labels, overall and per class (named by ``class_names``, in the order of the log's per-class shares).
    Returns the closed figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunetv2_xlstm.atomic import atomic_write

    with plt.style.context("default"):  # not nnU-Net's seaborn style, whose large fonts clip these labels
        fig, (ax, dice, share) = plt.subplots(1, 3, figsize=(14, 3.5))
        semi = np.isfinite(np.array(log.get("pseudo_share", []), dtype=float))  # no unlabelled term before it
        ax.plot(log.get("train_losses", []), label="train_losses")
        ax.plot(log.get("loss_labelled", []), label="loss_labelled")
        ax.plot([v if on else np.nan for v, on in zip(log.get("loss_unlabelled", []), semi)], label="loss_unlabelled")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        dice.plot(log.get("labelled_dice", []), color="C2", label="labelled training patches (warm start)")
        dice.plot(log.get("ema_fg_dice", []), color="C0", label="nnU-Net's pseudo Dice (validation)")
        dice.set_ylim(0, 1.02)
        dice.set_xlabel("epoch")
        dice.set_ylabel("Dice")
        dice.legend(fontsize=8)
        share.plot(log.get("pseudo_share", []), color="k", label="all")
        per_class = np.array(log.get("pseudo_share_per_class", []), dtype=float)
        for c in range(per_class.shape[1] if per_class.ndim == 2 else 0):
            share.plot(per_class[:, c], label=class_names[c] if c < len(class_names) else f"class {c + 1}", alpha=0.7)
        share.set_ylim(0, 1.02)
        share.set_xlabel("epoch")
        share.set_ylabel("confident share")
        share.legend(fontsize=8)
        for a in (ax, dice, share):
            a.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(folder / "progress_semi.png", lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)
    return fig


class nnUNetTrainerXLSTMSemi(SemiSupervision, nnUNetTrainerXLSTMScratch):
    pass


class nnUNetTrainerXLSTMPretrainedSemi(SemiSupervision, nnUNetTrainerXLSTMPretrained):
    pass


class nnUNetTrainerXLSTMPretrainedDecoderSemi(SemiSupervision, nnUNetTrainerXLSTMPretrainedDecoder):
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


class nnUNetTrainerXLSTMPretrainedDecoderSemi_smoke(nnUNetTrainerXLSTMPretrainedDecoderSemi):
    schedule = SMOKE


class nnUNetTrainerXLSTMPretrainedDecoderSemi_cpu(nnUNetTrainerXLSTMPretrainedDecoderSemi):
    schedule = CPU


class nnUNetTrainerXLSTMPretrainedDecoderSemi_cpulong(nnUNetTrainerXLSTMPretrainedDecoderSemi):
    schedule = CPU_LONG


class nnUNetTrainerXLSTMPretrainedDecoderSemi_gpu15min(nnUNetTrainerXLSTMPretrainedDecoderSemi):
    schedule = GPU15MIN


__all__ = ["nnUNetTrainerXLSTMSemi", "nnUNetTrainerXLSTMPretrainedSemi", "nnUNetTrainerXLSTMSemi_smoke",
           "nnUNetTrainerXLSTMSemi_cpu", "nnUNetTrainerXLSTMSemi_cpulong", "nnUNetTrainerXLSTMPretrainedSemi_smoke",
           "nnUNetTrainerXLSTMPretrainedSemi_cpu", "nnUNetTrainerXLSTMPretrainedSemi_cpulong",
           "nnUNetTrainerXLSTMSemi_gpu15min", "nnUNetTrainerXLSTMPretrainedSemi_gpu15min",
           "nnUNetTrainerXLSTMPretrainedDecoderSemi", "nnUNetTrainerXLSTMPretrainedDecoderSemi_smoke",
           "nnUNetTrainerXLSTMPretrainedDecoderSemi_cpu", "nnUNetTrainerXLSTMPretrainedDecoderSemi_cpulong",
           "nnUNetTrainerXLSTMPretrainedDecoderSemi_gpu15min"]
