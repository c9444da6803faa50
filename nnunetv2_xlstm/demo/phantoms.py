"""Synthetic whole-heart phantoms (CT in HU, MRI-like) written as an nnU-Net raw data set.

Geometry, in mm with axes (z superior, y anterior, x patient-left) around the volume centre: ellipsoidal chambers,
a myocardial shell around the LV, and the aorta and pulmonary trunk as tubes along polylines. Each case draws a
random rotation, shift, overall scale and per-structure size, then modality intensities, a smooth bias field and
noise. Everything follows from ``seed``: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from nnunetv2_xlstm.datasets import atomic_directory, new_dataset_folder
from nnunetv2_xlstm.env import InputError, error_line, require_env
from nnunetv2_xlstm.labels import WHOLE_HEART_LABELS as L

MODALITIES = ("CT", "MRI")

# chambers: centre (z, y, x) and radii in mm
_CHAMBERS = {
    "RA": ((14.0, -8.0, -28.0), (16.0, 14.0, 13.0)),
    "LA": ((20.0, -24.0, 8.0), (15.0, 14.0, 20.0)),
    "RV": ((-10.0, 14.0, 0.0), (27.0, 21.0, 33.0)),  # large; the myocardium cuts it into a crescent
    "LV": ((-12.0, 2.0, 16.0), (28.0, 16.0, 16.0)),
}
_MYO_THICKNESS = 9.0
# great vessels: polyline (z, y, x) in mm and radius
_VESSELS = {
    "PA": (((4.0, 26.0, -6.0), (30.0, 22.0, 2.0), (40.0, 4.0, 18.0)), 10.0),
    "AO": (((6.0, 4.0, 6.0), (42.0, 6.0, 2.0), (56.0, -14.0, 6.0), (44.0, -38.0, 12.0), (-60.0, -38.0, 12.0)), 10.5),
}
# intensities per tissue: CT in HU (contrast-enhanced, left heart brighter), MRI bSSFP-like in arbitrary units
_INTENSITY = {
    "CT": {"body": 40.0, "lung": -850.0, "MYO": 110.0, "left": 380.0, "right": 260.0},
    "MRI": {"body": 0.45, "lung": 0.07, "MYO": 0.3, "left": 1.0, "right": 0.95},
}


@dataclass(frozen=True)
class PhantomGeometry:
    """Grid of a phantom: ``shape`` voxels (z, y, x) of ``spacing`` mm."""

    shape: tuple[int, int, int] = (48, 48, 48)
    spacing: float = 3.0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-8, 8)), np.deg2rad(rng.uniform(-8, 8)), np.deg2rad(rng.uniform(-15, 15))
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])  # about z (axial plane)
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def make_phantom(rng: np.random.Generator, modality: str,
                 geometry: PhantomGeometry = PhantomGeometry()) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: ``(image float32, label uint8)`` of ``geometry.shape``, labels as in ``labels.WHOLE_HEART_LABELS``."""
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")
    shape, spacing = geometry.shape, geometry.spacing
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in shape], indexing="ij"), -1)
    # heart coordinates: undo the case's rotation, shift and scale
    rot, shift, scale = _rotation(rng), rng.uniform(-8, 8, 3), rng.uniform(0.9, 1.1)
    p = ((grid.reshape(-1, 3) - shift) @ rot) / scale
    label = np.zeros(len(p), np.uint8)

    def ellipsoid(centre, radii, grow: float = 0.0) -> np.ndarray:
        return (((p - np.asarray(centre)) / (np.asarray(radii) + grow)) ** 2).sum(1) <= 1.0

    chambers = {k: (c, np.asarray(r) * rng.uniform(0.92, 1.08, 3)) for k, (c, r) in _CHAMBERS.items()}
    for name in ("RA", "LA", "RV"):
        label[ellipsoid(*chambers[name])] = L[name]
    for name, (pts, radius) in _VESSELS.items():
        pts = np.asarray(pts) + rng.uniform(-2, 2, (len(pts), 3))
        r = radius * rng.uniform(0.9, 1.1)
        d = np.min([_segment_distance(p, a, b) for a, b in zip(pts[:-1], pts[1:])], axis=0)
        label[d <= r] = L[name]
    lv_centre, lv_radii = chambers["LV"]
    myo = ellipsoid(lv_centre, lv_radii, _MYO_THICKNESS) & (p[:, 0] < lv_centre[0] + 0.8 * lv_radii[0])
    label[myo] = L["MYO"]
    label[ellipsoid(lv_centre, lv_radii)] = L["LV"]

    # tissue intensities: body, lungs left and right of the mediastinum, blood pools, myocardium
    val = _INTENSITY[modality]
    image = np.full(len(p), val["body"], np.float32)
    lung = (((p[:, 1:] - [-5.0, 0.0]) / [75.0, 120.0]) ** 2).sum(1) <= 1.0
    lung &= np.abs(p[:, 2]) > 45.0 + 0.15 * p[:, 1]
    image[lung] = val["lung"]
    for name in ("LV", "LA", "AO"):
        image[label == L[name]] = val["left"]
    for name in ("RV", "RA", "PA"):
        image[label == L[name]] = val["right"]
    image[label == L["MYO"]] = val["MYO"]
    image = gaussian_filter(image.reshape(shape), 0.6)  # partial volume

    bias = gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 4)
    bias /= np.abs(bias).max() + 1e-8
    if modality == "CT":
        image = image + 15.0 * bias + rng.normal(0, 20.0, shape)
    else:  # multiplicative coil bias, Rician noise, arbitrary scanner scale
        image = image * np.exp(0.3 * bias)
        image = np.hypot(image + rng.normal(0, 0.04, shape), rng.normal(0, 0.04, shape))
        image *= rng.uniform(400, 1500)
    return image.astype(np.float32), label.reshape(shape)


def _write(array: np.ndarray, path: Path, spacing: float) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(path), useCompression=True)


def write_phantom_dataset(raw_root: Path, dataset_id: int, num_train: int = 10, num_test: int = 4,
                          modalities: tuple[str, ...] = MODALITIES, geometry: PhantomGeometry = PhantomGeometry(),
                          seed: int = 0, name: str = "WholeHeartPhantom", progress: bool = True) -> Path:
    """Write ``raw_root/DatasetXXX_name`` (imagesTr/labelsTr/imagesTs/labelsTs, dataset.json); return its folder.

    Cases alternate between ``modalities``; case ``i`` uses seed ``(seed, i)``. A data set mixing CT and MRI gets
    the channel name ``zscore`` (per-volume z-score, since HU and MRI scales cannot share CT normalisation); CT alone
    gets ``CT``. Written to a temporary folder and renamed, so an interrupted run leaves nothing behind.
    """
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise InputError(f"unknown modality {bad or modalities}: use one or more of {', '.join(MODALITIES)}")
    target = new_dataset_folder(Path(raw_root), dataset_id, name)
    cases = [("Tr", i) for i in range(num_train)] + [("Ts", i) for i in range(num_train, num_train + num_test)]
    with atomic_directory(target) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for split, i in tqdm(cases, desc="phantoms", disable=not progress):
            modality = modalities[i % len(modalities)]
            image, label = make_phantom(np.random.default_rng([seed, i]), modality, geometry)
            case = f"phantom_{i:03d}_{modality}"
            _write(image, tmp / f"images{split}" / f"{case}_0000.nii.gz", geometry.spacing)
            _write(label, tmp / f"labels{split}" / f"{case}.nii.gz", geometry.spacing)
        dataset_json = {
            "channel_names": {"0": "CT" if set(modalities) == {"CT"} else "zscore"},
            "labels": L, "numTraining": num_train, "file_ending": ".nii.gz",
            "name": name, "description": f"synthetic whole-heart phantoms ({', '.join(modalities)}), seed {seed}",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return target


def phantoms_entry(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write synthetic whole-heart phantoms as an nnU-Net raw data set "
                                            "into $nnUNet_raw.")
    p.add_argument("-d", type=int, required=True, help="data set id to create, e.g. 990")
    p.add_argument("--num_train", type=int, default=10)
    p.add_argument("--num_test", type=int, default=4)
    p.add_argument("--modalities", nargs="+", default=list(MODALITIES), help="CT and/or MRI")
    p.add_argument("--size", type=int, default=48, help="voxels per axis")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing in mm")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        if a.num_train < 1 or a.num_test < 0:
            raise InputError(f"--num_train {a.num_train} / --num_test {a.num_test}: give at least 1 training and 0 or "
                             f"more test phantoms")
        if a.size < 16 or not a.spacing > 0:
            raise InputError(f"--size {a.size} / --spacing {a.spacing}: phantoms need at least 16 voxels per axis and "
                             f"a spacing > 0 mm")
        raw = require_env("nnUNet_raw")["nnUNet_raw"]
        out = write_phantom_dataset(raw, a.d, a.num_train, a.num_test, tuple(a.modalities),
                                    PhantomGeometry((a.size,) * 3, a.spacing), a.seed)
    except (InputError, OSError) as e:
        sys.exit(f"nnunetv2_xlstm_phantoms: error: {error_line(e)}")
    print(out)
