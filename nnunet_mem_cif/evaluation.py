"""Dice, Sensitivity and HD95 per BraTS tumor region, per case and averaged.

Counting (TP/FP/FN) and region masks are nnU-Net's own (``nnunetv2.evaluation.evaluate_predictions``); HD95 is not
part of nnU-Net's evaluation and is computed here with the usual definition (95th percentile of the symmetric
surface distances, surfaces = mask minus its 6-connected erosion, distances in mm using the image spacing).

Empty masks, explicitly:
- Dice: both empty -> 1; exactly one empty -> 0 (BraTS convention).
- Sensitivity = TP / (TP + FN): reference empty -> undefined, reported as NaN and left out of means.
- HD95: both empty -> 0; exactly one empty -> the image diagonal in mm (the largest possible distance, as BraTS
  uses a fixed worst-case value).

Every prediction and reference is checked before any metric is computed (same cases in both folders, same voxel
grid, whole-number labels of the chosen convention): a mix-up would otherwise give plausible, wrong numbers.
"""
import csv
import json
import math
import os
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask
from scipy import ndimage

from nnunet_mem_cif.atomic import is_within, write_text_atomically
from nnunet_mem_cif.brats import LABEL_CONVENTIONS, REGIONS_BRATS, REGIONS_NNUNET, other_label_convention, \
    unexpected_labels_message
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.image_checks import distinct_labels, geometry_difference

METRICS = ("dice", "sensitivity", "hd95")
_LABEL_FLAG = {"BraTS": "use --brats-labels", "nnU-Net": "drop --brats-labels"}


class EvaluationError(PluginUserError, ValueError):
    """A prediction or reference is missing, unreadable or does not fit its counterpart; the message names the file."""


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


def _dice_of_counts(tp: float, fp: float, fn: float) -> float:
    # 1.0 where both masks are empty, as BraTS scores an absent region that is correctly not predicted
    return 1.0 if tp + fp + fn == 0 else float(2.0 * tp / (2 * tp + fp + fn))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two masks from nnU-Net's TP / FP / FN, with the empty-region convention of ``region_metrics``."""
    tp, fp, fn, _ = compute_tp_fp_fn_tn(reference.astype(bool), prediction.astype(bool))
    return _dice_of_counts(tp, fp, fn)


def region_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    tp, fp, fn, _ = compute_tp_fp_fn_tn(reference.astype(bool), prediction.astype(bool))  # once per region
    sensitivity = float("nan") if tp + fn == 0 else tp / (tp + fn)
    return {"dice": _dice_of_counts(tp, fp, fn), "sensitivity": float(sensitivity),
            "hd95": hd95(prediction, reference, spacing)}


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 regions: Mapping[str, Tuple[int, ...]]) -> Dict[str, Dict[str, float]]:
    return {name: region_metrics(region_or_label_to_mask(prediction, labels),
                                 region_or_label_to_mask(reference, labels), spacing)
            for name, labels in regions.items()}


def _read_image(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"{path}: cannot be read as an image ({str(e).strip().splitlines()[-1]})") from e


def _read(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    image = _read_image(path)
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def _case_files(prediction_folder: str, reference_folder: str, file_ending: str) -> List[str]:
    """The file names to evaluate: every reference, each with its prediction and no prediction without one."""
    for folder in (prediction_folder, reference_folder):
        if not os.path.isdir(folder):
            raise EvaluationError(f"{folder}: {'not a folder' if os.path.exists(folder) else 'no such folder'}")
    if os.path.realpath(prediction_folder) == os.path.realpath(reference_folder):
        raise EvaluationError(f"{prediction_folder} is both the prediction and the reference folder; every case would "
                              f"score perfectly. Give the folder with the reference segmentations as GT_DIR.")
    references = sorted(f for f in os.listdir(reference_folder) if f.endswith(file_ending))
    if not references:
        raise EvaluationError(f"{reference_folder}: no reference segmentations (*{file_ending})")
    predictions = sorted(f for f in os.listdir(prediction_folder) if f.endswith(file_ending))
    if not predictions:
        raise EvaluationError(f"{prediction_folder}: no predictions (*{file_ending})")
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise EvaluationError(f"{prediction_folder}: no prediction for {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}")
    unmatched = sorted(set(predictions) - set(references))
    if unmatched:
        raise EvaluationError(f"{prediction_folder}: {len(unmatched)} predictions have no reference in "
                              f"{reference_folder} ({', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}). "
                              f"Evaluate against the folder that holds their references, or move them out.")
    return references


def _check_labels(prediction_path: str, prediction: np.ndarray, reference_path: str, reference: np.ndarray,
                  brats_labels: bool) -> None:
    """Both files hold whole-number labels of the chosen convention; the message says which flag or conversion
    fixes a file in the other convention."""
    convention = "BraTS" if brats_labels else "nnU-Net"
    values = {reference_path: distinct_labels(reference, reference_path, EvaluationError),
              prediction_path: distinct_labels(prediction, prediction_path, EvaluationError)}
    for path, counterpart in ((reference_path, prediction_path), (prediction_path, reference_path)):
        problem = unexpected_labels_message(path, values[path], convention)
        if problem is None:
            continue
        other = other_label_convention(values[path], convention)
        if other is None:
            advice = ("Segmentations must hold nnU-Net's BraTS labels 0/1/2/3 (or the original BraTS labels 0/1/2/4 "
                      "with --brats-labels); fix or remove this file.")
        elif set(values[counterpart]) <= set(LABEL_CONVENTIONS[other]):
            advice = f"If all files use {other} labels, {_LABEL_FLAG[other]}."
        else:
            advice = (f"But {counterpart} holds {convention} labels: predictions and references must use the same "
                      f"labels ('nnunet-mem-cif to-brats-labels' converts nnU-Net predictions to BraTS labels).")
        raise EvaluationError(f"{problem}. {advice}")


def check_prediction(prediction_path: str, reference_path: str, brats_labels: bool = False) -> None:
    """Refuse a prediction that is not on its reference's voxel grid or a file with unexpected labels."""
    reference, prediction = _read_image(reference_path), _read_image(prediction_path)
    difference = geometry_difference(prediction, reference)
    if difference:
        raise EvaluationError(f"{prediction_path} is not on the voxel grid of its reference {reference_path}: "
                              f"{difference}. Predict from the reference's images, or resample the prediction onto "
                              f"the reference (nearest neighbour).")
    _check_labels(prediction_path, sitk.GetArrayViewFromImage(prediction), reference_path,
                  sitk.GetArrayViewFromImage(reference), brats_labels)


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
    """Compare every reference case with the prediction of the same file name.

    All cases are checked (``check_prediction``) before any is scored, so a bad 40th case fails in seconds, not after
    the HD95 of 39 others.
    """
    regions = REGIONS_BRATS if brats_labels else REGIONS_NNUNET
    references = _case_files(prediction_folder, reference_folder, file_ending)
    for name in references:
        check_prediction(os.path.join(prediction_folder, name), os.path.join(reference_folder, name), brats_labels)
    cases = {}
    for name in references:
        reference, spacing = _read(os.path.join(reference_folder, name))
        prediction, _ = _read(os.path.join(prediction_folder, name))
        cases[name[:-len(file_ending)]] = case_metrics(prediction, reference, spacing, regions)
    return {"mean": mean_metrics(cases, list(regions)), "cases": cases,
            "label_convention": "brats" if brats_labels else "nnunet"}


def missed_regions(results: dict) -> List[str]:
    """Regions present in at least one reference case and found in none: mean sensitivity 0 (NaN-aware, so cases
    without the region are left out, and a region in no reference case has NaN, not 0).

    Sensitivity, not Dice: a case without the region that rightly predicts none scores Dice 1, which would hide a
    network that never finds the region where it is.
    """
    return [region for region, means in results["mean"].items() if region != "mean" and means["sensitivity"] == 0]


def markdown_table(results: dict) -> str:
    lines = ["| region | Dice | Sensitivity | HD95 [mm] |", "|---|---|---|---|"]
    for region, metrics in results["mean"].items():
        lines.append(f"| {region} | {metrics['dice']:.4f} | {metrics['sensitivity']:.4f} | {metrics['hd95']:.2f} |")
    return "\n".join(lines)


def result_paths(output_json: str) -> Tuple[str, str, str]:
    """The JSON, CSV and markdown files ``write_results`` writes for ``output_json``."""
    stem = output_json[:-5] if output_json.endswith(".json") else output_json
    return output_json, stem + ".csv", stem + ".md"


def check_results_path(output_json: str, prediction_folder: str, reference_folder: str,
                       overwrite: bool = False) -> None:
    """Refuse, before anything is computed, results files that would land on something that is not ours: a folder,
    a file inside the prediction or reference folder (an input, or a new file nnU-Net or this evaluation would later
    take for a case), or an earlier result without ``overwrite``."""
    for path in result_paths(output_json):
        for role, folder in (("prediction", prediction_folder), ("reference", reference_folder)):
            if is_within(path, folder):
                raise EvaluationError(f"-o {output_json}: {path} would be written into the {role} folder {folder}. "
                                      f"Write the results elsewhere.")
        if os.path.isdir(path):
            raise EvaluationError(f"-o {output_json}: {path} is a folder. Give a file name, e.g. "
                                  f"{os.path.join(output_json, 'metrics.json')}.")
        if os.path.lexists(path) and not overwrite:
            raise EvaluationError(f"-o {output_json}: {path} already exists. Choose another name or pass --overwrite "
                                  f"to replace it.")
    parent = os.path.dirname(os.path.abspath(output_json))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise EvaluationError(f"-o {output_json}: {parent} is a file, not a folder.")


def write_results(results: dict, output_json: str) -> Tuple[str, str]:
    """JSON as given, plus a CSV (one row per case and region) and a markdown table beside it."""
    _, csv_file, markdown_file = result_paths(output_json)
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
