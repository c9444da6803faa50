"""Masked image modelling (MAE / nnssl's sparse MAE): mean squared error of the reconstruction on masked voxels."""

from __future__ import annotations

import torch


def masked_reconstruction_loss(reconstruction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(reconstruction - image) ** 2`` over the voxels where ``mask`` (all ``(B, 1, *spatial)``; the image
    already normalised per volume). Zero if nothing is masked."""
    return ((reconstruction.float() - image) ** 2 * mask).sum() / mask.sum().clamp_min(1)
