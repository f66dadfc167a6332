"""Checks of raw image files that nnU-Net's own readers would not report."""
import numpy as np

from nnunet_mem_cif.errors import PluginUserError


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
