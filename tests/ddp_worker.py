"""Run by tests/test_pretraining_ddp.py under torchrun: a smoke pretraining; each rank saves what it ended with."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.train import pretrain

objective, out, *source_args = sys.argv[1:]
collapse_rank = os.environ.get("DDP_TEST_COLLAPSE_RANK")  # the guards fire on this rank only, from the first step
overrides = ["device=cpu", "steps=3", f"objective={objective}"]
if collapse_rank is not None:
    import nnunetv2_xlstm_pretraining.masked as masked

    overrides += ["collapse_stop=true", "log_every=1"]
    masked.collapse_warnings = lambda guards: ["forced"] if dist.get_rank() == int(collapse_rank) else []
config = load_config(preset="smoke", overrides=overrides,
                     sources=[SourceConfig(p, m) for p, m in (s.rsplit(":", 1) for s in source_args)])
try:
    result = pretrain(config, out, progress=False)
except InputError as e:
    (Path(out) / f"rank{dist.get_rank()}_stopped.txt").write_text(str(e))
    dist.destroy_process_group()
    sys.exit(0)
rank = dist.get_rank()
torch.save({"loss": result["history"]["loss"], "center": result.get("center"), "teacher": result["teacher"],
            "world": dist.get_world_size()}, Path(out) / f"rank{rank}.pt")
dist.destroy_process_group()
