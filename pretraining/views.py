"""Augmented 3D views with batchgeneratorsv2, as datasets whose item ``s`` is the batch of step ``s``: one crop and its
block mask per volume (masked distillation, the default), or DINO's multi-crop views.

Every random draw of a batch is seeded by ``(seed, rank, step)``, so a batch does not depend on which worker made it
or on what came before: ``--resume`` replays exactly the same data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from torch.nn import functional as F

from nnunetv2_xlstm_pretraining.config import PretrainConfig, mask_range
from nnunetv2_xlstm_pretraining.data import Volume, sample_anchor, sample_crop_box, sample_volume
from nnunetv2_xlstm_pretraining.geometry import architecture, total_strides


ANISOTROPY = 3.0  # nnU-Net's threshold: a coarsest axis this many times the finest is treated slice by slice


class InPlaneAngle:
    """A rotation angle about the first (slice) axis only, as nnU-Net augments anisotropic data in plane."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, image: torch.Tensor, dim: int) -> float:
        return float(np.random.uniform(self.low, self.high)) if dim == 0 else 0.0


def is_anisotropic(spacing: list[float]) -> bool:
    return max(spacing) / min(spacing) >= ANISOTROPY


def view_augmentation(view_shape: list[int], strong: bool, in_plane: bool = False) -> ComposeTransforms:
    """Spatial (rotation, scaling), intensity (brightness, contrast, gamma), noise, blur and mirroring.

    ``strong`` (DINO's asymmetric views: local crops and the second global crop) raises the blur and noise odds.
    ``in_plane`` rotates about the slice axis only (anisotropic grids).
    """
    p_blur, p_noise = (0.5, 0.3) if strong else (0.1, 0.1)
    rotation = InPlaneAngle(-0.52, 0.52) if in_plane else (-0.52, 0.52)
    return ComposeTransforms([
        SpatialTransform(view_shape, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=0.3, rotation=rotation, p_scaling=0.3, scaling=(0.8, 1.25),
                         p_synchronize_scaling_across_axes=1),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True),
                        apply_probability=p_noise),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.5), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=1), apply_probability=p_blur),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.7, 1.3)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.5),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.7, 1.3)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.5),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
        MirrorTransform(allowed_axes=(0, 1, 2)),
    ])


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one step's batch on one process: independent of workers and of what came before."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global RNGs (which batchgeneratorsv2 uses) inside the block, restore them after."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            np.random.set_state(state)


def extract_view(volume: Volume, start: np.ndarray, size: np.ndarray, shape: list[int]) -> torch.Tensor:
    """The box ``start:start+size`` of ``volume``, resampled (trilinear) to ``shape``: ``(1, *shape)`` float32."""
    box = volume.image[tuple(slice(s, s + n) for s, n in zip(start, size))]
    view = torch.from_numpy(np.ascontiguousarray(box))[None, None]
    return F.interpolate(view, size=tuple(shape), mode="trilinear", align_corners=False)[0]


def token_grid(config: PretrainConfig) -> list[int]:
    """The bottleneck token grid of a global view: crop voxels divided by the encoder's total stride per axis."""
    return [v // s for v, s in zip(config.global_crop_voxels, total_strides(architecture(config)))]


class MultiCropDataset(torch.utils.data.Dataset):
    """Item ``step``: ``(global_views (B, 2, 1, *G), local_views (B, L, 1, *l), token_masks (B, 2, T) bool,
    modalities list[str])``. Each global view's bottleneck tokens are masked (iBOT) with probability 0.5, at
    ``ibot_mask_ratio``; all False unless ``ibot`` is on."""

    def __init__(self, pool: list[Volume], config: PretrainConfig, rank: int = 0) -> None:
        self.pool, self.config, self.rank = pool, config, rank
        self.spacing = np.asarray(config.target_spacing)
        self.grid = token_grid(config)
        self.global_aug = view_augmentation(config.global_crop_voxels, strong=False)
        self.strong_global_aug = view_augmentation(config.global_crop_voxels, strong=True)
        self.local_aug = view_augmentation(config.local_crop_voxels, strong=True)

    def __len__(self) -> int:
        return self.config.steps

    def views(self, volume: Volume, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """2 global views within a quarter, local views within half a global crop of one anchor in the body."""
        c = self.config
        crop_mm = np.asarray(c.global_crop_mm)
        anchor = sample_anchor(volume, rng, c.foreground_fraction)
        globals_, locals_ = [], []
        for i in range(2):
            start, size = sample_crop_box(volume, rng, crop_mm, tuple(c.global_scale), self.spacing, anchor,
                                          0.25 * crop_mm.min())
            aug = self.global_aug if i == 0 else self.strong_global_aug
            globals_.append(aug(image=extract_view(volume, start, size, c.global_crop_voxels))["image"])
        for _ in range(c.num_local_crops):
            start, size = sample_crop_box(volume, rng, crop_mm, tuple(c.local_scale), self.spacing, anchor,
                                          0.5 * crop_mm.min())
            locals_.append(self.local_aug(image=extract_view(volume, start, size, c.local_crop_voxels))["image"])
        empty = torch.zeros(0, 1, *c.local_crop_voxels)
        return torch.stack(globals_), torch.stack(locals_) if locals_ else empty

    def token_masks(self, rng: np.random.Generator) -> torch.Tensor:
        n_tokens = int(np.prod(self.grid))
        masks = np.zeros((2, n_tokens), bool)
        for m in masks:
            if self.config.ibot and rng.random() < 0.5:
                m[rng.choice(n_tokens, max(1, round(self.config.ibot_mask_ratio * n_tokens)), replace=False)] = True
        return torch.from_numpy(masks)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        seed = step_seed(self.config.seed, self.rank, step)
        rng = np.random.default_rng(seed)
        g, l, masks, modalities = [], [], [], []
        with seeded(seed):
            for _ in range(self.config.batch_size):
                volume = sample_volume(self.pool, rng, self.config.ct_fraction)
                gv, lv = self.views(volume, rng)
                g.append(gv)
                l.append(lv)
                masks.append(self.token_masks(rng))
                modalities.append(volume.modality)
        return torch.stack(g), torch.stack(l), torch.stack(masks), modalities


def block_mask(grid: list[int], ratio: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A boolean mask over the bottleneck ``grid`` with ``round(r * cells)`` cells set (at least 1, at most all but
    1), ``r`` uniform in ``ratio``: each cell is a block of the crop of the encoder's total stride per axis."""
    cells = int(np.prod(grid))
    count = min(max(1, round(rng.uniform(*ratio) * cells)), cells - 1)
    mask = np.zeros(cells, bool)
    mask[rng.choice(cells, count, replace=False)] = True
    return mask.reshape(grid)


def expand_mask(mask: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``(B, *grid)`` bool -> ``(B, 1, *size)`` float, each cell repeated over its block (nearest upsampling)."""
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")


class MaskedViewDataset(torch.utils.data.Dataset):
    """Item ``step``: ``(views (B, 1, *G), masks (B, *grid) bool, modalities list[str])``: one augmented crop per
    volume (``global_crop_mm`` x ``global_scale`` resampled to ``global_crop_voxels``) and its block mask. Teacher
    and student get the same crop; the student's copy is masked. Seeded per step as :class:`MultiCropDataset`."""

    def __init__(self, pool: list[Volume], config: PretrainConfig, rank: int = 0) -> None:
        self.pool, self.config, self.rank = pool, config, rank
        self.spacing = np.asarray(config.target_spacing)
        self.grid = token_grid(config)
        self.augment = view_augmentation(config.global_crop_voxels, strong=False,
                                         in_plane=is_anisotropic(config.target_spacing))

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        c = self.config
        seed = step_seed(c.seed, self.rank, step)
        rng = np.random.default_rng(seed)
        crop_mm = np.asarray(c.global_crop_mm)
        views, masks, modalities = [], [], []
        with seeded(seed):
            for _ in range(c.batch_size):
                volume = sample_volume(self.pool, rng, c.ct_fraction)
                anchor = sample_anchor(volume, rng, c.foreground_fraction)
                start, size = sample_crop_box(volume, rng, crop_mm, tuple(c.global_scale), self.spacing, anchor,
                                              0.25 * crop_mm.min())
                views.append(self.augment(image=extract_view(volume, start, size, c.global_crop_voxels))["image"])
                masks.append(torch.from_numpy(block_mask(self.grid, mask_range(c), rng)))
                modalities.append(volume.modality)
        return torch.stack(views), torch.stack(masks), modalities
