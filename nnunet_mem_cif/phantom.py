"""BraTS-like phantom cases from real anatomy, in the official BraTS 2019 folder layout.

Anatomy: the MNI152 (ICBM 2009a) T1 template and its grey / white matter maps that ship inside the nilearn
package (no download). Four contrasts are synthesised from tissue maps the way they differ in real scans:
T1 white > grey > CSF; T2 CSF > grey > white; FLAIR like T2 with CSF suppressed; T1ce like T1. A tumor with a
random position, size, irregular shape and sub-region proportions is added: edema (bright on T2 / FLAIR), an
enhancing rim (bright on T1ce) and a necrotic core (dark on T1ce, bright on T2). Each case comes from one of a few
simulated sites (scanner and protocol: contrast, bias field, noise, slice thickness of T2 / FLAIR), and each
modality gets its own small shift (imperfect co-registration). Every range, and where it comes from, is in
docs/phantom.md; ``VARIATION`` below holds them, and ``VARIATIONS[2]`` what the second evidence table adds (more
sites, weak and non-enhancing rims, satellite foci). Labels use BraTS values (1 necrotic or non-enhancing core,
2 edema, 4 enhancing).
"""
import math
import os
from typing import Dict, List, NamedTuple, Tuple

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


# docs/phantom.md: each range with its source. Fixed before the evidence table (docs/results.md) first ran.
VARIATION = {
    "core_radius_mm": (10.0, 24.0),         # tumor core (enhancing rim + necrosis) radius -> 4-58 cm^3
    "edema_factor": (1.2, 1.9),             # whole-tumor radius / core radius -> whole tumor ~7-400 cm^3
    "necrosis_radius_fraction": (0.45, 0.8),  # necrosis radius / core radius -> 9-51 % of the core
    "shape_irregularity": 0.35,             # relative radius modulation by smooth noise
    "sites": 4,                             # scanners / protocols; a case is from one site
    "site_gamma": (0.75, 1.33),             # per site and modality: contrast curve (intensity ** gamma)
    "site_tissue_contrast": (0.9, 1.1),     # per site, modality and tissue: relative intensity factor
    "site_bias_amplitude": (0.1, 0.3),      # per site: smooth multiplicative bias field, +- this much
    "site_noise": (0.015, 0.05),            # per site: Gaussian noise std (tissue intensities are 0.15-1.35)
    "site_slice_thickness_mm": (1.0, 1.0, 3.0, 5.0),  # per site, of T2 and FLAIR (2D acquisitions)
    "misregistration_mm": 1.5,              # per modality: uniform shift in +- this, each axis
}
# Variation 2 (docs/phantom.md, "Variation 2"): what variation 1 leaves out and BraTS 2019 has, so that a few labeled
# cases cover less of it than many do. Variation 1 stays as it is: the committed tables, the tests and the demo ran on
# it, and its cases come out bit-identical (variation 2 draws its extra numbers after variation 1's).
VARIATIONS = {1: VARIATION, 2: {
    **VARIATION,
    "sites": 19,                            # BraTS 2017-2019 training data: 19 institutions
    "enhancement": (0.3, 1.0),              # per case: T1ce rim intensity above white matter, x this
    "non_enhancing_fraction": (0.0, 0.6),   # per case: part of the rim that is solid non-enhancing tumor (label 1)
    "satellite_probability": 0.2,           # per case: a second, separate focus (multifocal glioblastoma)
    "satellite_core_radius_mm": (6.0, 12.0),
}}
# relative intensity of solid non-enhancing tumor (variation 2) per modality, on CONTRASTS' scale: no enhancement,
# T2 / FLAIR bright but less than edema (kept out of CONTRASTS so that variation 1's site draws stay as they were)
NON_ENHANCING = {"t1": 0.55, "t1ce": 0.58, "t2": 0.80, "flair": 0.95}


class Tumor(NamedTuple):
    labels: np.ndarray          # BraTS labels 0 / 1 / 2 / 4
    non_enhancing: np.ndarray   # voxels of label 1 that are solid non-enhancing tumor, not necrosis (variation 2)
    enhancement: float          # how strongly the rim enhances on T1ce (1: as CONTRASTS says)


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


def _focus(anatomy: Dict[str, np.ndarray], spacing: float, rng: np.random.Generator,
           variation: Dict[str, object], core_radius_mm: Tuple[float, float]) -> np.ndarray:
    """BraTS labels (0, 1, 2, 4) of one random tumor focus."""
    shape = anatomy["brain"].shape
    # centred in white matter, or in deep grey matter next to it (docs/phantom.md, location)
    candidates = np.argwhere(((anatomy["wm"] > 0.6) | (anatomy["wm"] + anatomy["gm"] > 0.9)) & anatomy["brain"])
    center = candidates[rng.integers(len(candidates))]
    radius_mm = rng.uniform(*core_radius_mm)  # enhancing rim included; edema extends beyond
    grid = np.indices(shape).astype(float)
    distance = np.sqrt(sum(((grid[i] - center[i]) * spacing) ** 2 for i in range(3)))
    irregular = distance / (1 + variation["shape_irregularity"] * _smooth_noise(shape, rng, 6 / spacing))
    necrosis_fraction = rng.uniform(*variation["necrosis_radius_fraction"])
    edema_radius = radius_mm * rng.uniform(*variation["edema_factor"])
    labels = np.zeros(shape, np.uint8)
    labels[irregular < edema_radius] = 2
    labels[irregular < radius_mm] = 4
    labels[irregular < necrosis_fraction * radius_mm] = 1
    labels[~anatomy["brain"]] = 0
    return labels


def make_tumor(anatomy: Dict[str, np.ndarray], spacing: float, rng: np.random.Generator,
               variation: Dict[str, object] = VARIATION) -> Tumor:
    """One random tumor; with variation 2 also its appearance (rim enhancement, non-enhancing part) and, in some
    cases, a satellite focus."""
    labels = _focus(anatomy, spacing, rng, variation, variation["core_radius_mm"])
    non_enhancing = np.zeros(labels.shape, bool)
    if "enhancement" not in variation:  # variation 1: nothing more drawn, so its cases stay as they were
        return Tumor(labels, non_enhancing, 1.0)
    if rng.random() < variation["satellite_probability"]:
        satellite = _focus(anatomy, spacing, rng, variation, variation["satellite_core_radius_mm"])
        # the satellite's core wins over the first focus's edema where they touch
        labels = np.where((satellite > 0) & ((labels == 0) | ((labels == 2) & (satellite != 2))), satellite, labels)
    rim = labels == 4
    if rim.any():  # patches of the rim that do not enhance: solid tumor, labelled with the necrosis as label 1
        patches = _smooth_noise(labels.shape, rng, 8 / spacing)
        fraction = rng.uniform(*variation["non_enhancing_fraction"])
        non_enhancing = rim & (patches < np.quantile(patches[rim], fraction))
        labels[non_enhancing] = 1
    return Tumor(labels, non_enhancing, float(rng.uniform(*variation["enhancement"])))


def make_sites(seed: int, variation: Dict[str, object] = VARIATION) -> List[Dict[str, Dict[str, object]]]:
    """Scanner / protocol of each simulated site, per modality; drawn once per phantom (from its seed). Variation 2's
    first four sites are variation 1's."""
    rng = np.random.default_rng([seed, 1])  # independent of the cases' stream, so sites do not depend on --cases
    low, high = np.log(variation["site_gamma"])
    thicknesses = variation["site_slice_thickness_mm"]
    return [{modality: {"gamma": float(np.exp(rng.uniform(low, high))),
                        "tissue": rng.uniform(*variation["site_tissue_contrast"], 6),
                        "bias": float(rng.uniform(*variation["site_bias_amplitude"])),
                        "noise": float(rng.uniform(*variation["site_noise"])),
                        "slice_mm": float(thicknesses[site % len(thicknesses)]) if modality in ("t2", "flair")
                        else 1.0}
             for modality in MODALITIES} for site in range(variation["sites"])]


def synthesise_case(anatomy: Dict[str, np.ndarray], tumor: Tumor, spacing: float,
                    rng: np.random.Generator, site: Dict[str, Dict[str, object]],
                    variation: Dict[str, object] = VARIATION) -> Dict[str, np.ndarray]:
    tissues = [anatomy["csf"], anatomy["gm"], anatomy["wm"]]
    labels = tumor.labels
    regions = [labels == 2, labels == 4, labels == 1]
    in_tumor = labels > 0
    texture = 0.85 + 0.3 * anatomy["t1"]
    images = {}
    for modality in MODALITIES:
        protocol = site[modality]
        c = np.asarray(CONTRASTS[modality]) * protocol["tissue"]
        if tumor.enhancement != 1.0:  # the rim's excess over white matter, scaled (variation 2)
            c[4] = c[2] + tumor.enhancement * (c[4] - c[2])
        healthy = sum(w * tissue for w, tissue in zip(c[:3], tissues))
        image = np.where(in_tumor, sum(w * region for w, region in zip(c[3:], regions)), healthy) * texture
        if tumor.non_enhancing.any():  # scaled like the necrosis it shares label 1 with
            image[tumor.non_enhancing] = (NON_ENHANCING[modality] * protocol["tissue"][5]
                                          * texture[tumor.non_enhancing])
        image = np.clip(image, 0, None) ** protocol["gamma"]
        bias = np.exp(protocol["bias"] * _smooth_noise(image.shape, rng, 20 / spacing))
        image = image * bias
        if protocol["slice_mm"] > spacing:  # thick 2D slices (along the last axis), then resampled to the grid
            sigma = [0, 0, protocol["slice_mm"] / spacing / 2.355]
            image = ndimage.gaussian_filter(image, sigma)
        image = image + rng.normal(0, protocol["noise"], image.shape)
        shift = rng.uniform(-variation["misregistration_mm"], variation["misregistration_mm"], 3) / spacing
        image = ndimage.shift(image * anatomy["brain"], shift, order=1)
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


def check_phantom_arguments(num_cases: int, seed: int, spacing: float, variation: int = 1) -> None:
    """Refuse arguments no phantom can be made with (NaN and infinity included), before anything is made."""
    if variation not in VARIATIONS:
        raise PhantomError(f"--variation must be one of {sorted(VARIATIONS)}, got {variation}")
    if num_cases < 1:
        raise PhantomError(f"--cases must be at least 1, got {num_cases}")
    if seed < 0:
        raise PhantomError(f"--seed must be 0 or more, got {seed}")
    if not (math.isfinite(spacing) and 0.5 <= spacing <= 8):
        raise PhantomError(f"--spacing must be between 0.5 and 8 mm, got {spacing}")


def make_phantom(output_dir: str, num_cases: int, seed: int = 0, spacing: float = 1.0,
                 prefix: str = "BraTS19_PHANTOM", overwrite: bool = False, variation: int = 1) -> List[str]:
    """Write ``output_dir/HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; returns the case ids.

    Arguments and ``output_dir`` are checked before anything is made; the folder appears complete or not at all
    (``atomic_folder``). An earlier phantom there is replaced whole only with ``overwrite``; a folder holding
    anything else is never written into.
    """
    check_phantom_arguments(num_cases, seed, spacing, variation)
    check_output_folder(output_dir, overwrite, lambda folder: _holds_only_phantom_cases(folder, prefix))
    anatomy = load_anatomy(spacing)
    rng = np.random.default_rng(seed)
    sites = make_sites(seed, VARIATIONS[variation])
    cases = []
    with atomic_folder(output_dir, overwrite) as partial:
        for i in tqdm(range(num_cases), desc="Making phantom cases", unit="case"):
            case = f"{prefix}_{i:03d}"
            folder = os.path.join(partial, "HGG", case)
            os.makedirs(folder)
            tumor = make_tumor(anatomy, spacing, rng, VARIATIONS[variation])
            site = sites[int(rng.integers(len(sites)))]
            for modality, image in synthesise_case(anatomy, tumor, spacing, rng, site, VARIATIONS[variation]).items():
                _write(image, os.path.join(folder, f"{case}_{modality}.nii.gz"), spacing, np.float32)
            _write(tumor.labels, os.path.join(folder, f"{case}_seg.nii.gz"), spacing, np.uint8)
            cases.append(case)
    return cases
