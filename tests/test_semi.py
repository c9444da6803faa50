"""Semi-supervised training: copy-paste geometry, pseudo-label masking, the unlabelled list, and the trainer through
nnU-Net's own command (teacher in the checkpoint, restored on --c)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunetv2_xlstm.checkpoints import load_nnunet_checkpoint
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.training.copy_paste import box_mask, mix, mixed_targets, pseudo_labels
from nnunetv2_xlstm.training.semi import UNLABELLED_ENV, case_of, unlabelled_image_files

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
    # warm start 20 % of 2 epochs: epoch 0 labelled-only, epoch 1 semi-supervised
    done = subprocess.run(train, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = Path(nnunet_env["nnUNet_results"]) / dataset.name / "nnUNetTrainerXLSTMSemi_smoke__nnUNetPlansXLSTM__3d_fullres" / "fold_0"
    checkpoint = load_nnunet_checkpoint(folder / "checkpoint_final.pth")
    teacher, student = checkpoint["teacher_weights"], checkpoint["network_weights"]
    assert checkpoint["teacher_started"] and set(teacher) == set(student)
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
    assert bad.returncode != 0 and "labelled case" in bad.stdout + bad.stderr
