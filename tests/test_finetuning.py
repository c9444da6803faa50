"""Fine-tuning from an exported encoder: strict loading, planning like the encoder, warm-up/freeze, few-label splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnunetv2_xlstm.checkpoints import (ENCODER_ARCH_KEYS, atomic_torch_save, load_encoder_into, load_exported_encoder,
                                        save_exported_encoder)
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess
from nnunetv2_xlstm.planning.planner import XLSTMUNetPlanner, encoder_plan_warnings
from nnunetv2_xlstm.splits import few_label_splits, group_patients, parse_budget, split_entry
from nnunetv2_xlstm.training import pretrained as pretrained_trainers
from nnunetv2_xlstm.training import xlstm as xlstm_trainers
from nnunetv2_xlstm.training.lr_schedule import WarmupPolyLR
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.train import adaptation_plan

SMALL = ["network.features_per_stage=[16,32,64]", "network.strides=[1,2,2]", "network.n_blocks_per_stage=[1,1,1]",
         "target_spacing=[4.5,4.5,4.5]"]


def export_encoder(path: Path, overrides: list[str] = (), seed: int = 0) -> dict:
    """An exported encoder of a small XLSTMUNet with seeded random weights; returns its adaptation plan."""
    config = load_config(overrides=[*SMALL, *overrides], sources=[SourceConfig("unused", "MRI")])
    plan = adaptation_plan(config)
    torch.manual_seed(seed)
    encoder = build_xlstm_unet(plan["architecture_plans"]["arch_kwargs"]).encoder
    with torch.no_grad():  # in place: DNA modules reach some tensors under two keys (conv and all_modules.0)
        for p in encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_exported_encoder(path, {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, plan)
    return plan


# ------------------------------------------------------------------------------------------------ strict loading
def test_strict_loader_accepts_a_fresh_export(tmp_path: Path) -> None:
    plan = export_encoder(tmp_path / "enc.pt")
    kwargs = plan["architecture_plans"]["arch_kwargs"]
    net = build_xlstm_unet(kwargs, 1, 4)
    decoder_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("decoder.stages")}
    report = load_encoder_into(net, tmp_path / "enc.pt", kwargs, input_channels=1)
    weights = torch.load(tmp_path / "enc.pt", weights_only=True)["network_weights"]
    state = net.state_dict()
    assert sorted(report["loaded"]) == sorted(weights) and len(weights) > 50
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert all(torch.equal(state[k.replace("encoder.", "decoder.encoder.", 1)], v) for k, v in weights.items())
    assert all(torch.equal(state[k], v) for k, v in decoder_before.items())  # the decoder keeps its initialisation
    assert report["fresh"] and all(k.startswith("decoder.") and not k.startswith("decoder.encoder.")
                                   for k in report["fresh"])
    assert any(".seg_layers." in k for k in report["fresh"])


def test_strict_loader_refuses_mismatches(tmp_path: Path) -> None:
    plan = export_encoder(tmp_path / "enc.pt")
    kwargs = plan["architecture_plans"]["arch_kwargs"]
    wider = {**kwargs, "features_per_stage": [32, 64, 128]}
    net = build_xlstm_unet(wider, 1, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InputError, match=r"features_per_stage: encoder \[16, 32, 64\], plans \[32, 64, 128\]"):
        load_encoder_into(net, tmp_path / "enc.pt", wider)
    # without the plans' kwargs, the key/shape check names the keys and both shapes
    with pytest.raises(InputError, match=r"key\(s\) of another shape: encoder.stem.convs.0.conv.weight \(file "
                                         r"\(16, 1, 3, 3, 3\), network \(32, 1, 3, 3, 3\)\)"):
        load_encoder_into(net, tmp_path / "enc.pt")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())  # nothing was loaded
    with pytest.raises(InputError, match="pretrained on 1 input channel.*this data set has 2"):
        load_encoder_into(build_xlstm_unet(kwargs, 2, 4), tmp_path / "enc.pt", kwargs, input_channels=2)
    no_mlstm = {**kwargs, "mlstm_stages": []}
    with pytest.raises(InputError, match="mlstm_stages"):
        load_encoder_into(build_xlstm_unet(no_mlstm, 1, 4), tmp_path / "enc.pt", no_mlstm)
    with pytest.raises(InputError, match=r"key\(s\) missing from the file: .*key\(s\) not in the network: "
                                         r"encoder.stages.1.convs"):  # mLSTM stages wrap their convs
        load_encoder_into(build_xlstm_unet(no_mlstm, 1, 4), tmp_path / "enc.pt")
    atomic_torch_save({"network_weights": {}}, tmp_path / "nnunet_checkpoint.pth")
    with pytest.raises(InputError, match="not an exported encoder"):
        load_encoder_into(net, tmp_path / "nnunet_checkpoint.pth")


def test_encoder_arch_keys_cover_every_weight_shaping_kwarg(tmp_path: Path) -> None:
    """Changing any kwarg outside ENCODER_ARCH_KEYS (strides, decoder) leaves the encoder's keys and shapes alone."""
    plan = export_encoder(tmp_path / "enc.pt")
    kwargs = plan["architecture_plans"]["arch_kwargs"]
    other = {**kwargs, "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage_decoder": [2, 2]}
    shapes = lambda kw: {k: v.shape for k, v in build_xlstm_unet(kw, 1, 3).encoder.state_dict().items()}
    assert shapes(other) == shapes(kwargs) and "strides" not in ENCODER_ARCH_KEYS
    load_encoder_into(build_xlstm_unet(other, 1, 3), tmp_path / "enc.pt", other)


# -------------------------------------------------------------------------------------- warm-up, freeze, release
def test_warmup_poly_schedule() -> None:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "encoder"},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "decoder"}]
    optimizer = torch.optim.SGD(groups, lr=0.01)
    sched = WarmupPolyLR(optimizer, 0.01, max_epochs=10, warmup=2, encoder_factor=0.1)
    expected = {0: (0.0005, 0.005), 1: (0.001, 0.01), 2: (0.01, 0.01), 6: (0.01 * 0.5 ** 0.9,) * 2}
    for epoch, (enc, dec) in expected.items():
        sched.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(enc)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(dec)
    plain = WarmupPolyLR(optimizer, 0.01, max_epochs=10)  # no warm-up: nnU-Net's PolyLRScheduler
    plain.step(3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.7 ** 0.9)


GEOMETRY = PhantomGeometry((32, 32, 32), 4.5)


def _plan_like_an_encoder(root: Path) -> None:
    dataset = write_phantom_dataset(root / "nnUNet_raw", 993, 4, 0, geometry=GEOMETRY, progress=False)
    export_encoder(root / "enc.pt")
    plan_and_preprocess([993], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                        planner_kwargs={"pretrained_encoder": root / "enc.pt", "batch_size": 2})
    (root / "nnUNet_preprocessed" / dataset.name / "splits_final.json").write_text(json.dumps(
        [{"train": ["phantom_000_CT", "phantom_001_MRI"], "val": ["phantom_002_CT", "phantom_003_MRI"]}]))


@pytest.fixture
def encoder_plans(tmp_path: Path, nnunet_env: dict[str, str], built_once) -> tuple[Path, Path]:
    """A phantom data set planned and preprocessed like a small exported encoder: (data set folder, export)."""
    built_once("plan_like_an_encoder", _plan_like_an_encoder)
    return next(Path(nnunet_env["nnUNet_raw"]).glob("Dataset993_*")), tmp_path / "enc.pt"


def test_plans_follow_the_encoder(encoder_plans: tuple[Path, Path], nnunet_env: dict[str, str]) -> None:
    dataset, export = encoder_plans
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    plans = json.loads((folder / "nnUNetPlansXLSTMEncoder.json").read_text())
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    encoder = torch.load(export, weights_only=True)["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"]
    assert {k: kwargs[k] for k in ENCODER_ARCH_KEYS} == {k: encoder[k] for k in ENCODER_ARCH_KEYS}
    assert len(kwargs["strides"]) == 3 and len(kwargs["n_conv_per_stage_decoder"]) == 2
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]  # data-driven, as nnU-Net plans
    record = plans["pretrained_encoder"]
    # the plans keep a copy of the export and name where it came from (here: the cached build's copy of enc.pt)
    assert (folder / record["file"]).read_bytes() == export.read_bytes() and Path(record["source"]).name == "enc.pt"


def test_match_encoder_cuts_or_pads_planned_strides(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    export_encoder(tmp_path / "enc.pt")  # 3 stages
    planner = XLSTMUNetPlanner.__new__(XLSTMUNetPlanner)
    planner.encoder_plan = torch.load(tmp_path / "enc.pt", weights_only=True)["nnssl_adaptation_plan"]
    deep = {"n_stages": 5, "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
            "kernel_sizes": [[1, 3, 3]] * 5, "n_conv_per_stage_decoder": [1] * 4, "dropout_op": None}
    assert planner.match_encoder(deep)["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert planner.match_encoder(deep)["kernel_sizes"] == [[3, 3, 3]] * 3
    shallow = {**deep, "n_stages": 2, "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage_decoder": [1]}
    assert planner.match_encoder(shallow)["strides"] == [[1, 1, 1], [2, 2, 2], [1, 1, 1]]
    assert planner.match_encoder(shallow)["n_conv_per_stage_decoder"] == [1, 1]


def test_planning_warns_about_spacing_and_normalisation(tmp_path: Path) -> None:
    plan = export_encoder(tmp_path / "enc.pt", ["target_spacing=[2,2,2]"])
    plans = {"configurations": {"3d_fullres": {"spacing": [10.0, 3.0, 3.0],
                                               "normalization_schemes": ["CTNormalization"]},
                                "2d": {"spacing": [3.0, 3.0], "normalization_schemes": ["ZScoreNormalization"]}}}
    warnings = encoder_plan_warnings(plans, plan)
    assert len(warnings) == 2 and "[10.0, 3.0, 3.0]" in warnings[0] and "[2.0, 2.0, 2.0]" in warnings[0]
    assert "CTNormalization was not used in pretraining" in warnings[1]
    plans["configurations"]["3d_fullres"] = {"spacing": [2.2, 2.0, 1.9], "normalization_schemes":
                                             ["ZScoreNormalization"]}
    assert encoder_plan_warnings(plans, plan) == []


def test_planning_refuses_width_options_and_bad_files(tmp_path: Path, encoder_plans: tuple[Path, Path]) -> None:
    _, export = encoder_plans
    with pytest.raises(InputError, match="come from the pretrained encoder"):
        plan_and_preprocess([993], planner_kwargs={"pretrained_encoder": export, "base_features": 16})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt is not a readable checkpoint"):
        plan_and_preprocess([993], planner_kwargs={"pretrained_encoder": tmp_path / "junk.pt"})


def _trainer(cls: type, dataset: Path, nnunet_env: dict[str, str], **plan_changes) -> xlstm_trainers.nnUNetTrainerXLSTM:
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    plans = {**json.loads((folder / "nnUNetPlansXLSTMEncoder.json").read_text()), "continue_training": False,
             **plan_changes}
    trainer = cls(plans, "3d_fullres", 0, json.loads((folder / "dataset.json").read_text()), torch.device("cpu"))
    trainer.initialize()
    return trainer


def _train_step(trainer: xlstm_trainers.nnUNetTrainerXLSTM) -> None:
    net = trainer.plain_network()
    torch.manual_seed(0)
    x = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in net(x)]
    trainer.train_step({"data": x, "target": [torch.randint(0, 8, (2, 1, *s)).float() for s in shapes]})


def test_encoder_frozen_during_warmup_then_released(encoder_plans: tuple[Path, Path],
                                                    nnunet_env: dict[str, str]) -> None:
    dataset, export = encoder_plans
    trainer = _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env)
    assert trainer.warmup_epochs == 1 and trainer.num_epochs == 2
    trainer.load_pretrained_encoder()
    net = trainer.plain_network()
    log = Path(trainer.log_file).read_text()
    assert "loaded pretrained encoder" in log and "initialised afresh" in log
    keys = json.loads((Path(trainer.output_folder) / "pretrained_encoder_keys.json").read_text())
    assert len(keys["loaded"]) > 50 and all(k.startswith("encoder.") for k in keys["loaded"])
    assert any(k.startswith("decoder.seg_layers") for k in keys["fresh"])
    weights = torch.load(export, weights_only=True)["network_weights"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    decoder_before = {k: v.clone() for k, v in net.decoder.stages.state_dict().items()}

    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    stated = Path(trainer.log_file).read_text().splitlines()[-1].rstrip()  # nnU-Net's own line rounds to "0.0"
    assert stated.endswith(f"learning rates: encoder 0, decoder {trainer.optimizer.param_groups[-1]['lr']:.3g}")
    _train_step(trainer)
    assert all(p.grad is None and not p.requires_grad for p in net.encoder.parameters())  # zero gradients
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # unchanged
    assert any(not torch.equal(net.decoder.stages.state_dict()[k], v) for k, v in decoder_before.items())

    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    assert trainer.optimizer.param_groups[0]["name"] == "encoder" and trainer.optimizer.param_groups[0]["lr"] > 0
    _train_step(trainer)
    assert all(p.requires_grad for p in net.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())
    assert any(not torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # released: it trains


def test_scratch_baseline_matches_but_does_not_load(encoder_plans: tuple[Path, Path],
                                                    nnunet_env: dict[str, str]) -> None:
    dataset, export = encoder_plans
    scratch = _trainer(xlstm_trainers.nnUNetTrainerXLSTMScratch_smoke, dataset, nnunet_env)
    pretrained = _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env)
    assert not issubclass(xlstm_trainers.nnUNetTrainerXLSTMScratch, pretrained_trainers.nnUNetTrainerXLSTMPretrained)
    assert (scratch.warmup_epochs, scratch.num_epochs, scratch.initial_lr) == \
        (pretrained.warmup_epochs, pretrained.num_epochs, pretrained.initial_lr) == (1, 2, pretrained.schedule.lr)
    before = {k: v.clone() for k, v in scratch.plain_network().state_dict().items()}
    scratch.on_train_start()  # what nnUNetv2_train runs before epoch 0: loads nothing
    after = scratch.plain_network().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    weights = torch.load(export, weights_only=True)["network_weights"]
    assert not any(torch.equal(after[k], v) for k, v in weights.items() if v.numel() > 1)
    assert "loaded pretrained encoder" not in Path(scratch.log_file).read_text()
    assert not (Path(scratch.output_folder) / "pretrained_encoder_keys.json").exists()
    pretrained.on_train_start()  # the same call in the pretrained trainer loads the export
    assert all(torch.equal(pretrained.plain_network().state_dict()[k], v) for k, v in weights.items())


def test_finetuning_protocol_from_the_environment(encoder_plans: tuple[Path, Path], nnunet_env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, _ = encoder_plans
    monkeypatch.setenv(pretrained_trainers.FINETUNE_ENV, "warmup=0, encoder_lr=0.5, layer_decay=0.5")
    trainer = _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env)
    assert trainer.warmup_epochs == 0 and (trainer.encoder_lr_factor, trainer.layer_decay) == (0.5, 0.5)
    assert "NNUNETV2_XLSTM_FINETUNE=" in Path(trainer.log_file).read_text()
    net = trainer.plain_network()
    groups = trainer.optimizer.param_groups
    n = len(net.encoder.stages)
    assert [g["lr_scale"] for g in groups if g["name"] == "encoder"] == [0.5 * 0.5 ** (n - 1 - s) for s in range(n)]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in net.parameters()}  # each once
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert any(p is q for q in groups[0]["params"] for p in net.encoder.stem.parameters())  # stem with stage 0
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()  # nnU-Net steps the scheduler here: bottleneck 0.5x, stem 0.5 ** n x the decoder's
    decoder_lr = groups[-1]["lr"]
    assert decoder_lr > 0 and groups[n - 1]["lr"] == pytest.approx(0.5 * decoder_lr)
    assert groups[0]["lr"] == pytest.approx(0.5 ** n * decoder_lr)
    stated = Path(trainer.log_file).read_text().splitlines()[-1].rstrip()  # every group's lr, not only the first
    assert stated.endswith(f"learning rates: encoder {groups[0]['lr']:.3g}-{groups[n - 1]['lr']:.3g}, "
                           f"decoder {decoder_lr:.3g}")
    scratch_twin = _trainer(xlstm_trainers.nnUNetTrainerXLSTMScratch_smoke, dataset, nnunet_env)
    assert scratch_twin.warmup_epochs == 1 and scratch_twin.encoder_lr_factor == 1  # the baseline keeps its protocol
    for bad, message in (("encoder_lr=-1", "must be a number >= 0"), ("warmup=1", "must be below 1"),
                         ("lr=3", "unknown setting 'lr'"), ("layer_decay=nan", "is not a float")):
        monkeypatch.setenv(pretrained_trainers.FINETUNE_ENV, bad)
        with pytest.raises(InputError, match=message):
            _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env)


def test_changed_encoder_file_is_refused(encoder_plans: tuple[Path, Path], nnunet_env: dict[str, str]) -> None:
    dataset, _ = encoder_plans
    trainer = _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env)
    copied = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name / "nnUNetPlansXLSTMEncoder_encoder.pt"
    export_encoder(copied, seed=1)
    with pytest.raises(InputError, match="changed since planning"):
        trainer.load_pretrained_encoder()
    trainer = _trainer(pretrained_trainers.nnUNetTrainerXLSTMPretrained_smoke, dataset, nnunet_env, pretrained_encoder=None)
    with pytest.raises(InputError, match="name no pretrained encoder.*--pretrained_encoder"):
        trainer.load_pretrained_encoder()


# ---------------------------------------------------------------------------------------------- few-label splits
ACDC_LIKE = [f"patient{i:03d}_frame0{f}" for i in range(1, 41) for f in (1, 2)]


def test_patient_grouping() -> None:
    groups = group_patients(ACDC_LIKE)
    assert len(groups) == 40 and groups["patient007"] == ["patient007_frame01", "patient007_frame02"]
    assert group_patients(["a_1", "a_2", "b_1"], r"^(.+)_\d$") == {"a": ["a_1", "a_2"], "b": ["b_1"]}
    assert group_patients(["case_00", "case_01"]) == {"case_00": ["case_00"], "case_01": ["case_01"]}


def test_splits_respect_budget_grouping_and_are_deterministic() -> None:
    result = few_label_splits(ACDC_LIKE, "3", folds=4, seed=7)
    assert result == few_label_splits(ACDC_LIKE, "3", folds=4, seed=7)
    assert result != few_label_splits(ACDC_LIKE, "3", folds=4, seed=8)
    assert len(result["val_patients"]) == 8  # default: 20 % development patients
    draws = set()
    for fold, train_patients in zip(result["folds"], result["train_patients"]):
        train, val, unlabelled = (set(fold[k]) for k in ("train", "val", "unlabelled"))
        assert len(train_patients) == 3 and len(train) == 6
        assert not train & val and not train & unlabelled and not val & unlabelled
        assert train | val | unlabelled == set(ACDC_LIKE)
        for part in (train, val, unlabelled):  # both frames of a patient always together
            assert all(f"{c[:10]}_frame01" in part and f"{c[:10]}_frame02" in part for c in part)
        draws.add(tuple(train_patients))
    assert len(draws) == 4  # folds draw different labelled sets
    assert len(few_label_splits(ACDC_LIKE, "0.1", folds=1)["train_patients"][0]) == 3  # 10 % of 32 patients


def test_splits_with_fixed_lists_and_bad_budgets() -> None:
    val = ["patient002", "patient019", "patient028"]
    fixed = few_label_splits(ACDC_LIKE, None, val_patients=val, train_patients=[
        ["patient038", "patient009", "patient005"], ["patient038", "patient009", "patient005", "patient011"]])
    assert fixed["folds"][0]["train"][:2] == ["patient005_frame01", "patient005_frame02"]
    assert len(fixed["folds"]) == 2 and len(fixed["folds"][1]["train"]) == 8  # one fold per list
    assert fixed["val_patients"] == val and len(fixed["folds"][0]["unlabelled"]) == 2 * 34
    with pytest.raises(InputError, match="patient999 not among"):
        few_label_splits(ACDC_LIKE, "3", val_patients=["patient999"])
    with pytest.raises(InputError, match="both training and validation"):
        few_label_splits(ACDC_LIKE, None, val_patients=val, train_patients=[["patient002"]])
    with pytest.raises(InputError, match="only 32 are available"):
        few_label_splits(ACDC_LIKE, "33")
    assert parse_budget("5%", 80) == parse_budget("0.05", 80) == 4 and parse_budget("7", 80) == 7
    with pytest.raises(InputError, match="whole patient count"):
        parse_budget("2.5", 80)


def test_split_command_writes_nnunet_splits(nnunet_env: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    dataset = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 994, 6, 0, geometry=GEOMETRY, progress=False)
    split_entry(["-d", "994", "--budget", "2", "--val_budget", "2", "--folds", "2"])
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 2 and all(len(s["train"]) == 2 and len(s["val"]) == 2 for s in splits)
    listed = (folder / "unlabelled_fold0.txt").read_text().split()
    assert len(listed) == 2 and all(Path(p).is_file() and p.endswith("_0000.nii.gz") for p in listed)
    assert "fold 1: train 2 patients" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists with other splits"):
        split_entry(["-d", "994", "--budget", "3", "--val_budget", "2"])
    split_entry(["-d", "994", "--budget", "2", "--val_budget", "2", "--folds", "2"])  # the same splits: fine
    split_entry(["-d", "994", "--budget", "3", "--val_budget", "2", "--overwrite"])
    assert len(json.loads((folder / "splits_final.json").read_text())) == 5


def test_probe_command_scores_an_export_against_random_init(encoder_plans: tuple[Path, Path], tmp_path: Path,
                                                            nnunet_env: dict[str, str],
                                                            capsys: pytest.CaptureFixture) -> None:
    from nnunetv2_xlstm_pretraining.probe import probe_entry

    dataset, export = encoder_plans
    out = tmp_path / "probe"
    args = ["--encoder", str(export), "-d", "993", "-p", "nnUNetPlansXLSTMEncoder", "--train_patients",
            "phantom_000_CT", "phantom_001_MRI", "--val_patients", "phantom_002_CT", "phantom_003_MRI", "--seeds", "0",
            "1", "--steps", "3", "--output", str(out)]
    probe_entry(args)
    result = json.loads((out / "probe.json").read_text())
    assert sorted(result["pretrained"]) == sorted(result["random"]) == ["0", "1"]
    for kind in ("pretrained", "random"):
        assert all(0 <= d["mean"] <= 1 for d in result[kind].values())
    printed = capsys.readouterr().out
    assert "records no pretraining pool" in printed  # an export of unknown pool is said to be so
    assert "random" in (out / "probe.md").read_text() and "random" in printed
    # an export whose pool holds a scored patient is refused before any data is read
    weights, plan = torch.load(export, weights_only=True)["network_weights"], load_exported_encoder(export)[1]
    plan["pretrain_plan"]["pool"] = {"cases": ["phantom_003_MRI", "other"], "files": [], "sha256": "0"}
    save_exported_encoder(tmp_path / "leaky.pt", weights, plan)
    with pytest.raises(SystemExit, match="pretrained on images of 1 development patient.*phantom_003_MRI"):
        probe_entry(["--encoder", str(tmp_path / "leaky.pt"), *args[2:]])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        probe_entry([*args[:-4], "--steps", "0", "--output", str(out)])
