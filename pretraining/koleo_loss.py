"""KoLeo regulariser (Sablayrolles et al. 2019, as DINOv2 uses it): spreads embeddings over the sphere."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean_i log(min_{j != i} ||x_i - x_j||)`` of the L2-normalised rows of ``embeddings`` ``(B, D)``, B >= 2.

    Minimising it pushes every embedding away from its nearest neighbour in the batch, which counters collapse.
    """
    x = F.normalize(embeddings.float(), dim=-1, eps=eps)
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)  # never its own neighbour
    nearest = dots.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps).mean()
