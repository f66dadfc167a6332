"""BraTS 2019 -> nnU-Net raw dataset (region-based, like nnU-Net's Dataset137 conversion), and back.

Official layout: ``BRATS_DIR/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with labels
0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumor.
nnU-Net layout: channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels 1 edema, 2 core, 3 enhancing (so that the regions
whole tumor = (1, 2, 3), tumor core = (2, 3), enhancing = 3 are nested label ranges).
"""
import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.image_checks import InvalidImageError, check_image_file
from nnunet_mem_cif.ssl.labeled_subset import split_labeled_fraction

MODALITIES = ("t1", "t1ce", "t2", "flair")  # nnU-Net channel index = position
BRATS_LABELS = (0, 1, 2, 4)
BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_TO_BRATS = {v: k for k, v in BRATS_TO_NNUNET.items()}
SUBSETS = {"HGG": ("HGG",), "LGG": ("LGG",), "all": ("HGG", "LGG")}


class BratsConversionError(PluginUserError, ValueError):
    """The BraTS folder or a file in it is not what the converter needs; the message names the file."""


def _map_labels(labels: np.ndarray, mapping: Dict[int, int], source: str) -> np.ndarray:
    unexpected = sorted(set(np.unique(labels).tolist()) - set(mapping))
    if unexpected:
        raise BratsConversionError(f"{source}: label values {unexpected} are not in {sorted(mapping)}. Fix or remove "
                                   f"this segmentation.")
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for old, new in mapping.items():
        lookup[old] = new
    return lookup[labels.astype(np.int64)]


def brats_to_nnunet_labels(labels: np.ndarray, source: str = "segmentation") -> np.ndarray:
    return _map_labels(labels, BRATS_TO_NNUNET, source)


def nnunet_to_brats_labels(labels: np.ndarray, source: str = "segmentation") -> np.ndarray:
    return _map_labels(labels, NNUNET_TO_BRATS, source)


def _convert_label_file(source: str, target: str, mapping: Dict[int, int]) -> None:
    image = _read_checked(source)
    converted = sitk.GetImageFromArray(_map_labels(sitk.GetArrayFromImage(image), mapping, source))
    converted.CopyInformation(image)
    sitk.WriteImage(converted, target)


def convert_predictions_to_brats(prediction_folder: str, output_folder: str, file_ending: str = ".nii.gz") -> int:
    """Write BraTS-labelled (0/1/2/4) copies of nnU-Net predictions; returns the number of files converted."""
    os.makedirs(output_folder, exist_ok=True)
    files = sorted(f for f in os.listdir(prediction_folder) if f.endswith(file_ending))
    for name in tqdm(files, desc="Converting predictions to BraTS labels", unit="case"):
        _convert_label_file(os.path.join(prediction_folder, name), os.path.join(output_folder, name),
                            NNUNET_TO_BRATS)
    return len(files)


def _read_checked(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BratsConversionError(f"{path}: unreadable or corrupt ({reason}). Restore the file or remove the "
                                   f"case folder.") from e


def _geometry(path: str) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise BratsConversionError(f"{path}: unreadable or corrupt header. Restore the file or remove the case "
                                   f"folder.") from e
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def check_case(case: str, folder: str) -> None:
    """All five files readable, on one voxel grid, with finite, not all-zero images (one clear error otherwise)."""
    reference = None
    for name in MODALITIES + ("seg",):
        path = os.path.join(folder, f"{case}_{name}.nii.gz")
        geometry = _geometry(path)
        if reference is None:
            reference = (path, geometry)
        elif geometry[0] != reference[1][0] or not all(
                np.allclose(a, b, atol=1e-3) for a, b in zip(geometry[1:], reference[1][1:])):
            raise BratsConversionError(f"{path}: size/spacing/origin/direction {geometry} differ from "
                                       f"{reference[0]} {reference[1]}. All modalities of a case must be co-registered "
                                       f"on one voxel grid; resample them or remove the case.")
        if name != "seg":
            try:
                check_image_file(path)
            except InvalidImageError as e:
                raise BratsConversionError(str(e)) from e


def find_brats_cases(brats_dir: str, subset: str = "HGG") -> List[Tuple[str, str]]:
    """(case id, case folder) for every case of the subset, checking that all five files exist."""
    if subset not in SUBSETS:
        raise BratsConversionError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
    cases = []
    for grade in SUBSETS[subset]:
        grade_dir = os.path.join(brats_dir, grade)
        if not os.path.isdir(grade_dir):
            raise BratsConversionError(f"{grade_dir} does not exist: expected the official BraTS 2019 layout "
                                       f"BRATS_DIR/{{HGG,LGG}}/<case>/<case>_{{t1,t1ce,t2,flair,seg}}.nii.gz")
        for case in sorted(os.listdir(grade_dir)):
            folder = os.path.join(grade_dir, case)
            if not os.path.isdir(folder) or case.startswith("."):
                continue
            missing = [f"{case}_{m}.nii.gz" for m in MODALITIES + ("seg",)
                       if not os.path.isfile(os.path.join(folder, f"{case}_{m}.nii.gz"))]
            if missing:
                raise BratsConversionError(f"{folder}: missing {', '.join(missing)}. Restore the files or remove the "
                                           f"case folder.")
            cases.append((case, folder))
    if not cases:
        raise BratsConversionError(f"{brats_dir}: no cases found in {'/'.join(SUBSETS[subset])}")
    return cases


def split_cases(case_ids: Sequence[str], test_fraction: float, labeled_fraction: Optional[float],
                seed: int) -> Dict[str, List[str]]:
    """Seeded held-out test split, then (optionally) a labeled / unlabeled split of the rest."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(case_ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    num_test = int(round(test_fraction * len(ids)))
    test = sorted(ids[i] for i in order[:num_test])
    train = sorted(ids[i] for i in order[num_test:])
    if labeled_fraction is None:
        return {"test": test, "labeled": train, "unlabeled": []}
    labeled, unlabeled = split_labeled_fraction(train, labeled_fraction, seed)
    return {"test": test, "labeled": labeled, "unlabeled": unlabeled}


def region_dataset_json(num_training: int) -> dict:
    return {
        "channel_names": {str(i): m.upper() if m != "t1ce" else "T1ce" for i, m in enumerate(MODALITIES)},
        "labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3},
        "regions_class_order": [1, 2, 3],
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "description": "BraTS 2019 converted by nnunet-mem-cif (labels: 1 edema, 2 necrotic/non-enhancing core, "
                       "3 enhancing tumor; region-based training)",
    }


def convert_brats2019(brats_dir: str, raw_root: str, dataset_id: int, name: str = "BraTS2019", subset: str = "HGG",
                      test_fraction: float = 0.2, labeled_fraction: Optional[float] = None, seed: int = 12345,
                      overwrite: bool = False) -> str:
    """Write ``raw_root/DatasetNNN_NAME`` and return its path; the source folder is only read.

    Everything is written into a ``.partial`` folder that replaces the target only when complete. An existing
    target is an error unless ``overwrite``.
    """
    if not 0 < dataset_id < 1000:
        raise BratsConversionError(f"dataset id must be 1..999, got {dataset_id}")
    if not name or os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise BratsConversionError(f"dataset name {name!r} must be a plain folder name")
    target = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    if os.path.exists(target) and not overwrite:
        raise BratsConversionError(f"{target} already exists. Choose another --dataset-id/--name or pass "
                                   f"--overwrite to replace it.")
    cases = dict(find_brats_cases(brats_dir, subset))
    split = split_cases(list(cases), test_fraction, labeled_fraction, seed)
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        folders = {"test": ("imagesTs", "labelsTs"), "labeled": ("imagesTr", "labelsTr"),
                   "unlabeled": ("imagesUnlabeled", None)}
        for images, labels in folders.values():
            os.makedirs(os.path.join(partial, images))
            if labels:
                os.makedirs(os.path.join(partial, labels))
        jobs = [(group, case) for group in ("labeled", "unlabeled", "test") for case in split[group]]
        for group, case in tqdm(jobs, desc=f"Converting BraTS 2019 ({subset})", unit="case"):
            images, labels = folders[group]
            source = cases[case]
            check_case(case, source)
            for channel, modality in enumerate(MODALITIES):
                shutil.copyfile(os.path.join(source, f"{case}_{modality}.nii.gz"),
                                os.path.join(partial, images, f"{case}_{channel:04d}.nii.gz"))
            if labels:
                _convert_label_file(os.path.join(source, f"{case}_seg.nii.gz"),
                                    os.path.join(partial, labels, f"{case}.nii.gz"), BRATS_TO_NNUNET)
        with open(os.path.join(partial, "dataset.json"), "w") as f:
            json.dump(region_dataset_json(len(split["labeled"])), f, indent=2)
        record = {"source": os.path.abspath(brats_dir), "subset": subset, "seed": seed,
                  "test_fraction": test_fraction, "labeled_fraction": labeled_fraction, "cases": split}
        with open(os.path.join(partial, "conversion.json"), "w") as f:
            json.dump(record, f, indent=2)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # no half-written dataset is ever left behind
        raise
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(partial, target)
    return target
