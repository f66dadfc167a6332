"""Dice, Sensitivity and HD95 per BraTS tumor region, per case and averaged.

Counting (TP/FP/FN) and region masks are nnU-Net's own (``nnunetv2.evaluation.evaluate_predictions``); HD95 is not
part of nnU-Net's evaluation and is computed here with the usual definition (95th percentile of the symmetric
surface distances, surfaces = mask minus its 6-connected erosion, distances in mm using the image spacing).

Empty masks, explicitly:
- Dice: both empty -> 1; exactly one empty -> 0 (BraTS convention).
- Sensitivity = TP / (TP + FN): reference empty -> undefined, reported as NaN and left out of means.
- HD95: both empty -> 0; exactly one empty -> the image diagonal in mm (the largest possible distance, as BraTS
  uses a fixed worst-case value).
"""
import csv
import json
import math
import os
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask
from scipy import ndimage

from nnunet_mem_cif.atomic import write_text_atomically
from nnunet_mem_cif.errors import PluginUserError

# nnU-Net's BraTS label convention (1 edema, 2 necrotic/non-enhancing core, 3 enhancing) and the original BraTS one
REGIONS_NNUNET: Dict[str, Tuple[int, ...]] = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
REGIONS_BRATS: Dict[str, Tuple[int, ...]] = {"whole_tumor": (1, 2, 4), "tumor_core": (1, 4), "enhancing_tumor": (4,)}
METRICS = ("dice", "sensitivity", "hd95")


class EvaluationError(PluginUserError, ValueError):
    """A prediction or reference is missing or unreadable; the message names the file."""


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm); see the module docstring for empty masks."""
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(prediction.shape, spacing))))
    prediction_surface, reference_surface = _surface(prediction), _surface(reference)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)[prediction_surface]
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)[reference_surface]
    return float(np.percentile(np.concatenate((to_reference, to_prediction)), 95))


def region_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    tp, fp, fn, _ = compute_tp_fp_fn_tn(reference.astype(bool), prediction.astype(bool))
    dice = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    sensitivity = float("nan") if tp + fn == 0 else tp / (tp + fn)
    return {"dice": float(dice), "sensitivity": float(sensitivity), "hd95": hd95(prediction, reference, spacing)}


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 regions: Mapping[str, Tuple[int, ...]]) -> Dict[str, Dict[str, float]]:
    return {name: region_metrics(region_or_label_to_mask(prediction, labels),
                                 region_or_label_to_mask(reference, labels), spacing)
            for name, labels in regions.items()}


def _read(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from e
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def mean_metrics(cases: Mapping[str, Mapping[str, Mapping[str, float]]],
                 regions: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per region and for ``mean`` (the average of the regions' means), NaN-aware."""
    means = {}
    for region in regions:
        means[region] = {m: _nanmean([c[region][m] for c in cases.values()]) for m in METRICS}
    means["mean"] = {m: _nanmean([means[r][m] for r in regions]) for m in METRICS}
    return means


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def evaluate_folders(prediction_folder: str, reference_folder: str, brats_labels: bool = False,
                     file_ending: str = ".nii.gz") -> dict:
    """Compare every reference case with the prediction of the same file name."""
    regions = REGIONS_BRATS if brats_labels else REGIONS_NNUNET
    references = sorted(f for f in os.listdir(reference_folder) if f.endswith(file_ending))
    if not references:
        raise EvaluationError(f"{reference_folder}: no reference segmentations (*{file_ending})")
    missing = [f for f in references if not os.path.isfile(os.path.join(prediction_folder, f))]
    if missing:
        raise EvaluationError(f"{prediction_folder}: no prediction for {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    cases = {}
    for name in references:
        reference, spacing = _read(os.path.join(reference_folder, name))
        prediction, _ = _read(os.path.join(prediction_folder, name))
        if prediction.shape != reference.shape:
            raise EvaluationError(f"{os.path.join(prediction_folder, name)}: shape {prediction.shape} differs from the "
                             f"reference's {reference.shape}")
        cases[name[:-len(file_ending)]] = case_metrics(prediction, reference, spacing, regions)
    return {"mean": mean_metrics(cases, list(regions)), "cases": cases,
            "label_convention": "brats" if brats_labels else "nnunet"}


def markdown_table(results: dict) -> str:
    lines = ["| region | Dice | Sensitivity | HD95 [mm] |", "|---|---|---|---|"]
    for region, metrics in results["mean"].items():
        lines.append(f"| {region} | {metrics['dice']:.4f} | {metrics['sensitivity']:.4f} | {metrics['hd95']:.2f} |")
    return "\n".join(lines)


def write_results(results: dict, output_json: str) -> Tuple[str, str]:
    """JSON as given, plus a CSV (one row per case and region) and a markdown table beside it."""
    stem = output_json[:-5] if output_json.endswith(".json") else output_json
    csv_file, markdown_file = stem + ".csv", stem + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    for path, write in ((output_json, lambda f: json.dump(results, f, indent=2)),
                        (csv_file, lambda f: _write_csv(results, f)),
                        (markdown_file, lambda f: f.write(markdown_table(results) + "\n"))):
        write_text_atomically(path, write)
    return csv_file, markdown_file


def _write_csv(results: dict, handle) -> None:
    writer = csv.writer(handle)
    writer.writerow(["case", "region", *METRICS])
    for case, regions in results["cases"].items():
        for region, metrics in regions.items():
            writer.writerow([case, region, *(metrics[m] for m in METRICS)])
