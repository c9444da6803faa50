"""Run by tests/test_pretraining_ddp.py under torchrun: a smoke pretraining; each rank saves what it ended with."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.train import pretrain

objective, out, *source_args = sys.argv[1:]
config = load_config(preset="smoke", overrides=["device=cpu", "steps=3", f"objective={objective}"],
                     sources=[SourceConfig(p, m) for p, m in (s.rsplit(":", 1) for s in source_args)])
result = pretrain(config, out, progress=False)
rank = dist.get_rank()
torch.save({"loss": result["history"]["loss"], "center": result.get("center"), "teacher": result["teacher"],
            "world": dist.get_world_size()}, Path(out) / f"rank{rank}.pt")
dist.destroy_process_group()
