"""The unlabeled pool: sources -> checked, resampled, normalised volumes; crop geometry; modality-balanced sampling."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.filters import threshold_otsu
from tqdm import tqdm

from nnunetv2_xlstm.env import InputError
from nnunetv2_xlstm.imageio import read_image
from nnunetv2_xlstm.leakage import case_id, patients_of
from nnunetv2_xlstm_pretraining.config import PretrainConfig, SourceConfig
from nnunetv2_xlstm_pretraining.geometry import PlansGeometry, plans_geometry

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mnc", ".img")


@dataclass(frozen=True)
class CTStats:
    """nnU-Net CTNormalization statistics of a CT source: clip window and foreground mean/std, in HU."""

    lower: float
    upper: float
    mean: float
    std: float


@dataclass
class Volume:
    """One pool volume at the target spacing: normalised ``image`` (z, y, x) and foreground voxel indices."""

    path: str
    modality: str
    normalisation: str  # "ct_hu" or "zscore"
    image: np.ndarray
    foreground: np.ndarray  # (N, 3) int32 voxel indices inside the body mask


def list_source_files(source: SourceConfig) -> list[Path]:
    """The image files of a source: an nnU-Net raw data set (channel-0 images of imagesTr; its imagesTs only when
    named as a folder source of its own, since test images stay out of a pool unless asked for), a folder
    (searched recursively), a single image, or a ``.txt`` list of image paths, one per line (relative ones from the
    list's folder), such as ``nnunetv2_xlstm_split``'s ``unlabelled_fold0.txt``."""
    root = Path(source.path)
    if not root.exists():
        raise InputError(f"source {root} does not exist: fix its 'path' in the config's sources")
    if root.is_file() and root.suffix == ".txt":
        files = [root.parent / line.strip() for line in root.read_text().splitlines() if line.strip()]
        missing = [str(f) for f in files if not f.is_file()]
        if missing or not files:
            raise InputError(f"source list {root} " + (f"names missing files ({', '.join(missing[:3])})" if missing
                             else "is empty") + "; write one existing image path per line")
        return files
    if root.is_file():
        return [root]
    if (root / "dataset.json").is_file():
        try:
            ending = json.loads((root / "dataset.json").read_text()).get("file_ending", ".nii.gz")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{root / 'dataset.json'} is not JSON ({e}): fix it, or give the images folder "
                             f"{root / 'imagesTr'} as the source instead") from None
        files = sorted((root / "imagesTr").glob(f"*_0000{ending}"))
    else:
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputError(f"source {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); point 'path' at a folder of "
                         f"images or an nnU-Net raw data set, or remove the source")
    return files


def read_checked(path: Path) -> sitk.Image:
    """Read a 3D single-channel image; :class:`InputError` naming the file for unreadable, non-3D or multi-channel
    images and NaN/Inf voxels."""
    image = read_image(path, "Convert it to NIfTI or remove it from the source.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                         f"component(s); pretraining takes 3D single-channel images: split series into 3D files")
    array = sitk.GetArrayViewFromImage(image)
    bad = int(np.size(array) - np.isfinite(array).sum())
    if bad:
        raise InputError(f"{path} has {bad} NaN/Inf voxels; fix the file or remove it from the source")
    return image


def read_resampled(path: Path, target_spacing: list[float]) -> np.ndarray:
    """Read a checked image (:func:`read_checked`) and resample it (linear) to ``target_spacing`` (z, y, x) mm;
    float32 array."""
    image = read_checked(path)
    spacing_xyz = [float(s) for s in reversed(target_spacing)]
    size = [max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz)]
    resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                              image.GetOrigin(), spacing_xyz, image.GetDirection(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def read_like_plans(path: Path, geometry: PlansGeometry, resample) -> np.ndarray:
    """Read a checked image as nnU-Net's preprocessing of ``geometry``'s plans does: axes transposed by
    ``transpose_forward``, resampled to the configuration's spacing with its own resampling function ``resample``
    (:meth:`PlansGeometry.resampler`); float32 array."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    image = read_checked(path)
    order = geometry.transpose_forward
    array = sitk.GetArrayFromImage(image).astype(np.float32).transpose(order)
    spacing = [list(reversed(image.GetSpacing()))[i] for i in order]
    shape = compute_new_shape(array.shape, spacing, geometry.spacing)
    return np.asarray(resample(array[None], shape, spacing, geometry.spacing)[0], dtype=np.float32)


def pad_to(image: np.ndarray, shape: list[int]) -> np.ndarray:
    """``image`` padded with zeros (the normalised mean) on both sides of every axis shorter than ``shape``, as
    nnU-Net's data loader pads patches larger than a case."""
    pad = [(max(0, n - s) // 2, max(0, n - s) - max(0, n - s) // 2) for s, n in zip(image.shape, shape)]
    return np.pad(image, pad) if any(sum(p) for p in pad) else image


def looks_like_hu(image: np.ndarray) -> bool:
    """CT intensities in Hounsfield units: air or lung near -1000 and soft tissue/contrast above 100."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    return bool(lo <= -500 and hi >= 100)


def ct_statistics(images: list[np.ndarray]) -> CTStats:
    """Clip window (0.5/99.5 percentiles) and mean/std of the body voxels (> -500 HU) of HU volumes, pooled."""
    voxels = np.concatenate([im[im > -500][:: max(1, im.size // 200_000)] for im in images])
    if voxels.size == 0:
        raise InputError("no voxel above -500 HU in this CT source; set hu: false for it")
    lower, upper = np.percentile(voxels, (0.5, 99.5))
    clipped = np.clip(voxels, lower, upper)
    return CTStats(float(lower), float(upper), float(clipped.mean()), float(max(clipped.std(), 1e-8)))


def normalise_ct(image: np.ndarray, stats: CTStats) -> np.ndarray:
    """nnU-Net CTNormalization: clip to the source's window, z-score with its foreground mean/std."""
    return ((np.clip(image, stats.lower, stats.upper) - stats.mean) / stats.std).astype(np.float32)


def zscore(image: np.ndarray) -> np.ndarray:
    """Per-volume z-score (nnU-Net ZScoreNormalization without mask): MRI, and CT that is not in HU."""
    return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)


def foreground_voxels(image: np.ndarray, max_points: int = 20_000) -> np.ndarray:
    """Indices of voxels above the volume's Otsu threshold (the body), subsampled to ``max_points``."""
    idx = np.argwhere(image > threshold_otsu(image[::2, ::2, ::2]))
    return idx[:: max(1, len(idx) // max_points)].astype(np.int32)


def min_crop_mm(config: PretrainConfig) -> np.ndarray:
    """The smallest global crop (mm per axis): every volume must hold it."""
    return np.asarray(config.global_crop_mm) * config.global_scale[0]


def pool_files(config: PretrainConfig) -> list[tuple[SourceConfig, list[Path]]]:
    """Each source with its image files, the cases of ``exclude_patients`` left out; :class:`InputError` for a
    source left empty or a pool without sources."""
    if not config.sources:
        raise InputError("no sources: add at least one under 'sources' in the config, or pass --source PATH:MODALITY")
    excluded = set(config.exclude_patients)
    out = []
    for source in config.sources:
        files = list_source_files(source)
        kept = [f for f in files if not (patients_of([case_id(f)]) | {case_id(f)}) & excluded]
        if not kept:
            raise InputError(f"source {source.path}: every image is in exclude_patients; remove the source")
        out.append((source, kept))
    return out


def load_pool(config: PretrainConfig, progress: bool = True) -> list[Volume]:
    """Read every source into memory, checked, resampled and normalised per modality (see module docstring). With
    ``plans``, in the plans' geometry (:func:`read_like_plans`), and padded to at least the patch size."""
    spacing = np.asarray(config.target_spacing)
    geometry = plans_geometry(config)
    resample = geometry.resampler() if geometry is not None else None
    pool: list[Volume] = []
    for source, files in pool_files(config):
        desc = f"reading {Path(source.path).name} ({source.modality})"
        images = [read_like_plans(f, geometry, resample) if geometry else read_resampled(f, config.target_spacing)
                  for f in tqdm(files, desc=desc, disable=not progress)]
        for f, im in zip(files, images):
            if geometry is None and np.any(np.asarray(im.shape) * spacing < min_crop_mm(config)):
                raise InputError(
                    f"{f} is {np.round(np.asarray(im.shape) * spacing, 1).tolist()} mm at the target spacing, smaller "
                    f"than the smallest global crop {min_crop_mm(config).round(1).tolist()} mm: lower global_crop_mm "
                    f"or global_scale, or remove the file")
        hu = [source.modality == "CT" and (looks_like_hu(im) if source.hu == "auto" else bool(source.hu))
              for im in images]
        for f, im, h in zip(files, images, hu):
            if float(im.std()) == 0:
                warn(f"{f} is constant ({float(im.flat[0]):g} everywhere): it teaches nothing; remove it from the "
                     f"source")
            elif h and source.hu is True and not looks_like_hu(im):
                lo, hi = np.percentile(im, (0.5, 99.5))
                warn(f"{f} is declared hu=true but its values span {lo:g}..{hi:g}, not Hounsfield units (air near "
                     f"-1000): set hu=false or hu=auto for its source")
        stats = ct_statistics([im for im, h in zip(images, hu) if h]) if any(hu) else None
        for f, im, h in zip(files, images, hu):
            image = normalise_ct(im, stats) if h else zscore(im)
            if geometry is not None:
                image = pad_to(image, config.global_crop_voxels)
            pool.append(Volume(str(f), source.modality, "ct_hu" if h else "zscore", image, foreground_voxels(image)))
    return pool


def warn(message: str) -> None:
    """A console warning about an input that is legal but suspicious (and the pretraining log's)."""
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
    logging.getLogger("nnunetv2_xlstm_pretraining").warning(message)


def sample_volume(pool: list[Volume], rng: np.random.Generator, ct_fraction: float) -> Volume:
    """Draw a modality (CT with probability ``ct_fraction`` when both exist), then a volume of it uniformly."""
    ct = [v for v in pool if v.modality == "CT"]
    mri = [v for v in pool if v.modality != "CT"]
    group = ct if (ct and (not mri or rng.random() < ct_fraction)) else mri
    return group[rng.integers(len(group))]


def sample_anchor(volume: Volume, rng: np.random.Generator, foreground_fraction: float) -> np.ndarray:
    """A voxel inside the body mask with probability ``foreground_fraction``, else anywhere: the centre of a sample's
    views."""
    if len(volume.foreground) and rng.random() < foreground_fraction:
        return volume.foreground[rng.integers(len(volume.foreground))].astype(float)
    return rng.uniform(0, volume.image.shape)


def sample_crop_box(volume: Volume, rng: np.random.Generator, crop_mm: np.ndarray, scale: tuple[float, float],
                    spacing: np.ndarray, anchor: np.ndarray, max_shift_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A crop of physical size ``scale * crop_mm`` (scale uniform in ``scale``, isotropic, clamped to the volume),
    centred within ``max_shift_mm`` of ``anchor`` (voxel coordinates); returns (start, size) in voxels, inside the
    volume. Sharing the anchor makes a sample's views overlap, as DINO's crops of one object-centred image do."""
    shape = np.asarray(volume.image.shape)
    size = np.clip(np.round(crop_mm * rng.uniform(*scale) / spacing).astype(int), 1, shape)
    centre = np.round(anchor + rng.uniform(-max_shift_mm, max_shift_mm, 3) / spacing).astype(int)
    start = np.clip(centre - size // 2, 0, shape - size)
    return start, size
