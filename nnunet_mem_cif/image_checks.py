"""Checks of raw image files that nnU-Net's own readers would not report."""
from typing import List, Optional, Sequence, Type

import numpy as np
import SimpleITK as sitk

from nnunet_mem_cif.errors import PluginUserError

# Two images lie on the same voxel grid when spacing and origin agree to this fraction of a voxel and the direction
# cosines to this absolute value: the scale SimpleITK's own physical-space check uses, loose enough for geometry
# that went through a NIfTI header's float32 fields, tight enough to catch a real shift or resampling.
GEOMETRY_TOLERANCE = 1e-4


class InvalidImageError(PluginUserError, ValueError):
    """An image file is corrupt, holds NaN / infinite values or is all zero; the message names the file."""


def check_image_file(path: str) -> None:
    """Readable, finite and not all zero, judged on the values stored in the file.

    Read with nibabel on purpose: ITK's NIfTI reader (SimpleITK, nnU-Net's default reader) silently turns NaN and
    infinite voxels into 0, so a broken scan would otherwise train as if it were fine.
    """
    import nibabel as nib
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel raises several types for truncated gzip / bad headers
        raise InvalidImageError(f"{path}: unreadable or corrupt ({type(e).__name__}: {e}). Replace the file or "
                                f"remove the case.") from e
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InvalidImageError(f"{path}: contains NaN or infinite voxels. Fix the image or remove the case.")
    if not np.any(data):
        raise InvalidImageError(f"{path}: the image is all zero. Fix the image or remove the case.")


def distinct_labels(labels: np.ndarray, source: str, error: Type[PluginUserError] = InvalidImageError) -> List[int]:
    """The sorted label values of a segmentation, refusing non-integer ones (``error`` names the caller's error type).

    A float image with fractional (or NaN) values is a probability map, an intensity image or a segmentation
    resampled with linear interpolation; the integer casts of label lookups and region masks would silently turn it
    into labels. Whole numbers stored as floats are accepted, as nnU-Net's own readers do.
    """
    values = np.unique(labels)
    if values.dtype.kind == "f":
        fractional = values[~np.isfinite(values) | (values != np.round(values))]
        if fractional.size:
            raise error(
                f"{source}: holds non-integer values (e.g. {', '.join(f'{v:g}' for v in fractional[:5])}), so it is "
                f"not a segmentation (a probability map or an image?). Give segmentations with whole-number labels.")
    elif values.dtype.kind not in "biu":
        raise error(f"{source}: pixel type {values.dtype} is not a segmentation's. Give segmentations with "
                    f"whole-number labels.")
    return [int(v) for v in values]


def _rounded(values: Sequence[float]) -> tuple:
    return tuple(round(float(v), 6) for v in values)


def geometry_difference(image: sitk.Image, reference: sitk.Image,
                        tolerance: float = GEOMETRY_TOLERANCE) -> Optional[str]:
    """None when ``image`` lies on ``reference``'s voxel grid; else which property differs, with both values.

    Comparing arrays voxel by voxel is only meaningful on one grid: a prediction of another size, voxel size,
    position or orientation would be scored against the wrong anatomy without any error.
    """
    if image.GetSize() != reference.GetSize():
        return f"size (x, y, z) {image.GetSize()} vs {reference.GetSize()}"
    voxel = np.abs(np.asarray(reference.GetSpacing()))
    for name, value, expected, limit in (("spacing", image.GetSpacing(), reference.GetSpacing(), tolerance * voxel),
                                         ("origin", image.GetOrigin(), reference.GetOrigin(), tolerance * voxel),
                                         ("direction", image.GetDirection(), reference.GetDirection(), tolerance)):
        if np.any(np.abs(np.subtract(value, expected)) > limit):
            return f"{name} {_rounded(value)} vs {_rounded(expected)}"
    return None
