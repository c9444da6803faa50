"""Pretraining of the XLSTMUNet encoder with an EMA teacher on CT and MRI crops: the shared set-up, checkpointing and
export, and the DINO loop (``objective: dino``). The default objective's loop is in
:mod:`nnunetv2_xlstm_pretraining.masked`."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nnunetv2_xlstm.atomic import atomic_write_text
from nnunetv2_xlstm.checkpoints import atomic_torch_save, safe_load, save_exported_encoder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.precision import bf16_autocast, bf16_decision
from nnunetv2_xlstm_pretraining import distributed as D
from nnunetv2_xlstm_pretraining.config import PretrainConfig, merge_dicts, config_to_dict, mask_range
from nnunetv2_xlstm.leakage import check_no_leak, pool_record
from nnunetv2_xlstm_pretraining.data import load_pool, pool_files
from nnunetv2_xlstm_pretraining.geometry import architecture, plans_geometry
from nnunetv2_xlstm.ema import ema_update, teacher_momentum
from nnunetv2_xlstm_pretraining.ibot_loss import IBOTPatchLoss
from nnunetv2_xlstm_pretraining.koleo_loss import koleo_loss
from nnunetv2_xlstm_pretraining.loss import DINOLoss
from nnunetv2_xlstm_pretraining.model import (
    ARCH_CLASS_NAME,
    ARCH_KWARGS_REQUIRING_IMPORT,
    StudentTeacherNet,
)
from nnunetv2_xlstm_pretraining.plot import plot_history
from nnunetv2_xlstm_pretraining.views import MultiCropDataset, token_grid

CHECKPOINT_FORMAT = "nnunetv2_xlstm.pretrain_checkpoint"
LATEST = "checkpoint_latest.pt"
EXPORT = "encoder_export.pt"
log = logging.getLogger("nnunetv2_xlstm_pretraining")


def adaptation_plan(config: PretrainConfig, pool: dict | None = None) -> dict:
    """What fine-tuning needs to rebuild and feed the encoder (nnssl's adaptation-plan layout); stored in every
    checkpoint and compared before a resumed run starts. ``pool``: the :func:`pool_record` of the images it saw."""
    geometry = plans_geometry(config)
    return {
        "architecture_plans": {"arch_class_name": ARCH_CLASS_NAME, "arch_kwargs": architecture(config),
                               "arch_kwargs_requiring_import": ARCH_KWARGS_REQUIRING_IMPORT},
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": list(config.global_crop_voxels),
        "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "pretrain_plan": {
            "target_spacing": list(config.target_spacing),
            "normalisation": {"CT (HU)": "CTNormalization: clip to the source's 0.5/99.5 foreground percentiles, "
                                         "z-score with its foreground mean/std",
                              "CT (not HU)": "ZScoreNormalization per volume", "MRI": "ZScoreNormalization per volume"},
            "modalities": sorted({s.modality for s in config.sources}),
            "config": config_to_dict(config),
            # the fine-tuning geometry pretraining ran in (None: isotropic): planning like the encoder adopts it
            "geometry": geometry.record() if geometry is not None else None,
            # every image of the pool (case ids, files, a hash): fine-tuning, the probe and the benchmark refuse to
            # score a patient pretraining has seen
            "pool": pool,
        },
    }


def lr_at(step: int, config: PretrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (DINO's ``get_params_groups``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def monitors(student_logits: torch.Tensor, teacher_logits: torch.Tensor, embeddings: torch.Tensor,
             loss_fn: DINOLoss, step: int) -> dict[str, float]:
    """Collapse monitors: teacher entropy (0: one-hot collapse, log D: uniform collapse), KL(teacher || student) on the
    global views, and the per-dimension std of L2-normalised embeddings (0: all embeddings equal)."""
    q = loss_fn.teacher_probs(teacher_logits, step)
    log_p = torch.log_softmax(student_logits[: len(q)].float() / loss_fn.student_temp, dim=-1)
    entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
    kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(-1).mean()
    emb_std = torch.nn.functional.normalize(embeddings.float(), dim=-1).std(dim=0).mean()
    return {k: D.all_reduce_mean(v).item() for k, v in
            {"teacher_entropy": entropy, "kl": kl, "embedding_std": emb_std}.items()}


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, student: nn.Module, teacher: nn.Module, step: int,
           config: PretrainConfig) -> tuple[float, float]:
    """One optimiser step of the student (gradients clipped at ``clip_grad``), then the EMA update of the teacher,
    whose buffers are averaged over processes; returns ``(gradient norm, teacher momentum)``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(student.parameters(), config.clip_grad)
    optimizer.step()
    momentum = teacher_momentum(step, config.steps, config.teacher_momentum, config.teacher_momentum_end)
    ema_update(teacher, student, momentum)
    D.average_buffers(teacher)  # running statistics come from each rank's own batch
    return float(grad_norm), momentum


def _setup_logging(output: Path) -> None:
    """Log to ``output/train.log`` (rank 0), and to no earlier run's log of the same process."""
    log.setLevel(logging.INFO)
    if D.rank() != 0:
        return
    path = (output / "train.log").resolve()
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename) == path:
            return
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)


def setup_run(config: PretrainConfig, output: Path, resume: bool) -> tuple[torch.device, dict, dict | None,
                                                                          logging.Logger]:
    """Device and processes, the output folder (refusing to overwrite a run unless resuming), the log, the config
    file and the adaptation plan; the checkpoint to resume from (checked against both) or None."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else
                          config.device)
    D.init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", D.rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    plan = adaptation_plan(config, pool_record([f for _, files in pool_files(config) for f in files]))  # sources checked
    try:
        output.mkdir(parents=True, exist_ok=True)
        if not os.access(output, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise InputError(f"cannot write the run folder {output}: {e.strerror or e}. Choose a writable --output") from None
    _setup_logging(output)
    checkpoint = safe_load(output / LATEST) if resume else None
    if resume:
        _check_resume(checkpoint, plan, config, output / LATEST)
    elif (output / LATEST).exists():
        raise InputError(f"{output} already holds a run ({LATEST}); pass --resume to continue it or choose another "
                         f"--output")
    if D.rank() == 0:
        for stale in output.glob(".checkpoint*"):  # temporary files of a write that a kill interrupted
            stale.unlink()
        for stale in output.glob(".progress*"):
            stale.unlink()
        atomic_write_text(output / "config.json", json.dumps(config_to_dict(config), indent=2))
    return device, plan, checkpoint, log


def start_probe(config: PretrainConfig, plan: dict, output: Path, device: torch.device):
    """The transfer probe of ``config.probe`` (:mod:`nnunetv2_xlstm_pretraining.probe`) on rank 0, its random-init
    baseline measured and logged; None when ``probe.every`` is 0."""
    if not config.probe.every or D.rank() != 0:
        return None
    from nnunetv2_xlstm_pretraining.probe import PretrainingProbe

    note = check_no_leak(plan, config.probe.val_patients, output / "config.json", "probe validation")
    if note:
        log.warning(note)
    probe = PretrainingProbe(config.probe, plan["architecture_plans"]["arch_kwargs"], output, device)
    log.info(f"probe: random init {probe.history['random']['mean']['mean']:.3f} mean Dice")
    return probe


def probe_step(probe, config: PretrainConfig, done: int, encoder, plan: dict, output: Path) -> None:
    """Probe the teacher's export weights (``encoder()``; with the decoder where the export carries one) every
    ``probe.every`` steps and at the last one."""
    if probe is not None and (done % config.probe.every == 0 or done == config.steps):
        save_exported_encoder(output / "probe_encoder.pt", encoder(), plan)
        dice = probe(done, output / "probe_encoder.pt")
        best = probe.history.get("best_step") == done
        log.info(f"step {done}: probe mean Dice {dice:.3f}" + (" (best so far: encoder_best_probe.pt)" if best else ""))


def due(done: int, every: int, config: PretrainConfig) -> bool:
    """Whether a periodic task (log, plot, save) runs after step ``done``: every ``every`` steps and at the end."""
    return done % every == 0 or done == config.steps


def record_step(history: dict[str, list[float]], metrics: dict[str, float], bar: tqdm, done: int,
                config: PretrainConfig, **postfix: str) -> None:
    """Append a step's metrics to ``history``, advance the progress bar (loss, ``postfix``, data wait) and log the
    metrics on rank 0 every ``log_every`` steps."""
    for k, v in metrics.items():
        history.setdefault(k, []).append(v)
    bar.update(1)
    bar.set_postfix(loss=f"{metrics['loss']:.3f}", **postfix, wait=f"{metrics['data_wait_fraction']:.0%}")
    if D.rank() == 0 and due(done, config.log_every, config):
        log.info(f"step {done}/{config.steps} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def load_logged_pool(config: PretrainConfig, progress: bool) -> list:
    """Every process loads the pool (its batches differ by rank); the pool's make-up goes to the log."""
    pool = load_pool(config, progress=progress)
    counts = {m: sum(v.modality == m for v in pool) for m in ("CT", "MRI")}
    log.info(f"pool: {len(pool)} volumes ({counts}), {sum(v.normalisation == 'ct_hu' for v in pool)} CT in HU")
    return pool


def save_checkpoint(output: Path, config: PretrainConfig, step: int, state: dict) -> None:
    """``checkpoint_step<step>.pt`` and ``checkpoint_latest.pt`` (atomic), keeping the newest ``keep_checkpoints``
    step files."""
    state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config_to_dict(config), **state}
    atomic_torch_save(state, output / f"checkpoint_step{step}.pt")
    atomic_torch_save(state, output / LATEST)
    steps = sorted(int(p.stem.removeprefix("checkpoint_step")) for p in output.glob("checkpoint_step*.pt")
                   if p.stem.removeprefix("checkpoint_step").isdigit())
    for old in steps[:-config.keep_checkpoints] if config.keep_checkpoints > 0 else steps:
        (output / f"checkpoint_step{old}.pt").unlink(missing_ok=True)


def _check_resume(checkpoint: dict, plan: dict, config: PretrainConfig, path: Path) -> None:
    """Refuse to resume from a file that is not ours, or that another config or adaptation plan wrote."""
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a pretraining checkpoint of this package (format {checkpoint.get('format')!r})")
    # settings added to the package after the checkpoint was written count as their defaults
    written = merge_dicts(config_to_dict(PretrainConfig()), checkpoint["config"])
    for what, old, new in (("config", written, config_to_dict(config)),
                           ("adaptation plan", _without_config(checkpoint["adaptation_plan"]), _without_config(plan))):
        if old != new:
            differ = ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
            raise InputError(f"{path} was written with a different {what} ({differ} differ); resume with the same "
                             f"config (see {path.parent / 'config.json'}) or start a new --output")


def _without_config(plan: dict) -> dict:
    """The adaptation plan without its copy of the config (compared on its own, with defaults for new settings)."""
    return {**plan, "pretrain_plan": {k: v for k, v in plan["pretrain_plan"].items() if k != "config"}}


def pretrain(config: PretrainConfig, output: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Pretrain, checkpoint into ``output`` and export the teacher's encoder to ``output/encoder_export.pt``.

    Returns ``{"export": path, "history": metrics per step, "center": DINO centre, "teacher": state_dict}``.
    Under torchrun every process runs this; rank 0 writes files. The objective ``masked_distillation`` runs
    :func:`nnunetv2_xlstm_pretraining.masked.pretrain_masked` (which returns no ``center``).
    """
    output = Path(output)
    if config.objective == "masked_distillation":
        from nnunetv2_xlstm_pretraining.masked import pretrain_masked

        return pretrain_masked(config, output, resume, progress)
    # --- setup: device, processes, output folder, config, data ------------------------------------------------
    device, plan, checkpoint, log = setup_run(config, output, resume)
    rank, world = D.rank(), D.world_size()
    pool = load_logged_pool(config, progress and rank == 0)

    # --- student, teacher (EMA of the student, no gradient), loss, optimiser -----------------------------------
    torch.manual_seed(config.seed)
    student = StudentTeacherNet(plan["architecture_plans"]["arch_kwargs"], config.out_dim, config.head_hidden_dim,
                                config.head_bottleneck_dim).to(device)
    teacher = deepcopy(student).requires_grad_(False)
    loss_fn = DINOLoss(config.out_dim, config.teacher_temp, config.warmup_teacher_temp,
                       config.warmup_teacher_temp_steps, config.student_temp, config.center_momentum,
                       config.centering).to(device)
    ibot_loss = IBOTPatchLoss(config.out_dim, config.teacher_temp, config.student_temp,
                              config.center_momentum).to(device) if config.ibot else None
    optimizer = torch.optim.AdamW(param_groups(student, config.weight_decay), lr=config.lr)
    history: dict[str, list[float]] = {}
    start = 0
    if checkpoint is not None:
        student.load_state_dict(checkpoint["student"])
        teacher.load_state_dict(checkpoint["teacher"])
        loss_fn.center.copy_(checkpoint["center"])
        if ibot_loss is not None:
            ibot_loss.center.copy_(checkpoint["ibot_center"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng_torch"])
        history, start = checkpoint["history"], checkpoint["step"]
        log.info(f"resumed from {output / LATEST} at step {start}")
    if world > 1 and device.type == "cuda":  # head batch statistics over all GPUs, as DINO (SyncBN needs CUDA)
        student, teacher = (nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (student, teacher))
    student_ddp = DistributedDataParallel(student) if world > 1 else student

    loader = torch.utils.data.DataLoader(
        MultiCropDataset(pool, config, rank), batch_size=None, sampler=range(start, config.steps),
        num_workers=config.num_workers, prefetch_factor=4 if config.num_workers else None,
        persistent_workers=False, pin_memory=device.type == "cuda")
    # DINO keeps fp32 on a CPU: its loss turned NaN within a few steps under CPU bf16 autocast (not on CUDA)
    autocast = bf16_autocast(device) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    log.info(f"precision: {bf16_decision(device.type)[1] if device.type == 'cuda' else 'fp32 (DINO on a CPU)'}")
    probe = start_probe(config, plan, output, device)

    def save(step: int) -> None:
        save_checkpoint(output, config, step, {
            "student": student.state_dict(), "teacher": teacher.state_dict(), "center": loss_fn.center.detach().cpu(),
            **({"ibot_center": ibot_loss.center.detach().cpu()} if ibot_loss is not None else {}),
            "optimizer": optimizer.state_dict(), "rng_torch": torch.get_rng_state(), "history": history,
            "adaptation_plan": plan})

    # --- the loop ----------------------------------------------------------------------------------------------
    bar = tqdm(total=config.steps, initial=start, desc="pretraining", disable=not progress or rank != 0)
    t_step = time.perf_counter()
    grid = token_grid(config)
    for step, (global_views, local_views, token_masks, _) in zip(range(start, config.steps), loader):
        t_data = time.perf_counter() - t_step
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        # view-major batches: all first global views, all second ones, then each local view
        globals_ = global_views.transpose(0, 1).flatten(0, 1).to(device, non_blocking=True)
        locals_ = local_views.transpose(0, 1).flatten(0, 1).to(device, non_blocking=True)
        with autocast:
            if ibot_loss is None:
                teacher_logits, _ = teacher(globals_)
                student_logits, embeddings = student_ddp(globals_, locals_)
                loss = loss_fn(student_logits, teacher_logits, step)
            else:  # the student sees its global views with the masked token cells blanked (0 = the z-score mean)
                masks = token_masks.transpose(0, 1).flatten(0, 1).to(device)
                blank = F.interpolate(masks.view(-1, 1, *grid).float(), size=globals_.shape[2:], mode="nearest")
                teacher_logits, _, teacher_tokens = teacher(globals_, tokens=True)
                student_logits, embeddings, student_tokens = student_ddp(globals_ * (1 - blank), locals_, tokens=True)
                loss = loss_fn(student_logits, teacher_logits, step) + config.ibot_weight * ibot_loss(
                    student_tokens, teacher_tokens, masks)
            if config.koleo_weight:  # per global view, as DINOv2
                loss = loss + config.koleo_weight * sum(
                    koleo_loss(e) for e in embeddings[: len(globals_)].chunk(2))
        grad_norm, momentum = update(loss, optimizer, student, teacher, step, config)

        t_total = time.perf_counter() - t_step
        t_step = time.perf_counter()
        metrics = {"loss": D.all_reduce_mean(loss.detach()).item(), "lr": lr_at(step, config),
                   "teacher_momentum": momentum, "grad_norm": float(grad_norm),
                   **monitors(student_logits, teacher_logits, embeddings, loss_fn, step),
                   "crops_per_s": world * len(global_views) * (2 + local_views.shape[1]) / t_total,
                   "data_wait_fraction": t_data / t_total}
        done = step + 1
        record_step(history, metrics, bar, done, config, H=f"{metrics['teacher_entropy']:.2f}")
        if rank == 0:
            if due(done, config.plot_every, config):
                plot_history(history, output / "progress.png", config.out_dim)
            if due(done, config.save_every, config):
                save(done)
        probe_step(probe, config, done, teacher.encoder_state_dict, plan, output)
    bar.close()

    if rank == 0:
        save_exported_encoder(output / EXPORT, teacher.encoder_state_dict(), plan)
        log.info(f"exported the teacher's encoder to {output / EXPORT}")
    return {"export": output / EXPORT, "history": history, "center": loss_fn.center.detach().cpu(),
            "teacher": teacher.state_dict()}


def export_checkpoint(output: str | Path) -> Path:
    """Export the teacher's encoder of ``output``'s latest checkpoint to ``output/encoder_export.pt``: the encoder of
    a run that was stopped early, at its last saved step (logged). Returns the export's path."""
    output = Path(output)
    checkpoint = safe_load(output / LATEST)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{output / LATEST} is not a pretraining checkpoint of this package")
    teacher = checkpoint["teacher"]
    if checkpoint["config"].get("objective", "dino") == "masked_distillation":  # keys net.encoder.*, net.decoder.*
        from nnunetv2_xlstm_pretraining.masked import MaskedDistillationNet

        net = MaskedDistillationNet(checkpoint["adaptation_plan"]["architecture_plans"]["arch_kwargs"],
                                    checkpoint["config"]["target_stages"])
        net.load_state_dict(teacher)
        weights = net.export_weights(checkpoint["config"].get("export_decoder", True))
    else:
        weights = {k: v for k, v in teacher.items() if k.startswith("encoder.")}
    save_exported_encoder(output / EXPORT, weights, checkpoint["adaptation_plan"])
    _setup_logging(output)
    log.info(f"exported the teacher's encoder of step {checkpoint['step']} (of {checkpoint['config']['steps']}) to "
             f"{output / EXPORT}")
    return output / EXPORT


def describe(config: PretrainConfig) -> str:
    """One line for logs: the run's objective and size."""
    if config.objective == "masked_distillation":
        low, high = mask_range(config)
        return (f"masked distillation: {config.steps} steps x {config.batch_size} crops {config.global_crop_voxels} "
                f"at {config.target_spacing} mm, {low:.0%}-{high:.0%} of the bottleneck masked, "
                f"{len(config.sources)} source(s)")
    return (f"DINO: {config.steps} steps x {config.batch_size} volumes x (2 global {config.global_crop_voxels} + "
            f"{config.num_local_crops} local {config.local_crop_voxels}) at {config.target_spacing} mm, "
            f"{len(config.sources)} source(s)")

