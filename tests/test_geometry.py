"""Pretraining in the fine-tuning geometry: plans -> pretraining -> an export that plans a new data set like itself and
loads strictly, encoder and decoder, into the trainers of those plans; and the pool it records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunetv2_xlstm.checkpoints import load_encoder_into, load_exported_encoder
from nnunetv2_xlstm.demo.phantoms import PhantomGeometry, write_phantom_dataset
from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.planning.plan_and_preprocess import plan_and_preprocess
from nnunetv2_xlstm.training import pretrained as trainers
from nnunetv2_xlstm.training import semi
from nnunetv2_xlstm_pretraining.config import SourceConfig, load_config
from nnunetv2_xlstm_pretraining.data import load_pool, pool_files
from nnunetv2_xlstm_pretraining.model import build_xlstm_unet
from nnunetv2_xlstm_pretraining.train import pretrain
from nnunetv2_xlstm_pretraining.views import MaskedViewDataset, token_grid

# anisotropic phantoms (slices 3x the in-plane spacing), as ACDC's grid is
GEOMETRY = PhantomGeometry((16, 40, 40), 4.0)
PLANNER = {"base_features": 8, "max_features": 32, "batch_size": 2}


def _anisotropic(dataset: Path) -> None:
    """Rewrite every image and label of ``dataset`` with 12 mm between slices (3x the in-plane 4 mm)."""
    import SimpleITK as sitk

    for f in [*dataset.glob("imagesT*/*.nii.gz"), *dataset.glob("labelsT*/*.nii.gz")]:
        image = sitk.ReadImage(str(f))
        image.SetSpacing((4.0, 4.0, 12.0))
        sitk.WriteImage(image, str(f))


def _plan_first(root: Path) -> None:
    dataset = write_phantom_dataset(root / "nnUNet_raw", 981, 4, 2, geometry=GEOMETRY, progress=False)
    _anisotropic(dataset)
    plan_and_preprocess([981], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                        planner_kwargs=PLANNER)


@pytest.fixture
def planned(nnunet_env: dict[str, str], built_once) -> tuple[Path, Path]:
    """A phantom data set planned first (XLSTMUNet plans): (raw folder, plans file)."""
    built_once("plan_first", _plan_first)
    dataset = next(Path(nnunet_env["nnUNet_raw"]).glob("Dataset981_*"))
    return dataset, Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name / "nnUNetPlansXLSTM.json"


def _config(dataset: Path, plans: Path, **overrides):
    sets = {"steps": 2, "plans": str(plans), "exclude_patients": "[phantom_001_MRI]", **overrides}
    config = load_config(preset="smoke", overrides=[f"{k}={v}" for k, v in sets.items()],
                         sources=[SourceConfig(str(dataset), "MRI")])
    config.device = "cpu"
    return config


def test_config_takes_the_plans_geometry(planned: tuple[Path, Path]) -> None:
    dataset, plans_file = planned
    plans = json.loads(plans_file.read_text())
    fullres = plans["configurations"]["3d_fullres"]
    config = _config(dataset, plans_file)
    assert config.target_spacing == fullres["spacing"] and config.target_spacing[0] == 3 * config.target_spacing[1]
    assert config.global_crop_voxels == fullres["patch_size"]
    assert config.global_crop_mm == [p * s for p, s in zip(fullres["patch_size"], fullres["spacing"])]
    strides = fullres["architecture"]["arch_kwargs"]["strides"]
    assert [s[0] for s in strides] != [s[1] for s in strides]  # anisotropic strides, not the presets' isotropic ones
    total = [int(torch.tensor([s[i] for s in strides]).prod()) for i in range(3)]
    assert token_grid(config) == [p // t for p, t in zip(fullres["patch_size"], total)]


def test_pool_in_plans_geometry_is_resampled_padded_and_excludes_patients(planned: tuple[Path, Path]) -> None:
    dataset, plans_file = planned
    config = _config(dataset, plans_file)
    files = [f for _, fs in pool_files(config) for f in fs]
    assert sorted(f.name for f in files) == ["phantom_000_CT_0000.nii.gz", "phantom_002_CT_0000.nii.gz",
                                             "phantom_003_MRI_0000.nii.gz"]  # phantom_001_MRI excluded, imagesTs not taken
    pool = load_pool(config, progress=False)
    patch = config.global_crop_voxels
    for volume in pool:
        assert all(s >= p for s, p in zip(volume.image.shape, patch))
        assert abs(float(volume.image.mean())) < 0.5  # z-scored (zero padding only adds the mean)
    # the phantom's 16 x 40 x 40 voxels at 12 x 4 x 4 mm, at the plans' spacing: nnU-Net's resampled size
    expected = [round(n * s / t) for n, s, t in zip((16, 40, 40), (12.0, 4.0, 4.0), config.target_spacing)]
    assert max(pool[0].image.shape[0], patch[0]) == max(expected[0], patch[0])
    views, masks, _ = MaskedViewDataset(pool, config)[0]
    assert tuple(views.shape[2:]) == tuple(patch) and tuple(masks.shape[1:]) == tuple(token_grid(config))
    with pytest.raises(InputError, match="every image is in exclude_patients"):
        pool_files(_config(dataset, plans_file, exclude_patients="[phantom_000_CT,phantom_001_MRI,phantom_002_CT,phantom_003_MRI]"))


def test_plans_errors_name_the_file(tmp_path: Path, planned: tuple[Path, Path]) -> None:
    dataset, plans_file = planned
    with pytest.raises(InputError, match="does not exist: plan the target data set first"):
        _config(dataset, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json is not JSON"):
        _config(dataset, tmp_path / "bad.json")
    with pytest.raises(InputError, match="no configuration '3d_lowres'"):
        _config(dataset, plans_file, plans_configuration="3d_lowres")
    with pytest.raises(InputError, match="configuration 2d is not 3D"):
        _config(dataset, plans_file, plans_configuration="2d")
    stock = json.loads(plans_file.read_text())
    stock["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "PlainConvUNet"
    (tmp_path / "stock.json").write_text(json.dumps(stock))
    with pytest.raises(InputError, match="not XLSTMUNet"):
        _config(dataset, tmp_path / "stock.json")


def test_geometry_round_trip(tmp_path: Path, planned: tuple[Path, Path], nnunet_env: dict[str, str]) -> None:
    """plans -> pretraining -> the export plans a data set like itself -> strict encoder + decoder load."""
    dataset, plans_file = planned
    fullres = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]
    pretrain(_config(dataset, plans_file), tmp_path / "pre", progress=False)
    export = tmp_path / "pre" / "encoder_export.pt"
    weights, plan = load_exported_encoder(export)
    geometry = plan["pretrain_plan"]["geometry"]
    assert geometry["spacing"] == fullres["spacing"] and geometry["patch_size"] == fullres["patch_size"]
    assert plan["architecture_plans"]["arch_kwargs"] == fullres["architecture"]["arch_kwargs"]
    pool = plan["pretrain_plan"]["pool"]
    assert pool["cases"] == ["phantom_000_CT", "phantom_002_CT", "phantom_003_MRI"] and len(pool["sha256"]) == 64
    assert any(k.startswith("decoder.") for k in weights)

    # a new data set planned after pretraining adopts the encoder's spacing, patch and strides, not its own
    other = write_phantom_dataset(Path(nnunet_env["nnUNet_raw"]), 982, 4, 0, geometry=PhantomGeometry((32, 32, 32), 2.0),
                                  progress=False)
    name = plan_and_preprocess([982], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                               planner_kwargs={"pretrained_encoder": export, "batch_size": 2})
    adopted = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / other.name / f"{name}.json").read_text())
    adopted = adopted["configurations"]["3d_fullres"]
    assert adopted["spacing"] == fullres["spacing"] and adopted["patch_size"] == fullres["patch_size"]
    assert adopted["architecture"]["arch_kwargs"] == fullres["architecture"]["arch_kwargs"]

    # the encoder and the decoder (all but the segmentation heads) load strictly into the plans' network
    net = build_xlstm_unet(fullres["architecture"]["arch_kwargs"], 1, 3)
    report = load_encoder_into(net, export, fullres["architecture"]["arch_kwargs"], 1, decoder=True)
    assert report["fresh"] and all(k.startswith("decoder.seg_layers.") for k in report["fresh"])
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())


def test_pretrained_trainer_refuses_an_encoder_that_saw_its_validation_patients(
        tmp_path: Path, planned: tuple[Path, Path], nnunet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, plans_file = planned
    pretrain(_config(dataset, plans_file, exclude_patients="[]"), tmp_path / "pre", progress=False)  # every case
    export = tmp_path / "pre" / "encoder_export.pt"
    plan_and_preprocess([981], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                        planner_kwargs={"pretrained_encoder": export, "batch_size": 2})
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["phantom_000_CT", "phantom_002_CT"],
                                                            "val": ["phantom_001_MRI", "phantom_003_MRI"]}]))
    for cls in (trainers.nnUNetTrainerXLSTMPretrainedDecoder, semi.nnUNetTrainerXLSTMPretrainedDecoderSemi):
        monkeypatch.delenv("NNUNETV2_XLSTM_TRANSDUCTIVE", raising=False)
        plans = {**json.loads((folder / "nnUNetPlansXLSTMEncoder.json").read_text()), "continue_training": False}
        trainer = cls(plans, "3d_fullres", 0, json.loads((folder / "dataset.json").read_text()), torch.device("cpu"))
        trainer.initialize()
        with pytest.raises(InputError, match=r"pretrained on images of 2 validation or test patient\(s\) "
                                             r"\(phantom_001_MRI, phantom_003_MRI\)"):
            trainer.load_pretrained_encoder()
        monkeypatch.setenv("NNUNETV2_XLSTM_TRANSDUCTIVE", "1")
        trainer.load_pretrained_encoder()
        assert "TRANSDUCTIVE" in Path(trainer.log_file).read_text()
        keys = json.loads((Path(trainer.output_folder) / "pretrained_encoder_keys.json").read_text())
        assert any(k.startswith("decoder.stages.") for k in keys["loaded"])  # the semi trainer loads the decoder too
        assert keys["fresh"] and all(k.startswith("decoder.seg_layers.") for k in keys["fresh"])


@pytest.mark.slow
def test_nnunet_train_fine_tunes_from_the_geometry_export(tmp_path: Path, planned: tuple[Path, Path],
                                                          nnunet_env: dict[str, str]) -> None:
    """The stock command trains the plans' network from the pretrained encoder and decoder."""
    dataset, plans_file = planned
    pretrain(_config(dataset, plans_file, exclude_patients="[phantom_003_MRI]"), tmp_path / "pre", progress=False)
    plan_and_preprocess([981], configurations=["3d_fullres"], num_processes=[1], num_processes_fingerprint=1,
                        planner_kwargs={"pretrained_encoder": tmp_path / "pre" / "encoder_export.pt", "batch_size": 2})
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / dataset.name
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["phantom_000_CT", "phantom_001_MRI", "phantom_002_CT"],
                                                            "val": ["phantom_003_MRI"]}]))
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / "nnUNetv2_train"), "981", "3d_fullres", "0", "-tr",
                           "nnUNetTrainerXLSTMPretrainedDecoder_smoke", "-p", "nnUNetPlansXLSTMEncoder", "-device",
                           "cpu"], env={**nnunet_env, "nnUNet_n_proc_DA": "0"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = Path(nnunet_env["nnUNet_results"]) / dataset.name / \
        "nnUNetTrainerXLSTMPretrainedDecoder_smoke__nnUNetPlansXLSTMEncoder__3d_fullres" / "fold_0"
    keys = json.loads((results / "pretrained_encoder_keys.json").read_text())
    assert any(k.startswith("decoder.stages.") for k in keys["loaded"])
    assert all(k.startswith("decoder.seg_layers.") for k in keys["fresh"])
    assert (results / "checkpoint_final.pth").is_file()
