"""``nnunetv2_xlstm_probe``: how well a frozen encoder's features segment, against a random-init encoder of the same
architecture: the low-noise signal of whether pretraining works.

    nnunetv2_xlstm_probe --encoder runs/pre/encoder_export.pt -d 801 -p nnUNetPlans -c 3d_fullres \\
        --train_patients patient099 patient038 patient050 --val_patients patient002 patient019 ... --seeds 0 1 2

For each seed: the encoder (the export, and a random initialisation of its architecture drawn with that seed) runs
once over every case of nnU-Net's preprocessed data (padded to the encoder's total stride), frozen. A linear head, one
1x1x1 convolution per encoder stage whose logits are upsampled (trilinear) to full resolution and summed, is trained
on the labelled patients' cases for ``--steps`` steps (AdamW, cross-entropy + soft Dice, one case a step), then scores
Dice per structure on the development patients' cases at the preprocessed resolution. Deterministic per seed.
Reports mean ± sd over seeds and the paired difference to random init; writes ``probe.json`` and ``probe.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from nnunetv2_xlstm.atomic import atomic_write, atomic_write_text
from nnunetv2_xlstm.checkpoints import load_encoder_into, load_exported_encoder
from nnunetv2_xlstm.env import InputError, error_line, require_env
from nnunetv2_xlstm.leakage import check_no_leak
from nnunetv2_xlstm.precision import bf16_autocast, bf16_decision
from nnunetv2_xlstm.splits import DEFAULT_GROUP_PATTERN, group_patients
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet


@dataclass
class ProbeData:
    """Preprocessed images ``(C, *spatial)`` and labels ``(*spatial)`` of the labelled and development cases."""

    train: list[tuple[str, np.ndarray, np.ndarray]]
    val: list[tuple[str, np.ndarray, np.ndarray]]
    structures: dict[str, int]


def load_probe_data(dataset: str, plans: str, configuration: str, train_patients: list[str],
                    val_patients: list[str], group_pattern: str = DEFAULT_GROUP_PATTERN) -> ProbeData:
    """The preprocessed cases of the named patients from ``$nnUNet_preprocessed`` (run nnU-Net's preprocessing for
    ``plans``/``configuration`` first)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    root = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"]
    try:
        name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    except RuntimeError as e:
        raise InputError(f"data set {dataset}: {e}") from None
    plans_file = root / name / f"{plans}.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file} does not exist: plan and preprocess {name} first, or pass -p with the plans "
                         f"you preprocessed")
    plan = json.loads(plans_file.read_text())
    if configuration not in plan["configurations"]:
        raise InputError(f"{plans_file} has no configuration {configuration!r}; choose one of "
                         f"{', '.join(plan['configurations'])}")
    folder = root / name / plan["configurations"][configuration].get("data_identifier", f"{plans}_{configuration}")
    if not folder.is_dir():
        raise InputError(f"{folder} does not exist: run nnUNetv2_preprocess -d {dataset} -plans_name {plans} -c "
                         f"{configuration}")
    dataset_class = infer_dataset_class(str(folder))
    cases = dataset_class.get_identifiers(str(folder))
    patients = group_patients(cases, group_pattern)
    overlap = sorted(set(train_patients) & set(val_patients))
    unknown = sorted(set(train_patients + val_patients) - set(patients))
    if overlap or unknown or not train_patients or not val_patients:
        raise InputError("probe split: " + "; ".join(filter(None, [
            f"patients both labelled and development: {overlap}" if overlap else "",
            f"no preprocessed cases in {folder} for {unknown[:5]}" if unknown else "",
            "give at least one --train_patients and one --val_patients" if not (train_patients and val_patients)
            else ""])))
    data = dataset_class(str(folder))

    def load(names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        out = []
        for case in (c for p in names for c in patients[p]):
            image, seg, _, _ = data.load_case(case)
            out.append((case, np.asarray(image, dtype=np.float32), np.asarray(seg)[0]))
        return out

    dataset_json = json.loads((root / name / "dataset.json").read_text())
    structures = {k: v for k, v in dataset_json["labels"].items() if isinstance(v, int) and v > 0}
    return ProbeData(load(train_patients), load(val_patients), structures)


class LinearProbe(nn.Module):
    """One 1x1x1 convolution per encoder stage; the logits are upsampled to the input's size and summed."""

    def __init__(self, channels: list[int], classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv3d(c, classes, 1) for c in channels)

    def forward(self, features: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        return sum(F.interpolate(h(f), size=size, mode="trilinear", align_corners=False)
                   for h, f in zip(self.heads, features))


def _pad(image: np.ndarray, stride: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(1, C, *padded)`` with every axis padded (at its end) to a multiple of ``stride``; the original size."""
    size = image.shape[1:]
    pad = [(0, 0)] + [(0, -s % stride) for s in size]
    return torch.from_numpy(np.pad(image, pad))[None], tuple(size)


@torch.no_grad()
def encode(encoder: nn.Module, cases: list[tuple[str, np.ndarray, np.ndarray]], stride: int,
           device: torch.device) -> list[list[torch.Tensor]]:
    """Every stage's output for each case (fp32, on ``device``), the encoder frozen in eval mode."""
    encoder.eval()
    out = []
    for _, image, _ in cases:
        x, _ = _pad(image, stride)
        with bf16_autocast(device):
            out.append([f.float() for f in encoder(x.to(device))])
    return out


def _targets(cases: list[tuple[str, np.ndarray, np.ndarray]], stride: int, device: torch.device
             ) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """Labels padded like the images (padding and negative 'outside' labels -> ignored as -1)."""
    out = []
    for _, image, seg in cases:
        size = image.shape[1:]
        padded = np.pad(seg.astype(np.int64), [(0, -s % stride) for s in size], constant_values=-1)
        out.append((torch.from_numpy(np.where(padded < 0, -1, padded)).to(device), size))
    return out


def train_probe(features: list[list[torch.Tensor]], targets: list[tuple[torch.Tensor, tuple[int, ...]]],
                classes: int, steps: int, seed: int, lr: float = 1e-2) -> LinearProbe:
    """The linear head on frozen ``features``: ``steps`` AdamW steps, one training case each (seeded order),
    cross-entropy + soft Dice over the foreground classes."""
    torch.manual_seed(seed)
    probe = LinearProbe([f.shape[1] for f in features[0]], classes).to(features[0][0].device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    order = np.random.default_rng(seed).integers(0, len(features), steps)
    for i in order:
        target, _ = targets[i]
        logits = probe(features[i], target.shape)[0]
        valid = target >= 0
        ce = F.cross_entropy(logits[None], target.clamp_min(0)[None], reduction="none")[0][valid].mean()
        probs = logits.softmax(0)[:, valid]
        onehot = F.one_hot(target[valid], classes).T.float()
        dice = (2 * (probs * onehot).sum(1) + 1) / (probs.sum(1) + onehot.sum(1) + 1)
        loss = ce + 1 - dice[1:].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe


@torch.no_grad()
def score(probe: LinearProbe, features: list[list[torch.Tensor]],
          targets: list[tuple[torch.Tensor, tuple[int, ...]]], structures: dict[str, int]) -> dict[str, float]:
    """Mean Dice per structure over the cases (a structure absent from both prediction and label: 1), and their
    mean."""
    per_case = []
    for f, (target, size) in zip(features, targets):
        crop = tuple(slice(0, s) for s in size)
        prediction = probe(f, target.shape)[0].argmax(0)[crop]
        reference = target[crop]
        row = {}
        for name, value in structures.items():
            p, r = prediction == value, reference == value
            total = int(p.sum() + r.sum())
            row[name] = 1.0 if total == 0 else 2 * int((p & r).sum()) / total
        per_case.append(row)
    out = {s: float(np.mean([c[s] for c in per_case])) for s in structures}
    return {**out, "mean": float(np.mean(list(out.values())))}


def probe_encoder(encoder_path: Path | None, data: ProbeData, seeds: list[int], steps: int,
                  device: torch.device | str = "cpu", arch_kwargs: dict | None = None,
                  input_channels: int | None = None, progress: bool = False) -> dict:
    """Probe Dice of the export ``encoder_path`` and of random-init encoders of its architecture, for each seed.

    ``encoder_path`` None probes random init alone (``arch_kwargs``/``input_channels`` then give the architecture).
    Returns ``{"seeds", "structures", "pretrained": {seed: dice}, "random": {seed: dice}, "summary"}``."""
    device = torch.device(device)
    channels = data.train[0][1].shape[0]
    if encoder_path is not None:
        _, plan = load_exported_encoder(encoder_path)
        arch_kwargs = plan["architecture_plans"]["arch_kwargs"]
        input_channels = plan["pretrain_num_input_channels"]
    if input_channels != channels:
        raise InputError(f"{encoder_path} was pretrained on {input_channels} input channel(s); the probe's data has "
                         f"{channels}: probe a data set with the same channels")
    stride = int(np.prod([np.max(s) for s in arch_kwargs["strides"]]))
    classes = max(data.structures.values()) + 1
    train_targets, val_targets = _targets(data.train, stride, device), _targets(data.val, stride, device)
    result = {"seeds": list(seeds), "structures": list(data.structures), "steps": steps,
              "train_cases": [c for c, _, _ in data.train], "val_cases": [c for c, _, _ in data.val],
              "pretrained": {}, "random": {}}
    pretrained_features = None
    jobs = [(seed, kind) for seed in seeds for kind in (("pretrained", "random") if encoder_path else ("random",))]
    for seed, kind in tqdm(jobs, desc="probe", disable=not progress):
        if kind == "random" or pretrained_features is None:
            torch.manual_seed(seed)
            net = build_xlstm_unet(arch_kwargs, input_channels, 2)
            if kind == "pretrained":
                load_encoder_into(net, encoder_path, arch_kwargs, input_channels)
            encoder = net.encoder.to(device)
            features = (encode(encoder, data.train, stride, device), encode(encoder, data.val, stride, device))
            if kind == "pretrained":
                pretrained_features = features
        else:
            features = pretrained_features
        probe = train_probe(features[0], train_targets, classes, steps, seed)
        result[kind][str(seed)] = score(probe, features[1], val_targets, data.structures)
    result["summary"] = summarise_probe(result)
    return result


def summarise_probe(result: dict) -> dict:
    """Mean ± sd over seeds per structure for each kind, and pretrained - random paired by seed."""
    names = [*result["structures"], "mean"]
    out = {}
    for kind in ("pretrained", "random"):
        if result[kind]:
            values = np.array([[d[s] for s in names] for d in result[kind].values()])
            out[kind] = {s: {"mean": float(values[:, i].mean()),
                             "sd": float(values[:, i].std(ddof=1)) if len(values) > 1 else None}
                         for i, s in enumerate(names)}
    if result["pretrained"] and result["random"]:
        seeds = [s for s in result["pretrained"] if s in result["random"]]
        diffs = np.array([[result["pretrained"][k][s] - result["random"][k][s] for s in names] for k in seeds])
        out["difference"] = {s: {"mean": float(diffs[:, i].mean()),
                                 "sd": float(diffs[:, i].std(ddof=1)) if len(diffs) > 1 else None}
                             for i, s in enumerate(names)}
    return out


BEST_EXPORT = "encoder_best_probe.pt"


class PretrainingProbe:
    """The probe during pretraining: the random-init baseline once, then the teacher's encoder every ``every``
    steps; ``probe.json`` and ``probe.png`` (probe Dice against the step, with the baseline) in the run folder, and
    ``encoder_best_probe.pt``, the export with the best probe Dice so far (``best_step`` in ``probe.json``): the
    probe can peak before the end of a run."""

    def __init__(self, config, arch_kwargs: dict, output: Path, device: torch.device) -> None:
        self.config, self.output, self.device = config, output, device
        self.data = load_probe_data(config.dataset, config.plans, config.configuration, config.train_patients,
                                    config.val_patients)
        file = output / "probe.json"
        self.history = json.loads(file.read_text()) if file.is_file() else {"random": probe_encoder(
            None, self.data, config.seeds, config.steps, device, arch_kwargs, 1)["summary"]["random"], "steps": []}

    def __call__(self, step: int, export: Path) -> float:
        """Probe the export ``export`` (the teacher's encoder at ``step``); returns its mean Dice."""
        result = probe_encoder(export, self.data, self.config.seeds, self.config.steps, self.device)
        entry = {"step": step, **result["summary"]["pretrained"]["mean"]}
        self.history["steps"] = [e for e in self.history["steps"] if e["step"] != step] + [entry]
        if max(self.history["steps"], key=lambda e: e["mean"]) is entry:  # a tie keeps the earlier step
            atomic_write(self.output / BEST_EXPORT, lambda tmp: shutil.copyfile(export, tmp))
            self.history["best_step"] = step
        atomic_write_text(self.output / "probe.json", json.dumps(self.history, indent=1))
        self.plot()
        return entry["mean"]

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = self.history["steps"]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.errorbar([e["step"] for e in steps], [e["mean"] for e in steps], [e["sd"] or 0 for e in steps],
                    marker="o", capsize=3, label="teacher's encoder")
        random = self.history["random"]["mean"]
        ax.axhline(random["mean"], color="C3", ls="--", label="random init")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("probe Dice (mean over structures)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(self.output / "probe.png", lambda tmp: fig.savefig(tmp, dpi=90))
        plt.close(fig)


def probe_markdown(result: dict, title: str) -> str:
    names = [*result["structures"], "mean"]
    pm = lambda e: f"{e['mean']:.3f}" + (f" ± {e['sd']:.3f}" if e["sd"] is not None else "")
    labels = {"pretrained": "pretrained encoder", "random": "random init", "difference": "pretrained − random"}
    lines = [f"# Transfer probe: {title}", "",
             f"Linear probe on the frozen encoder, {result['steps']} steps on {len(result['train_cases'])} labelled "
             f"cases, Dice on {len(result['val_cases'])} development cases (preprocessed resolution); mean ± sd over "
             f"seeds {', '.join(map(str, result['seeds']))}.", "",
             "| encoder | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for kind, entry in result["summary"].items():
        lines.append(f"| {labels[kind]} | " + " | ".join(pm(entry[s]) for s in names) + " |")
    return "\n".join(lines) + "\n"


def probe_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True, metavar="encoder_export.pt")
    p.add_argument("-d", required=True, help="data set id or name (nnU-Net's preprocessed data)")
    p.add_argument("-p", default="nnUNetPlans", help="plans whose preprocessed data to use (nnUNetPlans)")
    p.add_argument("-c", default="3d_fullres", help="configuration (3d_fullres)")
    p.add_argument("--train_patients", nargs="+", required=True, help="the labelled patients")
    p.add_argument("--val_patients", nargs="+", required=True, help="the development patients scored")
    p.add_argument("--group_pattern", default=DEFAULT_GROUP_PATTERN, help="regex; group 1 is the patient id")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="head training steps per seed (300)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--output", type=Path, default=Path("probe"), help="folder for probe.json and probe.md")
    p.add_argument("--transductive", action="store_true",
                   help="allow an encoder pretrained on images of the scored patients (reported as such)")
    a = p.parse_args(argv)
    try:
        if a.steps < 1 or not a.seeds or len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
            raise InputError("--steps must be >= 1 and --seeds distinct integers >= 0")
        _, plan = load_exported_encoder(a.encoder)  # refuse a bad file before reading any data
        note = check_no_leak(plan, a.val_patients, a.encoder, "development", a.transductive, a.group_pattern)
        if note:
            print(f"WARNING: {note}", flush=True)
        data = load_probe_data(a.d, a.p, a.c, a.train_patients, a.val_patients, a.group_pattern)
        print(f"precision: {bf16_decision(a.device)[1]}", flush=True)
        t0 = time.perf_counter()
        result = probe_encoder(a.encoder, data, a.seeds, a.steps, a.device, progress=True)
        result.update(encoder=str(a.encoder), dataset=a.d, plans=a.p, configuration=a.c,
                      seconds=time.perf_counter() - t0, leakage=note)
        text = probe_markdown(result, f"{a.encoder} on {a.d} ({a.p}, {a.c})") + (f"\n**{note}**\n" if note else "")
        atomic_write_text(a.output / "probe.json", json.dumps(result, indent=1))
        atomic_write_text(a.output / "probe.md", text)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_probe: error: {error_line(e)}")
    print(text + f"\n{result['seconds']:.0f} s; wrote {a.output / 'probe.json'} and probe.md")


if __name__ == "__main__":
    probe_entry()
