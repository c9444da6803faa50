"""Bad input that used to pass without a word, and model files that could run code: one case each, easy to extend.

Each case names the command's input and what the user must see: a refusal (one line, the file and the fix) or a
console warning where the input is legal but suspicious. Planted payloads would create a file if unpickled.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_xlstm.check import check_entry, predict_entry
from nnunetv2_xlstm.demo.phantoms import phantoms_entry
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.evaluation import LabelSpec, evaluate_folder
from nnunetv2_xlstm.training.refusals import check_pretrained_weights_argument
from nnunetv2_xlstm.training.scheduled import MINUTES_ENV, _env_number
from nnunetv2_xlstm_pretraining.cli import pretrain_entry
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.data import load_pool

from test_pretraining import body_phantom, write_volume


class Payload:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def plant(tmp_path: Path, name: str = "checkpoint_final.pth") -> tuple[Path, Path]:
    """A checkpoint-shaped file carrying a payload; returns (file, the file the payload would create)."""
    marker = tmp_path / "payload_ran"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "init_args": Payload(marker)}, tmp_path / name,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return tmp_path / name, marker


# ------------------------------------------------------------------------------------------ silent cases, refused
@pytest.mark.parametrize("setting, message", [
    ("steps=-3", "steps -3 must be >= 1"),
    ("batch_size=0", "batch_size 0 must be >= 1"),
    ("lr=nan", "lr nan must be a finite number > 0"),
    ("ct_fraction=1.5", r"ct_fraction 1.5 must lie in \[0, 1\]"),
])
def test_pretraining_settings_are_refused_before_any_file(tmp_path: Path, setting: str, message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=message):
        pretrain_entry(["--preset", "smoke", "--output", str(out), "--source", f"{tmp_path}:MRI", "--set", setting])
    assert not out.exists()


def test_unknown_hu_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="hu='maybe' is not auto, true or false"):
        pretrain_entry(["--preset", "smoke", "--output", str(tmp_path / "run"), "--source", f"{tmp_path}:CT:hu=maybe"])


def test_missing_source_leaves_no_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="does not exist"):
        pretrain_entry(["--preset", "smoke", "--output", str(out), "--source", f"{tmp_path / 'nothing'}:MRI"])
    assert not out.exists()


def test_demo_refuses_a_labelled_count_before_generating_anything(tmp_path: Path) -> None:
    from nnunetv2_xlstm.demo.run_demo import demo_entry

    with pytest.raises(SystemExit, match="--labelled 100 with 10 training phantoms"):
        demo_entry(["--output", str(tmp_path / "demo"), "--labelled", "100"])
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "ten"])
def test_time_budget_must_be_a_finite_positive_number(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(MINUTES_ENV, value)
    with pytest.raises(InputError, match=f"{MINUTES_ENV}="):
        _env_number(MINUTES_ENV, float, 1e-3)


@pytest.mark.parametrize("args, message", [
    (["--num_train", "-2"], "--num_train -2"),
    (["--size", "0"], "--size 0"),
])
def test_phantom_sizes_are_refused(nnunet_env: dict[str, str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        phantoms_entry(["-d", "977", *args])
    assert not list(Path(nnunet_env["nnUNet_raw"]).iterdir())


# ------------------------------------------------------------------------------- legal but suspicious: a warning
def test_constant_and_non_hu_volumes_warn_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    write_volume(tmp_path / "mri" / "flat.nii.gz", np.zeros((28, 28, 28)))
    write_volume(tmp_path / "mri" / "fine.nii.gz", body_phantom(rng, "MRI"))
    write_volume(tmp_path / "ct" / "eightbit.nii.gz", np.clip(body_phantom(rng, "CT") / 8 + 128, 0, 255))
    config = load_config(preset="smoke", sources=[SourceConfig(str(tmp_path / "mri"), "MRI"),
                                                  SourceConfig(str(tmp_path / "ct"), "CT", True)])
    load_pool(config, progress=False)
    err = capsys.readouterr().err
    assert "flat.nii.gz is constant" in err and "fine.nii.gz" not in err
    assert "eightbit.nii.gz is declared hu=true" in err and "set hu=false" in err


def _label(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))
    return path


def test_a_structure_found_in_no_reference_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    label = np.zeros((4, 8, 8))
    label[1:3, 2:6, 2:6] = 1
    _label(tmp_path / "ref" / "a.nii.gz", label)
    _label(tmp_path / "pred" / "a.nii.gz", label)
    result = evaluate_folder(tmp_path / "ref", tmp_path / "pred", LabelSpec({"LV": 1, "XX": 42}))
    assert result["mean"]["XX"]["Dice"] == 1.0  # the convention stays ...
    err = capsys.readouterr().err
    assert "structure XX=42 appears in no reference file" in err and "LV=1" not in err  # ... but it is flagged


def test_a_4d_prediction_is_refused_by_name(tmp_path: Path) -> None:
    _label(tmp_path / "ref" / "a.nii.gz", np.zeros((4, 8, 8)))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8))] * 2),
                    str(tmp_path / "pred" / "a.nii.gz"))
    with pytest.raises(InputError, match=r"pred/a.nii.gz is a 4D image .* give one 3D single-channel label"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", LabelSpec({"LV": 1}))


# ------------------------------------------------------------------------------------ model files that run code
def test_pretrained_weights_with_a_payload_are_refused_unrun(tmp_path: Path) -> None:
    planted, marker = plant(tmp_path, "weights.pth")
    with pytest.raises(InputError, match="refusing -pretrained_weights .*weights.pth"):
        check_pretrained_weights_argument(["nnUNetv2_train", "1", "3d_fullres", "0", "-pretrained_weights",
                                           str(planted)])
    assert not marker.exists()
    safe = tmp_path / "safe.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}}, safe)
    check_pretrained_weights_argument(["nnUNetv2_train", "-pretrained_weights", str(safe)])  # plain file: accepted


def test_check_command_refuses_a_planted_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "results" / "fold_0"
    folder.mkdir(parents=True)
    planted, marker = plant(folder)
    torch.save({"network_weights": {"w": torch.zeros(1)}}, folder / "checkpoint_best.pth")
    with pytest.raises(SystemExit, match="1 of 2 file"):
        check_entry([str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert f"REFUSED  {planted}" in out and f"safe  {folder / 'checkpoint_best.pth'}" in out
    assert not marker.exists()


def test_predict_refuses_truncated_and_planted_checkpoints_before_nnunet(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import nnunetv2.inference.predict_from_raw_data as stock
    import nnunetv2.utilities.file_path_utilities as paths

    monkeypatch.setattr(paths, "nnUNet_results", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["pytest"])  # predict_entry hands nnU-Net its arguments through sys.argv
    monkeypatch.setattr(stock, "predict_entry_point", lambda: pytest.fail("nnUNetv2_predict reached"))
    fold0 = tmp_path / "Dataset999_X" / "nnUNetTrainerXLSTM__nnUNetPlansXLSTM__3d_fullres" / "fold_0"
    fold0.mkdir(parents=True)
    good = {"network_weights": {"w": torch.zeros(1000)}, "logging": {"x": [np.float64(1.0)]}}
    torch.save(good, fold0 / "checkpoint_final.pth")
    argv = ["-i", "in", "-o", "out", "-d", "Dataset999_X", "-c", "3d_fullres", "-tr", "nnUNetTrainerXLSTM",
            "-p", "nnUNetPlansXLSTM"]
    with pytest.raises(SystemExit, match=r"fold_1/checkpoint_final.pth does not exist: train that fold"):
        predict_entry(argv)  # nnU-Net's default folds 0-4
    data = (fold0 / "checkpoint_final.pth").read_bytes()
    (fold0 / "checkpoint_final.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match=r"error: .*fold_0/checkpoint_final.pth is not a readable checkpoint"):
        predict_entry([*argv, "-f", "0"])
    planted, marker = plant(fold0)
    with pytest.raises(SystemExit, match=r"fold_0/checkpoint_final.pth is not a readable checkpoint"):
        predict_entry([*argv, "-f", "0"])
    assert not marker.exists()
    torch.save(good, fold0 / "checkpoint_final.pth")
    reached = []
    monkeypatch.setattr(stock, "predict_entry_point", lambda: reached.append(list(sys.argv)))
    predict_entry([*argv, "-f", "0"])  # a safe checkpoint: nnU-Net's own prediction with the same arguments
    assert reached == [["nnUNetv2_predict", *argv, "-f", "0"]]


def test_an_export_that_does_not_fit_its_own_architecture_is_refused_before_planning(
        tmp_path: Path, nnunet_env: dict[str, str]) -> None:
    from nnunetv2_xlstm.checkpoints import save_exported_encoder
    from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
    from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess

    from test_finetuning import export_encoder

    plan = export_encoder(tmp_path / "enc.pt")
    weights = torch.load(tmp_path / "enc.pt", weights_only=True)["network_weights"]
    key = next(k for k in weights if k.endswith("conv.weight"))
    save_exported_encoder(tmp_path / "bad.pt", {**weights, key: torch.zeros(3, 3)}, plan)
    write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 976, 2, 0, geometry=PhantomGeometry((24, 24, 24), 4.5),
                          progress=False)
    with pytest.raises(InputError, match=r"bad.pt does not fit .* of another shape"):
        plan_and_preprocess([976], configurations=["3d_fullres"], planner_kwargs={"pretrained_encoder": tmp_path / "bad.pt"})
    assert not list(Path(nnunet_env["nnUNet_preprocessed"]).iterdir())  # refused before anything was written


# ------------------------------------------------------------------------------------------ read-only and full disks
def test_a_file_system_error_is_one_line_naming_the_file_and_the_fix() -> None:
    import errno

    from nnunetv2_xlstm.env import error_line

    line = error_line(OSError(errno.EROFS, "Read-only file system", "/data/out/splits_final.json"))
    assert line == ("cannot write or read /data/out/splits_final.json: Read-only file system (the file system is "
                    "read-only: write to another folder)")
    assert "the disk is full" in error_line(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert error_line(InputError("as it was")) == "as it was"


def test_split_on_a_read_only_folder_is_one_line(nnunet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    import errno

    from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
    from nnunetv2_xlstm.splits import split_entry

    write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 987, 4, 0, geometry=PhantomGeometry((16, 16, 16), 9.0),
                          progress=False)

    def read_only(self, *args, **kwargs):  # what mkdir raises on a read-only mount (root ignores chmod)
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as e:
        split_entry(["-d", "987", "--budget", "2", "--folds", "1"])
    assert str(e.value).startswith("nnunetv2_xlstm_split: error: cannot write") and "read-only" in str(e.value)
    assert "Traceback" not in capsys.readouterr().err


def test_a_full_disk_is_named_when_the_writer_says_something_else(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    from nnunetv2_xlstm.atomic import atomic_write
    from nnunetv2_xlstm.conversion.common import write_image

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1024, 1024))

    def torch_on_a_full_disk(tmp: str) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed (unexpected pos 64 vs 128)")

    with pytest.raises(InputError, match=r"cannot write .*export.pt: the disk is full \(0.0 MiB free"):
        atomic_write(tmp_path / "run" / "export.pt", torch_on_a_full_disk)
    assert not list((tmp_path / "run").iterdir())  # no half-written temporary file left
    monkeypatch.setattr(sitk, "WriteImage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("ITK ERROR")))
    with pytest.raises(InputError, match="labelsTr.case.nii.gz: the disk is full"):
        write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), tmp_path / "labelsTr" / "case.nii.gz")
    # with space left, an unrelated failure is not called a full disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 0, 10 ** 12))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(tmp_path / "run" / "export.pt", torch_on_a_full_disk)
