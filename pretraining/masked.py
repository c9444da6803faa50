"""The masked-distillation pretraining loop: an EMA teacher sees a crop whole, the student sees it with blocks masked,
regresses the teacher's features of the deepest stages at the masked positions and reconstructs the masked voxels.

Method (sources in docs/explanation.md): dense regression to an EMA teacher's instance-normalised features (data2vec
2.0, Baevski et al. 2023; I-JEPA, Assran et al. 2023) with a light predictor per stage, plus masked image modelling
through the U-Net decoder (MAE, He et al. 2022; nnssl's sparse MAE for 3D CNNs, Wald et al. 2025). Neither term uses
batch statistics, so it works at the batch of 4 a CPU or a small GPU affords, where DINO's centring does not.
"""

from __future__ import annotations

import time
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nnunetv2_xlstm.checkpoints import save_exported_encoder
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.precision import bf16_autocast, bf16_decision
from nnunetv2_xlstm_pretraining import distributed as D
from nnunetv2_xlstm_pretraining.config import PretrainConfig
from nnunetv2_xlstm_pretraining.distillation_loss import masked_distillation_loss, normalise_target
from nnunetv2_xlstm_pretraining.guards import collapse_warnings, guard_metrics
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.plot import plot_masked_history
from nnunetv2_xlstm_pretraining.reconstruction_loss import masked_reconstruction_loss
from nnunetv2_xlstm_pretraining.views import MaskedViewDataset, expand_mask


def predictor(channels: int) -> nn.Sequential:
    """Two 3x3x3 conv-IN-GELU blocks and a 1x1x1 projection: maps a student stage onto the teacher's targets."""
    block = lambda: [nn.Conv3d(channels, channels, 3, padding=1), nn.InstanceNorm3d(channels, affine=True), nn.GELU()]
    return nn.Sequential(*block(), *block(), nn.Conv3d(channels, channels, 1))


class MaskedDistillationNet(nn.Module):
    """The whole XLSTMUNet (one output channel: the reconstruction) and one predictor per target stage.

    The predictors exist only in pretraining; the export holds the network's encoder (and decoder)."""

    def __init__(self, arch_kwargs: dict, target_stages: int) -> None:
        super().__init__()
        self.net = build_xlstm_unet(arch_kwargs, num_classes=1)
        self.target_stages = target_stages
        self.predictors = nn.ModuleList(predictor(c) for c in self.net.encoder.output_channels[-target_stages:])

    def forward(self, masked: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Student: predictions for the deepest ``target_stages`` stages, and the reconstruction ``(B, 1, *crop)``."""
        skips = self.net.encoder(masked)
        predictions = [p(s) for p, s in zip(self.predictors, skips[-self.target_stages:])]
        return predictions, self.net.decoder(skips)

    @torch.no_grad()
    def targets(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Teacher: the deepest ``target_stages`` stage outputs of the whole crop, instance-normalised."""
        return [normalise_target(s) for s in self.net.encoder(image)[-self.target_stages:]]

    def export_weights(self, decoder: bool) -> dict[str, torch.Tensor]:
        """The network's encoder (``encoder.*``) and, with ``decoder``, its decoder without the reconstruction head
        and without the decoder's alias of the encoder (``decoder.*``), under XLSTMUNet's key names."""
        keep = lambda k: k.startswith("encoder.") or (
            decoder and k.startswith("decoder.") and not k.startswith(("decoder.encoder.", "decoder.seg_layers.")))
        return {k: v.detach() for k, v in self.net.state_dict().items() if keep(k)}


def pretrain_masked(config: PretrainConfig, output: Path, resume: bool, progress: bool) -> dict:
    """Masked distillation; see :func:`nnunetv2_xlstm_pretraining.train.pretrain` for the contract."""
    from nnunetv2_xlstm_pretraining import train as T  # the shared set-up, checkpointing and export

    # --- setup: device, processes, output folder, config, data ------------------------------------------------
    device, plan, checkpoint, log = T.setup_run(config, output, resume)
    rank, world = D.rank(), D.world_size()
    pool = T.load_logged_pool(config, progress and rank == 0)

    # --- student (network + predictors), teacher (EMA of all of it, no gradient), optimiser --------------------
    torch.manual_seed(config.seed)
    student = MaskedDistillationNet(plan["architecture_plans"]["arch_kwargs"], config.target_stages).to(device)
    teacher = deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(T.param_groups(student, config.weight_decay), lr=config.lr)
    history: dict[str, list[float]] = {}
    start = 0
    if checkpoint is not None:
        student.load_state_dict(checkpoint["student"])
        teacher.load_state_dict(checkpoint["teacher"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng_torch"])
        history, start = checkpoint["history"], checkpoint["step"]
        log.info(f"resumed from {output / T.LATEST} at step {start}")
    # the decoder's deep-supervision heads of the coarser stages are built but unused (one reconstruction output)
    student_ddp = DistributedDataParallel(student, find_unused_parameters=True) if world > 1 else student
    loader = torch.utils.data.DataLoader(
        MaskedViewDataset(pool, config, rank), batch_size=None, sampler=range(start, config.steps),
        num_workers=config.num_workers, prefetch_factor=4 if config.num_workers else None,
        pin_memory=device.type == "cuda")
    autocast = bf16_autocast(device)
    log.info(f"precision: {bf16_decision(device.type)[1]}; mLSTM kernels in fp32 on a CPU")
    probe = T.start_probe(config, plan, output, device)

    def save(step: int) -> None:
        T.save_checkpoint(output, config, step, {
            "student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(), "history": history, "adaptation_plan": plan})

    # --- the loop ----------------------------------------------------------------------------------------------
    bar = tqdm(total=config.steps, initial=start, desc="pretraining", disable=not progress or rank != 0)
    t_step = time.perf_counter()
    alarms = 0
    for step, (views, masks, _) in zip(range(start, config.steps), loader):
        t_data = time.perf_counter() - t_step
        for group in optimizer.param_groups:
            group["lr"] = T.lr_at(step, config)
        views, masks = views.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        hidden = expand_mask(masks, views.shape[2:])  # 1 on the voxels the student does not see
        with autocast:
            targets = teacher.targets(views)
            predictions, reconstruction = student_ddp(views * (1 - hidden))
            stage_masks = [expand_mask(masks, t.shape[2:]) for t in targets]
            distillation = sum(masked_distillation_loss(p, t, m, config.distill_beta)
                               for p, t, m in zip(predictions, targets, stage_masks)) / len(targets)
            reconstruction_loss = masked_reconstruction_loss(reconstruction, views, hidden)
            loss = distillation + config.reconstruction_weight * reconstruction_loss
        grad_norm, momentum = T.update(loss, optimizer, student, teacher, step, config)

        t_total = time.perf_counter() - t_step
        t_step = time.perf_counter()
        guards = guard_metrics(targets, predictions)
        metrics = {"loss": D.all_reduce_mean(loss.detach()).item(),
                   "distillation": D.all_reduce_mean(distillation.detach()).item(),
                   "reconstruction": D.all_reduce_mean(reconstruction_loss.detach()).item(),
                   "lr": T.lr_at(step, config), "teacher_momentum": momentum, "grad_norm": float(grad_norm),
                   "masked_share": masks.float().mean().item(), **guards,
                   "crops_per_s": world * len(views) / t_total, "data_wait_fraction": t_data / t_total}
        done = step + 1
        T.record_step(history, metrics, bar, done, config, rec=f"{metrics['reconstruction']:.3f}")
        warnings = collapse_warnings(guards)
        alarms = alarms + 1 if warnings else 0
        if rank == 0:
            if alarms == config.log_every:  # warn once per stretch of log_every steps in a row
                log.warning(f"step {done}: collapse guards fired for {alarms} steps: " + "; ".join(warnings))
            if T.due(done, config.plot_every, config):
                plot_masked_history(history, output / "progress.png")
        # the guards are computed per process: stop every process together, rank 0 saving, or torchrun would hang
        if config.collapse_stop and D.any_rank(alarms >= config.log_every):
            if rank == 0:
                save(done)
            raise InputError(f"pretraining stopped at step {done}: collapse ({'; '.join(warnings)}); see "
                             f"{output / 'progress.png'}. Lower lr, raise teacher_momentum or reconstruction_weight, "
                             f"or set collapse_stop=false to go on")
        if rank == 0 and T.due(done, config.save_every, config):
            save(done)
        T.probe_step(probe, config, done, lambda: teacher.export_weights(config.export_decoder), plan, output)
    bar.close()

    if rank == 0:
        save_exported_encoder(output / T.EXPORT, teacher.export_weights(config.export_decoder), plan)
        log.info(f"exported the teacher's encoder{' and decoder' if config.export_decoder else ''} to "
                 f"{output / T.EXPORT}")
    return {"export": output / T.EXPORT, "history": history, "teacher": teacher.state_dict()}
