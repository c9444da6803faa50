"""Reading images for every command: one reader that refuses what SimpleITK would read wrongly or vaguely.

SimpleITK reads a truncated ``.nii.gz`` as a volume zero-filled past the cut, without an error. :func:`read_image`
refuses empty files and checks that a ``.nii.gz`` is whole without decompressing it a second time: the gzip trailer's
uncompressed size must equal what the NIfTI header describes (header, extensions and voxels). A file whose trailer
disagrees, or any other ``.gz``, has its whole gzip stream read (CRC and end-of-stream marker), so a broken download
is named instead of trained on or scored. :func:`check_same_geometry` compares an image and its label field by field.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_xlstm.env import InputError


def check_complete(path: str | Path) -> None:
    """:class:`InputError` naming ``path`` if it is missing, empty, or a gzip file that is truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); copy or convert it again")
    if path.name.lower().endswith(".gz") and not _nifti_gzip_size_matches(path):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        except (EOFError, OSError, zlib.error) as e:
            raise InputError(f"{path} is truncated or corrupt ({e}); copy or download it again") from None


def _nifti_gzip_size_matches(path: Path) -> bool:
    """Whether the gzip trailer of a ``.nii.gz`` (uncompressed size mod 2^32) equals the size its NIfTI-1/2 header
    gives; reads only the header and the last 4 bytes. ``False`` for anything else (then the whole stream is read)."""
    if not path.name.lower().endswith(".nii.gz"):
        return False
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(540)
        with open(path, "rb") as f:
            f.seek(-4, 2)
            stored = struct.unpack("<I", f.read(4))[0]
    except (EOFError, OSError, zlib.error):
        return False
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:  # NIfTI-1
            dims, bitpix = struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) == 540 and struct.unpack(order + "i", header[:4])[0] == 540:  # NIfTI-2
            dims, bitpix = struct.unpack(order + "8q", header[16:80]), struct.unpack(order + "h", header[14:16])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return False
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or offset < 348:
        return False
    voxels = 1
    for d in dims[1:dims[0] + 1]:
        voxels *= max(int(d), 1)
    return (int(offset) + voxels * bitpix // 8) % 2 ** 32 == stored


def read_image(path: str | Path, what: str = "") -> sitk.Image:
    """The image at ``path`` (checked by :func:`check_complete`); :class:`InputError` naming the file otherwise.
    ``what`` adds a hint to the error (e.g. "remove it from the source")."""
    check_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise InputError(f"cannot read {path} ({reason}); is it an image file?" + (f" {what}" if what else "")) from None


def check_same_geometry(image: sitk.Image, image_path: str | Path, label: sitk.Image, label_path: str | Path) -> None:
    """Refuse a label whose size, spacing, origin or direction differ from its image's, naming both files and every
    field that differs."""
    if (image.GetDimension(), image.GetNumberOfComponentsPerPixel()) != (label.GetDimension(),
                                                                          label.GetNumberOfComponentsPerPixel()):
        raise InputError(f"{label_path} is a {label.GetDimension()}D image with {label.GetNumberOfComponentsPerPixel()} "
                         f"component(s), {image_path} a {image.GetDimension()}D one with "
                         f"{image.GetNumberOfComponentsPerPixel()}: give one 3D single-channel label per image")
    fields = [("size", image.GetSize(), label.GetSize(), lambda a, b: a == b),
              ("spacing", image.GetSpacing(), label.GetSpacing(), lambda a, b: np.allclose(a, b, rtol=1e-3)),
              ("origin", image.GetOrigin(), label.GetOrigin(), lambda a, b: np.allclose(a, b, atol=1e-2)),
              ("direction", image.GetDirection(), label.GetDirection(), lambda a, b: np.allclose(a, b, atol=1e-3))]
    differ = [f"{name} {_fmt(b)} vs {_fmt(a)}" for name, a, b, same in fields if not same(a, b)]
    if differ:
        raise InputError(f"{label_path} does not match {image_path}: {'; '.join(differ)} (label vs image). Resample or "
                         f"fix the header of one of them")


def label_array(image: sitk.Image, path: str | Path, allowed: set[int] | None = None) -> np.ndarray:
    """The values of a label image as int64; :class:`InputError` naming ``path`` for NaN, non-integer or negative
    values, and for values not in ``allowed`` (e.g. the labels ``dataset.json`` declares)."""
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{path} holds NaN or infinite values; a label file holds integers")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{path} holds non-integer values (e.g. {array[array != np.round(array)][0]}); a label "
                             f"file holds integers: is it an image or a probability map?")
    values = np.unique(array).astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(f"{path} holds negative label values ({values[values < 0].tolist()[:5]})")
    if allowed is not None and set(values.tolist()) - allowed:
        raise InputError(f"{path} holds label values {sorted(set(values.tolist()) - allowed)} that dataset.json does "
                         f"not declare ({sorted(allowed)})")
    return array.astype(np.int64)


def _fmt(values: tuple) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
