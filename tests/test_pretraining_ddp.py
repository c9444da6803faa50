"""The pretraining command under torchrun with 2 gloo processes on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun subprocesses

from test_pretraining import sources  # noqa: F401  (fixture)
from nnunetv2_xlstm_pretraining.config import SourceConfig


@pytest.mark.parametrize("objective", ["masked_distillation", "dino"])
def test_two_gloo_processes_agree(tmp_path: Path, sources: list[SourceConfig], objective: str) -> None:  # noqa: F811
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(worker), objective, str(out), *[f"{s.path}:{s.modality}" for s in sources]]
    subprocess.run(cmd, check=True, timeout=600)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["loss"] == r1["loss"]  # all-reduced
    if objective == "dino":
        assert torch.equal(r0["center"], r1["center"])  # centre from the all-reduced teacher mean
    assert r0["teacher"].keys() == r1["teacher"].keys()
    assert all(torch.equal(r0["teacher"][k], r1["teacher"][k]) for k in r0["teacher"])  # EMA of synced students
    assert (out / "encoder_export.pt").is_file() and (out / "checkpoint_latest.pt").is_file()


def test_collapse_stop_on_one_rank_stops_both(tmp_path: Path, sources: list[SourceConfig]) -> None:  # noqa: F811
    """The guards fire on rank 1 only: both processes stop at the same step (no hang), rank 0 alone saves."""
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(worker),
           "masked_distillation", str(out), *[f"{s.path}:{s.modality}" for s in sources]]
    done = subprocess.run(cmd, timeout=600, capture_output=True, text=True,
                          env={**os.environ, "DDP_TEST_COLLAPSE_RANK": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    stopped = [(out / f"rank{r}_stopped.txt").read_text() for r in (0, 1)]
    assert all("pretraining stopped at step 1: collapse" in s for s in stopped)
    assert torch.load(out / "checkpoint_latest.pt", weights_only=True)["step"] == 1
    assert not (out / "encoder_export.pt").exists()
