"""Semi-supervised training: copy-paste geometry, pseudo-label masking, the unlabelled list, and the trainer through
nnU-Net's own command (teacher in the checkpoint, restored on --c)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.training.copy_paste import box_mask, mix, mixed_targets, pseudo_labels
from nnunetv2_xlstm.training.semi import (UNLABELLED_ENV, SemiSupervision, case_of, parse_settings, sigmoid_rampup,
                                          unlabelled_image_files)

IGNORE = 9


@pytest.mark.parametrize("spatial", [(6, 12, 9), (12, 9)])
def test_box_mask_is_one_box_of_the_fraction_inside_the_patch(spatial: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    mask = box_mask((3, 1, *spatial), 2 / 3, generator)
    assert mask.shape == (3, 1, *spatial)
    for sample in mask[:, 0]:
        where = sample.nonzero()
        extent = (where.max(0).values - where.min(0).values + 1).tolist()
        assert extent == [round(2 / 3 * n) for n in spatial]  # one solid box of 2/3 per axis
        assert sample.sum().item() == torch.tensor(extent).prod().item()


def test_bidirectional_mix_and_labels_follow_the_images() -> None:
    labelled, unlabelled = torch.full((1, 1, 4, 4), 1.0), torch.full((1, 1, 4, 4), 2.0)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1  # the box: the top-left quarter
    inward, outward = mix(labelled, unlabelled, mask), mix(unlabelled, labelled, mask)
    assert inward[0, 0, 0, 0] == 1 and inward[0, 0, 3, 3] == 2  # labelled box in the unlabelled patch
    assert outward[0, 0, 0, 0] == 2 and outward[0, 0, 3, 3] == 1  # and the other way round
    y = torch.full((1, 1, 4, 4), 3.0)  # ground truth of the labelled patch
    pseudo, confident = torch.full((1, 1, 4, 4), 5.0), torch.ones(1, 1, 4, 4, dtype=torch.bool)
    confident[..., 3, 3] = False
    gt_in, teacher_in = mixed_targets(y, pseudo, confident, mask, IGNORE, labelled_inside=True)
    assert gt_in[0, 0, 0, 0] == 3 and gt_in[0, 0, 3, 0] == IGNORE  # ground truth only in the box
    assert teacher_in[0, 0, 0, 0] == IGNORE and teacher_in[0, 0, 3, 0] == 5  # pseudo-labels outside it ...
    assert teacher_in[0, 0, 3, 3] == IGNORE  # ... where the teacher is confident
    gt_out, teacher_out = mixed_targets(y, pseudo, confident, mask, IGNORE, labelled_inside=False)
    assert gt_out[0, 0, 0, 0] == IGNORE and gt_out[0, 0, 3, 3] == 3
    assert teacher_out[0, 0, 0, 0] == 5 and teacher_out[0, 0, 3, 3] == IGNORE
    # each voxel is supervised by exactly one of the two (or by neither, if the teacher is unsure there)
    for gt, teacher in ((gt_in, teacher_in), (gt_out, teacher_out)):
        assert not ((gt != IGNORE) & (teacher != IGNORE)).any()
    # a deep-supervision scale: the box is downsampled with the labels
    half = mixed_targets(y[..., ::2, ::2], pseudo, confident, mask, IGNORE, True)[0]
    assert half.shape == (1, 1, 2, 2) and half[0, 0, 0, 0] == 3 and half[0, 0, 1, 1] == IGNORE


def test_pseudo_labels_are_masked_by_confidence() -> None:
    logits = torch.zeros(1, 3, 2, 1)
    logits[0, 2, 0, 0] = 10.0  # voxel 0: class 2, p ~ 1
    logits[0, 1, 1, 0] = 0.5  # voxel 1: class 1, p ~ 0.45
    labels, confident = pseudo_labels(logits, 0.8)
    assert labels[0, 0, :, 0].tolist() == [2.0, 1.0] and confident[0, 0, :, 0].tolist() == [True, False]
    assert pseudo_labels(logits, 0.0)[1].all()


def test_unlabelled_list_is_read_and_checked(tmp_path: Path) -> None:
    for case in ("a_frame01", "b_frame01"):
        for channel in (0, 1):
            (tmp_path / f"{case}_{channel:04d}.nii.gz").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a_frame01_0000.nii.gz'}\n\n{tmp_path / 'b_frame01_0001.nii.gz'}\n")
    cases = unlabelled_image_files(listing, ".nii.gz", 2)
    assert sorted(cases) == ["a_frame01", "b_frame01"]
    assert cases["a_frame01"] == [str(tmp_path / "a_frame01_0000.nii.gz"), str(tmp_path / "a_frame01_0001.nii.gz")]
    assert unlabelled_image_files(tmp_path, ".nii.gz", 2) == cases  # a folder of images works the same
    assert case_of(Path("x/patient001_frame02_0000.nii.gz"), ".nii.gz") == "patient001_frame02"
    with pytest.raises(InputError, match="lacks .*a_frame01_0002.nii.gz.*3 channel"):
        unlabelled_image_files(listing, ".nii.gz", 3)
    listing.write_text(f"{tmp_path / 'gone_0000.nii.gz'}\n")
    with pytest.raises(InputError, match="names .*gone_0000.nii.gz, which does not exist"):
        unlabelled_image_files(listing, ".nii.gz", 2)
    listing.write_text("\n")
    with pytest.raises(InputError, match="lists no unlabelled images.*supervised trainer"):
        unlabelled_image_files(listing, ".nii.gz", 2)
    with pytest.raises(InputError, match="run nnunetv2_xlstm_split"):
        unlabelled_image_files(tmp_path / "absent.txt", ".nii.gz", 2)


@pytest.mark.slow
def test_semi_trainer_through_nnunet_commands(tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    """nnUNetv2_train with the semi-supervised trainer on phantoms (split -> unlabelled list), the teacher in the
    checkpoint and restored from it, nnUNetv2_predict with the result; labelled or development cases refused."""
    from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
    from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess
    from nnunetv2_xlstm.splits import write_few_label_splits
    from nnunetv2_xlstm.training import semi

    raw = Path(nnunet_env["nnUNet_raw"])
    dataset = write_phantom_dataset(raw, 996, 8, 2, geometry=PhantomGeometry((40, 40, 40), 3.6), progress=False)
    plan_and_preprocess([996], configurations=["3d_fullres"], num_processes=[2], planner_kwargs={
        "base_features": 16, "max_features": 64, "batch_size": 2}, num_processes_fingerprint=2)
    write_few_label_splits(996, "2", folds=1, val_budget="2")
    bin_ = Path(sys.executable).parent
    train = [str(bin_ / "nnUNetv2_train"), "996", "3d_fullres", "0", "-tr", "nnUNetTrainerXLSTMSemi_smoke", "-p",
             "nnUNetPlansXLSTM", "-device", "cpu"]
    env = {**nnunet_env, "NNUNETV2_XLSTM_MINUTES": "", "nnUNet_n_proc_DA": "0"}
    # the warm start ends at the latest at half the training: epoch 0 labelled-only, epoch 1 semi-supervised
    done = subprocess.run(train, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = Path(nnunet_env["nnUNet_results"]) / dataset.name / "nnUNetTrainerXLSTMSemi_smoke__nnUNetPlansXLSTM__3d_fullres" / "fold_0"
    checkpoint = load_nnunet_checkpoint(folder / "checkpoint_final.pth")
    teacher, student = checkpoint["teacher_weights"], checkpoint["network_weights"]
    assert checkpoint["semi_started_at"] == 1 and set(teacher) == set(student)  # the semi phase began at epoch 1
    assert any(not torch.equal(teacher[k], student[k]) for k in student)  # an EMA, not a copy
    log = checkpoint["logging"]
    assert len(log["loss_unlabelled"]) == 2 and log["pseudo_share"][1] > 0
    assert (folder / "progress_semi.png").is_file() and (folder / "progress.png").is_file()
    assert list(Path(nnunet_env["nnUNet_preprocessed"], dataset.name).glob("*_unlabelled_*/complete.json"))
    # the trainer restores the teacher from the checkpoint (what --c does)
    plans = {**json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name / "nnUNetPlansXLSTM.json")
                          .read_text()), "continue_training": False}
    trainer = semi.nnUNetTrainerXLSTMSemi_smoke(plans, "3d_fullres", 0, json.loads((dataset / "dataset.json").read_text()),
                                                torch.device("cpu"))
    trainer.load_checkpoint(str(folder / "checkpoint_final.pth"))
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in teacher.items())
    # nnUNetv2_predict uses the result (the student)
    predicted = subprocess.run([str(bin_ / "nnUNetv2_predict"), "-i", str(dataset / "imagesTs"), "-o",
                                str(tmp_path / "pred"), "-d", "996", "-c", "3d_fullres", "-f", "0", "-tr",
                                "nnUNetTrainerXLSTMSemi_smoke", "-p", "nnUNetPlansXLSTM", "-device", "cpu"],
                               env=env, capture_output=True, text=True)
    assert predicted.returncode == 0 and len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2, predicted.stderr[-2000:]
    # a list naming a labelled case is refused, naming the case
    labelled = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name / "splits_final.json").read_text())[0]
    listing = tmp_path / "bad.txt"
    listing.write_text(str(dataset / "imagesTr" / f"{labelled['train'][0]}_0000.nii.gz") + "\n")
    bad = subprocess.run(train, env={**env, UNLABELLED_ENV: str(listing)}, capture_output=True, text=True)
    assert bad.returncode != 0 and "labelled patient" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr  # one line, before any data loader (or its worker threads) started


# ------------------------------------------------------------------------------------------------ pseudo-labels
def test_pseudo_label_rule_against_a_hand_computed_case() -> None:
    # 1 x 6 voxels, 3 classes; probabilities chosen by hand (logits are their logs)
    p = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.6, 0.3], [0.3, 0.65, 0.05],
                      [0.05, 0.15, 0.8], [0.5, 0.1, 0.4]])
    logits = p.log().T.reshape(1, 3, 1, 6)
    labels, confident = pseudo_labels(logits, 0.8)
    assert labels.flatten().tolist() == [0, 1, 1, 1, 2, 0]
    assert confident.flatten().tolist() == [True, True, False, False, True, False]
    # class 1 relaxed to the median of its voxels' confidence (0.6, 0.65, 0.85 -> 0.65); class 0 to 0.7
    _, relaxed = pseudo_labels(logits, 0.8, class_quantile=0.5)
    assert relaxed.flatten().tolist() == [True, True, False, True, True, False]
    # the relaxed bar never rises above the threshold: class 2's only voxel (0.8) stays confident
    assert relaxed.flatten()[4]


def test_largest_component_per_structure() -> None:
    labels = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 2]]).float().reshape(1, 1, 1, 8)
    logits = torch.nn.functional.one_hot(labels.long()[:, 0], 3).permute(0, 3, 1, 2).float() * 10
    _, confident = pseudo_labels(logits, 0.0, largest_component=True)
    # class 1: components {0, 1} and {3} -> voxel 3 left out; class 2: {4, 5} and {7} -> voxel 7 left out
    assert confident.flatten().tolist() == [True, True, True, False, True, True, True, False]


# ------------------------------------------------------------------------------------------------ settings, phases
def test_settings_from_the_environment_are_typed_and_checked() -> None:
    assert parse_settings("warm_start_iterations=300, largest_component=0,class_quantile=none") == {
        "warm_start_iterations": 300, "largest_component": False, "class_quantile": None}
    with pytest.raises(InputError, match="unknown setting 'warmup'"):
        parse_settings("warmup=3")
    with pytest.raises(InputError, match="warm_start_dice='high' is not a float"):
        parse_settings("warm_start_dice=high")
    with pytest.raises(InputError, match=r"box_fraction=1.5 must lie in \[0, 1\]"):
        parse_settings("box_fraction=1.5")
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5)) and sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0


def _phase_state(**kw) -> SimpleNamespace:
    state = dict(warm_start_iterations=None, warm_start_dice=0.8, warm_start_fraction=0.5, semi_iterations=0,
                 num_epochs=100, epoch=0.0, dice=[])
    state.update(kw)
    ns = SimpleNamespace(**state)
    ns.schedule_epoch = lambda: ns.epoch
    ns.logger = SimpleNamespace(local_logger=SimpleNamespace(my_fantastic_logging={"labelled_dice": ns.dice}))
    return ns


def test_warm_start_ends_on_its_criterion() -> None:
    over = SemiSupervision.warm_start_over
    assert over(_phase_state(dice=[0.5, 0.7], epoch=10)) is None
    assert "labelled training Dice 0.810" in over(_phase_state(dice=[0.5, 0.81], epoch=10))
    assert "300 warm-start iterations" in over(_phase_state(warm_start_iterations=300, semi_iterations=300))
    assert over(_phase_state(warm_start_iterations=300, semi_iterations=299, warm_start_dice=None)) is None
    assert "0.5 of the training" in over(_phase_state(epoch=50.0))  # the cap, whatever the Dice


def _frames(folder: Path, *patients: str) -> None:
    for p in patients:
        for frame in ("frame01", "frame12"):
            (folder / f"{p}_{frame}_0000.nii.gz").write_bytes(b"x")


def test_leak_refusals_are_per_patient_and_cover_the_test_folder(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    raw, pre = tmp_path / "raw" / "Dataset9_X", tmp_path / "pre"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "imagesTs").mkdir()
    pre.mkdir()
    _frames(raw / "imagesTr", "p1", "p2", "p3", "p4")
    _frames(raw / "imagesTs", "p9")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    trainer = SimpleNamespace(
        dataset_json={"file_ending": ".nii.gz", "channel_names": {"0": "MRI"}}, fold=0,
        preprocessed_dataset_folder_base=str(pre), plans_manager=SimpleNamespace(dataset_name="Dataset9_X"),
        do_split=lambda: (["p1_frame01", "p1_frame12"], ["p2_frame01", "p2_frame12"]))
    trainer.unlabelled_source = lambda: Path(os.environ[UNLABELLED_ENV])
    listing = tmp_path / "list.txt"
    monkeypatch.setenv(UNLABELLED_ENV, str(listing))
    listing.write_text(f"{raw / 'imagesTr' / 'p3_frame01_0000.nii.gz'}\n{raw / 'imagesTr' / 'p4_frame12_0000.nii.gz'}\n")
    assert sorted(SemiSupervision.unlabelled_cases(trainer)) == ["p3_frame01", "p4_frame12"]
    # the other frame of a labelled patient, of a development patient, a test image: each refused by patient
    for image, kind in (("imagesTr/p1_frame12", "labelled"), ("imagesTr/p2_frame01", "development"),
                        ("imagesTs/p9_frame01", "test")):
        listing.write_text(f"{raw / 'imagesTr' / 'p3_frame01_0000.nii.gz'}\n{raw / image}_0000.nii.gz\n")
        with pytest.raises(InputError, match=f"images of 1 {kind}.*patient.*{image.split('/')[1][:2]}"):
            SemiSupervision.unlabelled_cases(trainer)
    listing.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="is not a text file"):
        SemiSupervision.unlabelled_cases(trainer)
    listing.write_text(f"{raw / 'dataset.json'}\n")
    with pytest.raises(InputError, match="not a .nii.gz image"):
        SemiSupervision.unlabelled_cases(trainer)


def test_unlabelled_cache_is_keyed_by_the_plans_contents(tmp_path: Path) -> None:
    image = tmp_path / "a_0000.nii.gz"
    image.write_bytes(b"x")
    trainer = SimpleNamespace(plans_manager=SimpleNamespace(plans={"configurations": {"3d": {"patch_size": [8]}}}),
                              configuration_name="3d", preprocessed_dataset_folder=str(tmp_path / "pp"))
    cases = {"a": [str(image)]}
    first = SemiSupervision.unlabelled_folder(trainer, cases)
    assert SemiSupervision.unlabelled_folder(trainer, cases) == first
    trainer.plans_manager.plans["configurations"]["3d"]["patch_size"] = [16]  # re-planned under the same name
    assert SemiSupervision.unlabelled_folder(trainer, cases) != first
    image.write_bytes(b"xy")  # the file changed
    trainer.plans_manager.plans["configurations"]["3d"]["patch_size"] = [8]
    assert SemiSupervision.unlabelled_folder(trainer, cases) != first


# ------------------------------------------------------------------------------------------------ the trainer itself
def _small_plans(root: Path) -> None:
    from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
    from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess

    dataset = write_phantom_dataset(root / "nnUNet_raw", 995, 4, 0, geometry=PhantomGeometry((24, 24, 24), 6.0),
                                    progress=False)
    plan_and_preprocess([995], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                        planner_kwargs={"base_features": 8, "max_features": 32, "batch_size": 2})
    (root / "nnUNet_preprocessed" / dataset.name / "splits_final.json").write_text(json.dumps(
        [{"train": ["phantom_000_CT", "phantom_001_MRI"], "val": ["phantom_002_CT", "phantom_003_MRI"]}]))


@pytest.fixture
def semi_trainer(nnunet_env: dict[str, str], built_once):
    """A built and initialised ``nnUNetTrainerXLSTMSemi_smoke`` on a small phantom data set (no training run)."""
    from nnunetv2_xlstm.training import semi

    built_once("small_plans", _small_plans)
    dataset = next(Path(nnunet_env["nnUNet_raw"]).glob("Dataset995_*"))
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    plans = {**json.loads((folder / "nnUNetPlansXLSTM.json").read_text()), "continue_training": False}
    trainer = semi.nnUNetTrainerXLSTMSemi_smoke(plans, "3d_fullres", 0, json.loads((folder / "dataset.json")
                                                                                   .read_text()), torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch(trainer, n: int = 2) -> dict:
    torch.manual_seed(0)
    x = torch.randn(n, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in trainer.plain_network()(x)]
    return {"data": x, "target": [torch.randint(0, 8, (n, 1, *s)).float() for s in shapes]}


def test_semi_checkpoint_is_one_write_with_the_teacher_and_one_read(semi_trainer, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = semi_trainer
    saves, loads = [], []
    real_save, real_load = torch.save, torch.load
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (saves.append(f), real_save(obj, f, *a, **k))[1])
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    assert len(saves) == 1  # written once (to a temporary file, renamed), never re-read and rewritten
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "stock.pth"))  # what nnU-Net itself would write
    ours, stock = load_nnunet_checkpoint(tmp_path / "ours.pth"), load_nnunet_checkpoint(tmp_path / "stock.pth")
    assert set(ours) - set(stock) == {"teacher_weights", "semi_started_at", "semi_iterations"}
    assert set(stock) <= set(ours)  # every field nnU-Net writes and reads back is there
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(a[0]), real_load(*a, **k))[1])
    with torch.no_grad():
        for p in trainer.teacher.parameters():
            p.zero_()
    trainer.load_checkpoint(str(tmp_path / "ours.pth"))
    assert len(loads) == 1 and str(loads[0]) == str(tmp_path / "ours.pth")  # one read, with weights_only
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in ours["teacher_weights"].items())
    # a checkpoint without its teacher (e.g. a supervised trainer's) is refused for --c, with the way out
    with pytest.raises(InputError, match="holds no teacher.*without --c.*start_from"):
        trainer.load_checkpoint(str(tmp_path / "stock.pth"))
    # ... but a supervised model can start the semi phase: student and teacher are that model
    trainer.semi_started_at = None
    trainer.start_from_checkpoint(tmp_path / "stock.pth")
    assert trainer.semi_started_at is not None
    for net in (trainer.plain_network(), trainer.teacher):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in stock["network_weights"].items())
    wrong = {**stock, "network_weights": {k: v for k, v in list(stock["network_weights"].items())[1:]}}
    torch.save(wrong, tmp_path / "other.pth")
    with pytest.raises(InputError, match="does not match these plans"):
        trainer.start_from_checkpoint(tmp_path / "other.pth")


def test_semi_steps_warm_start_then_teacher_and_mixes(semi_trainer) -> None:
    trainer = semi_trainer
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    warm = trainer.train_step(_batch(trainer))
    assert np.isfinite(warm["labelled_dice"]) and np.isnan(warm["pseudo_share"]) and warm["unlabelled_weight"] == 0
    trainer.start_semi_phase("test")
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in trainer.plain_network().state_dict().items())
    seen = []
    patches = iter(lambda: {"data": torch.randn(1, 1, *trainer.configuration_manager.patch_size)}, None)
    trainer.dataloader_unlabelled = (seen.append(1) or b for b in patches)
    batch = _batch(trainer)
    forward = trainer.plain_network().forward
    sizes = []
    trainer.plain_network().forward = lambda x: (sizes.append(x.shape[0]), forward(x))[1]
    trainer.schedule_epoch = lambda: 1.0  # past the ramp of the smoke schedule's 2 epochs
    semi_step = trainer.train_step(batch)
    assert sizes == [2] and len(seen) == 1  # one student pass over 2 mixed patches, one unlabelled patch (B / 2)
    assert 0 <= semi_step["pseudo_share"] <= 1 and semi_step["unlabelled_weight"] > 0
    assert len(semi_step["pseudo_share_per_class"]) == 7
    assert any(not torch.equal(trainer.teacher.state_dict()[k], v)
               for k, v in trainer.plain_network().state_dict().items())  # the EMA follows the student
    assert trainer.semi_iterations == 2


@pytest.mark.parametrize("rank", [0, 1])
def test_unlabelled_data_are_preprocessed_on_rank_0_while_the_other_ranks_wait(
        semi_trainer, tmp_path: Path, rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2_xlstm.training import semi

    trainer, events = semi_trainer, []
    mro = type(trainer).__mro__
    parent = next(c for c in mro[mro.index(SemiSupervision) + 1:] if "on_train_start" in vars(c))
    monkeypatch.setattr(parent, "on_train_start", lambda self: events.append("labelled loaders"))
    monkeypatch.setattr(semi.dist, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(trainer, "unlabelled_cases", lambda: {"a": [str(tmp_path / "a_0000.nii.gz")]})
    monkeypatch.setattr(trainer, "unlabelled_folder", lambda cases: tmp_path / "cache")
    monkeypatch.setattr(trainer, "preprocess_unlabelled", lambda cases, f: events.append(f"preprocess {f.name}"))
    monkeypatch.setattr(trainer, "get_unlabelled_loader", lambda f: events.append(f"unlabelled loader {f.name}"))
    trainer.local_rank, trainer.is_ddp = rank, True
    trainer.on_train_start()
    assert events == ["preprocess cache"] * (rank == 0) + ["barrier", "labelled loaders", "unlabelled loader cache"]


def test_an_unreadable_unlabelled_image_is_refused_by_name(semi_trainer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "notanimage_0000.nii.gz"
    bad.write_bytes(b"random bytes, not a NIfTI file")
    monkeypatch.setenv(UNLABELLED_ENV, str(tmp_path / "list.txt"))
    (tmp_path / "list.txt").write_text(f"{bad}\n")
    cases = semi_trainer.unlabelled_cases()
    folder = semi_trainer.unlabelled_folder(cases)
    with pytest.raises(InputError, match="cannot read the unlabelled case notanimage.*notanimage_0000.nii.gz.*Remove it"):
        semi_trainer.preprocess_unlabelled(cases, folder)
    assert not (folder / "complete.json").exists()  # nothing marked done


def test_the_training_step_learns_a_learnable_target(semi_trainer) -> None:
    """A floor that a broken training step (no optimiser step, no gradient, a zero learning rate, a loss that ignores
    the target) would miss: labels that are a function of the image are learned within 25 steps."""
    trainer = semi_trainer
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    for group in trainer.optimizer.param_groups:
        group["lr"] = 3e-3
    torch.manual_seed(0)
    x = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in trainer.plain_network()(x)]
    label = (x > 0.5).float() + 2 * (x < -0.5).float()  # 0, 1 or 2 by the voxel's value
    target = [torch.nn.functional.interpolate(label, size=tuple(s), mode="nearest") for s in shapes]
    losses = [float(trainer.train_step({"data": x, "target": target})["loss"]) for _ in range(25)]
    assert losses[-1] < 0.6 * losses[0], losses


def test_progress_plot_names_the_structures(tmp_path: Path) -> None:
    from nnunetv2_xlstm.training.semi import plot_semi_progress

    log = {"train_losses": [1.0, 0.8], "loss_labelled": [0.9, 0.7], "loss_unlabelled": [0.0, 0.4],
           "labelled_dice": [0.2, 0.4], "ema_fg_dice": [0.1, 0.3], "pseudo_share": [float("nan"), 0.5],
           "pseudo_share_per_class": [[float("nan")] * 3, [0.2, 0.5, 0.8]]}
    fig = plot_semi_progress(log, tmp_path, ["RV", "MYO", "LV"])
    unlabelled = fig.axes[0].lines[2].get_ydata()
    assert np.isnan(unlabelled[0]) and unlabelled[1] == 0.4  # the warm start has no unlabelled loss, not a loss of 0
    share = fig.axes[2]
    assert share.get_legend_handles_labels()[1] == ["all", "RV", "MYO", "LV"]
    assert share.lines[3].get_ydata()[1] == 0.8  # each name on its own class's curve
    assert (tmp_path / "progress_semi.png").stat().st_size > 0
