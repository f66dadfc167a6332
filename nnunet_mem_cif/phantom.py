"""BraTS-like phantom cases from real anatomy, in the official BraTS 2019 folder layout.

Anatomy: the MNI152 (ICBM 2009a) T1 template and its grey / white matter maps that ship inside the nilearn
package (no download). Four contrasts are synthesised from tissue maps the way they differ in real scans:
T1 white > grey > CSF; T2 CSF > grey > white; FLAIR like T2 with CSF suppressed; T1ce like T1. A tumor with a
random position (in white matter), size, irregular shape and sub-region proportions is added: edema (bright on
T2 / FLAIR), an enhancing rim (bright on T1ce) and a necrotic core (dark on T1ce, bright on T2). Each modality
gets its own smooth bias field, noise and a small shift (imperfect co-registration). Labels use BraTS values
(1 necrotic core, 2 edema, 4 enhancing).
"""
import math
import os
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from nnunet_mem_cif.atomic import atomic_folder, check_output_folder, write_atomically
from nnunet_mem_cif.brats import MODALITIES
from nnunet_mem_cif.errors import PluginUserError

# relative intensity of (CSF, grey matter, white matter, edema, enhancing rim, necrotic core) per modality
CONTRASTS: Dict[str, Tuple[float, ...]] = {
    "t1": (0.25, 0.60, 0.90, 0.50, 0.62, 0.30),
    "t1ce": (0.25, 0.62, 0.90, 0.52, 1.35, 0.22),
    "t2": (1.00, 0.65, 0.45, 0.95, 0.70, 1.05),
    "flair": (0.15, 0.65, 0.50, 1.15, 0.85, 0.60),
}


class PhantomError(PluginUserError, ValueError):
    """An argument of ``make-phantom`` no phantom can be made with."""


def load_anatomy(spacing: float) -> Dict[str, np.ndarray]:
    """Tissue probability maps (csf, gm, wm) and the T1 template texture, resampled to ``spacing`` mm."""
    from nilearn import datasets  # only the phantom needs nilearn; keep it off the import path of training
    resolution = 1 if spacing < 2 else 2
    t1 = datasets.load_mni152_template(resolution=resolution).get_fdata()
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0
    zoom = resolution / spacing
    maps = {"t1": t1 / max(t1.max(), 1e-6), "gm": gm, "wm": wm, "brain": brain.astype(float)}
    maps = {k: np.clip(ndimage.zoom(v, zoom, order=1), 0, None) for k, v in maps.items()}
    maps["brain"] = maps["brain"] > 0.5
    tissue = np.clip(maps["gm"] + maps["wm"], 0, 1)
    maps["csf"] = np.where(maps["brain"], 1 - tissue, 0.0)
    return maps


def _smooth_noise(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / max(np.abs(field).max(), 1e-6)


def make_tumor(anatomy: Dict[str, np.ndarray], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) of one random tumor."""
    shape = anatomy["brain"].shape
    candidates = np.argwhere((anatomy["wm"] > 0.6) & anatomy["brain"])
    center = candidates[rng.integers(len(candidates))]
    radius_mm = rng.uniform(12, 26)  # of the tumor core (enhancing rim included); edema extends beyond
    grid = np.indices(shape).astype(float)
    distance = np.sqrt(sum(((grid[i] - center[i]) * spacing) ** 2 for i in range(3)))
    irregular = distance / (1 + 0.35 * _smooth_noise(shape, rng, 6 / spacing))
    necrosis_fraction = rng.uniform(0.4, 0.75)
    edema_radius = radius_mm * rng.uniform(1.25, 1.8)
    labels = np.zeros(shape, np.uint8)
    labels[irregular < edema_radius] = 2
    labels[irregular < radius_mm] = 4
    labels[irregular < necrosis_fraction * radius_mm] = 1
    labels[~anatomy["brain"]] = 0
    return labels


def synthesise_case(anatomy: Dict[str, np.ndarray], labels: np.ndarray, spacing: float,
                    rng: np.random.Generator) -> Dict[str, np.ndarray]:
    tissues = [anatomy["csf"], anatomy["gm"], anatomy["wm"]]
    tumor = [labels == 2, labels == 4, labels == 1]
    in_tumor = labels > 0
    texture = 0.85 + 0.3 * anatomy["t1"]
    images = {}
    for modality in MODALITIES:
        c = CONTRASTS[modality]
        healthy = sum(w * tissue for w, tissue in zip(c[:3], tissues))
        image = np.where(in_tumor, sum(w * region for w, region in zip(c[3:], tumor)), healthy) * texture
        bias = np.exp(0.15 * _smooth_noise(image.shape, rng, 20 / spacing))
        image = image * bias + rng.normal(0, 0.025, image.shape)
        image = ndimage.shift(image * anatomy["brain"], rng.uniform(-0.8, 0.8, 3) / spacing, order=1)
        images[modality] = np.clip(image, 0, None) * 1000
    return images


def _write(array: np.ndarray, path: str, spacing: float, dtype) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype))
    image.SetSpacing((spacing,) * 3)
    write_atomically(path, lambda partial: sitk.WriteImage(image, partial))


def _holds_only_phantom_cases(output_dir: str, prefix: str) -> bool:
    """Whether ``output_dir`` looks like an earlier ``make_phantom`` output (HGG/ holding only phantom case folders),
    the only non-empty folder ``overwrite`` may replace."""
    hgg = os.path.join(output_dir, "HGG")
    return os.listdir(output_dir) == ["HGG"] and os.path.isdir(hgg) and all(
        case.startswith(f"{prefix}_") and os.path.isdir(os.path.join(hgg, case)) for case in os.listdir(hgg))


def check_phantom_arguments(num_cases: int, seed: int, spacing: float) -> None:
    """Refuse arguments no phantom can be made with (NaN and infinity included), before anything is made."""
    if num_cases < 1:
        raise PhantomError(f"--cases must be at least 1, got {num_cases}")
    if seed < 0:
        raise PhantomError(f"--seed must be 0 or more, got {seed}")
    if not (math.isfinite(spacing) and 0.5 <= spacing <= 8):
        raise PhantomError(f"--spacing must be between 0.5 and 8 mm, got {spacing}")


def make_phantom(output_dir: str, num_cases: int, seed: int = 0, spacing: float = 1.0,
                 prefix: str = "BraTS19_PHANTOM", overwrite: bool = False) -> List[str]:
    """Write ``output_dir/HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; returns the case ids.

    Arguments and ``output_dir`` are checked before anything is made; the folder appears complete or not at all
    (``atomic_folder``). An earlier phantom there is replaced whole only with ``overwrite``; a folder holding
    anything else is never written into.
    """
    check_phantom_arguments(num_cases, seed, spacing)
    check_output_folder(output_dir, overwrite, lambda folder: _holds_only_phantom_cases(folder, prefix))
    anatomy = load_anatomy(spacing)
    rng = np.random.default_rng(seed)
    cases = []
    with atomic_folder(output_dir, overwrite) as partial:
        for i in tqdm(range(num_cases), desc="Making phantom cases", unit="case"):
            case = f"{prefix}_{i:03d}"
            folder = os.path.join(partial, "HGG", case)
            os.makedirs(folder)
            labels = make_tumor(anatomy, spacing, rng)
            for modality, image in synthesise_case(anatomy, labels, spacing, rng).items():
                _write(image, os.path.join(folder, f"{case}_{modality}.nii.gz"), spacing, np.float32)
            _write(labels, os.path.join(folder, f"{case}_seg.nii.gz"), spacing, np.uint8)
            cases.append(case)
    return cases
