"""Collapse guards for masked distillation: signals that the teacher's targets or the student's predictions have
stopped carrying information, with thresholds after data2vec 2.0's (fairseq aborts below a target variance of 0.1
or a prediction variance of 0.01)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

MIN_TARGET_VAR = 0.1  # instance-normalised targets have variance 1 per channel unless channels are constant
MIN_PREDICTION_VAR = 0.01
MAX_CROSS_VOLUME_COSINE = 0.95  # the targets of different volumes are (nearly) the same map


@torch.no_grad()
def guard_metrics(targets: list[torch.Tensor], predictions: list[torch.Tensor]) -> dict[str, float]:
    """Per target stage ``k``: ``target_var_k`` (variance over space, mean over samples and channels),
    ``prediction_var_k`` (the same of the predictions) and ``cross_cosine_k`` (mean cosine similarity between the
    flattened targets of different samples of the batch; NaN with one sample)."""
    out = {}
    for k, (t, p) in enumerate(zip(targets, predictions)):
        out[f"target_var_{k}"] = t.float().flatten(2).var(-1).mean().item()
        out[f"prediction_var_{k}"] = p.float().flatten(2).var(-1).mean().item()
        flat = F.normalize(t.float().flatten(1), dim=1)
        n = len(flat)
        cosine = (flat @ flat.T).masked_select(~torch.eye(n, dtype=torch.bool, device=flat.device))
        out[f"cross_cosine_{k}"] = cosine.mean().item() if n > 1 else float("nan")
    return out


def collapse_warnings(metrics: dict[str, float]) -> list[str]:
    """What in ``metrics`` (from :func:`guard_metrics`) signals collapse, one line each; empty if nothing does."""
    out = []
    for key, value in metrics.items():
        if key.startswith("target_var_") and value < MIN_TARGET_VAR:
            out.append(f"{key} {value:.3g} < {MIN_TARGET_VAR}: the teacher's features are constant over space")
        elif key.startswith("prediction_var_") and value < MIN_PREDICTION_VAR:
            out.append(f"{key} {value:.3g} < {MIN_PREDICTION_VAR}: the student predicts a constant")
        elif key.startswith("cross_cosine_") and value > MAX_CROSS_VOLUME_COSINE:
            out.append(f"{key} {value:.3g} > {MAX_CROSS_VOLUME_COSINE}: different volumes give the same targets")
    return out
