"""Bidirectional copy-paste (BCP, Bai et al., CVPR 2023) and teacher pseudo-labels, for 2D and 3D patches.

Free of nnU-Net: tensors in, tensors out. A box mask ``M`` (1 inside one box per sample) mixes a labelled patch ``l``
and an unlabelled one ``u`` both ways:

    inward  = l * M + u * (1 - M)      (the labelled box pasted into the unlabelled patch)
    outward = u * M + l * (1 - M)      (the unlabelled box pasted into the labelled patch)

Labels follow the images: ground truth where the labelled patch shows, the teacher's pseudo-labels elsewhere. Every
target is built at each deep-supervision scale from the box mask downsampled (nearest) to that scale.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def box_mask(shape: tuple[int, ...], fraction: float = 2 / 3, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, 1, *spatial)`` float mask for ``shape = (B, C, *spatial)``: per sample, one box of ``fraction`` of each
    axis (at least 1 voxel), placed uniformly at random inside the patch."""
    b, _, *spatial = shape
    mask = torch.zeros(b, 1, *spatial, device=device)
    for i in range(b):
        box = []
        for n in spatial:
            size = max(1, round(fraction * n))
            start = int(torch.randint(0, n - size + 1, (1,), generator=generator))
            box.append(slice(start, start + size))
        mask[(i, 0, *box)] = 1
    return mask


def resize_mask(mask: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A 0/1 (or label) map ``(B, 1, *spatial)`` resized to ``size`` by nearest neighbour, as nnU-Net downsamples
    segmentations for deep supervision."""
    if tuple(mask.shape[2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=tuple(size), mode="nearest")


def mix(inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``inside`` where ``mask`` is 1, ``outside`` elsewhere (``mask`` resized to the tensors' grid)."""
    mask = resize_mask(mask, inside.shape[2:])
    return inside * mask + outside * (1 - mask)


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, threshold: float = 0.0, class_quantile: float | None = None,
                  largest_component: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (B, 1, *spatial) float, confident (B, 1, *spatial) bool)`` from a teacher's logits.

    ``labels`` is the argmax. A voxel is confident where its softmax probability reaches its class's threshold:
    ``threshold`` (0: every voxel), or with ``class_quantile`` the lower of ``threshold`` and that quantile of the
    probabilities of the voxels predicted as the class in the batch, so that a class the young teacher is unsure of
    keeps a share of its voxels instead of none. With ``largest_component``, only the largest connected component of
    each foreground class per sample stays confident (the other components are left out, not relabelled): a whole
    heart structure is one component.
    """
    probabilities = logits.float().softmax(1)
    confidence, labels = probabilities.max(1, keepdim=True)
    bar = torch.full_like(confidence, threshold)
    if class_quantile is not None:
        for c in labels.unique().tolist():
            of_class = labels == c
            relaxed = torch.quantile(confidence[of_class], class_quantile)
            bar[of_class] = torch.clamp(relaxed, max=threshold)
    confident = confidence >= bar
    if largest_component:
        confident &= largest_components(labels)
    return labels.float(), confident


def largest_components(labels: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *spatial)`` bool: background, and per sample the largest connected component (face connectivity) of
    each foreground class of the label map ``labels``."""
    from scipy import ndimage

    keep = (labels == 0).cpu().numpy()
    array = labels.cpu().numpy()
    for b in range(array.shape[0]):
        for c in np.unique(array[b]):
            if c == 0:
                continue
            components, n = ndimage.label(array[b, 0] == c)
            if n:
                sizes = np.bincount(components.ravel())[1:]
                keep[b, 0] |= components == 1 + int(sizes.argmax())
    return torch.from_numpy(keep).to(labels.device)


def mixed_targets(labelled: torch.Tensor, pseudo: torch.Tensor, confident: torch.Tensor, mask: torch.Tensor,
                  ignore: int, labelled_inside: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of a mixed patch at ``labelled``'s scale, as two label maps with ``ignore`` elsewhere:
    ``(ground truth where the labelled patch shows, confident pseudo-labels where the unlabelled one shows)``.
    ``labelled_inside``: the labelled patch fills the box (the inward mix) or surrounds it (the outward mix)."""
    size = labelled.shape[2:]
    box = resize_mask(mask, size) > 0.5
    shows_labelled = box if labelled_inside else ~box
    pseudo, confident = resize_mask(pseudo, size), resize_mask(confident.float(), size) > 0.5
    ground_truth = torch.where(shows_labelled, labelled, torch.full_like(labelled, ignore))
    teacher = torch.where(~shows_labelled & confident, pseudo, torch.full_like(pseudo, ignore))
    return ground_truth, teacher
