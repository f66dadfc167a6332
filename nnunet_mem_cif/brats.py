"""BraTS 2019 -> nnU-Net raw dataset (region-based, like nnU-Net's Dataset137 conversion), and back.

Official layout: ``BRATS_DIR/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with labels
0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumor.
nnU-Net layout: channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR; labels 1 edema, 2 core, 3 enhancing (so that the regions
whole tumor = (1, 2, 3), tumor core = (2, 3), enhancing = 3 are nested label ranges).
"""
import json
import os
import shutil
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mem_cif.atomic import atomic_folder, check_output_folder, is_within
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.image_checks import InvalidImageError, check_image_file, distinct_labels
from nnunet_mem_cif.leakage import TEST_FOLDER, TRAINING_FOLDER, UNLABELED_FOLDER
from nnunet_mem_cif.splits import split_labeled_fraction

MODALITIES = ("t1", "t1ce", "t2", "flair")  # nnU-Net channel index = position
BRATS_LABELS = (0, 1, 2, 4)
NNUNET_LABELS = (0, 1, 2, 3)
LABEL_CONVENTIONS = {"nnU-Net": NNUNET_LABELS, "BraTS": BRATS_LABELS}
BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}
NNUNET_TO_BRATS = {v: k for k, v in BRATS_TO_NNUNET.items()}
# the evaluated regions: nested label ranges in nnU-Net's labels (what region-based training needs), and the same
# regions in BraTS's labels
REGIONS_NNUNET: Dict[str, Tuple[int, ...]] = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
REGIONS_BRATS: Dict[str, Tuple[int, ...]] = {name: tuple(sorted(NNUNET_TO_BRATS[label] for label in labels))
                                             for name, labels in REGIONS_NNUNET.items()}
SUBSETS = {"HGG": ("HGG",), "LGG": ("LGG",), "all": ("HGG", "LGG")}


class BratsConversionError(PluginUserError, ValueError):
    """The BraTS folder or a file in it is not what the converter needs; the message names the file."""


def other_label_convention(values: Sequence[int], convention: str) -> Optional[str]:
    """The name of the other label convention when ``values`` fit it but not ``convention``.

    Such a file is rarely broken: it is an unconverted (or doubly converted) segmentation or a mixed-up flag, and the
    error message can say which.
    """
    expected = set(LABEL_CONVENTIONS[convention])
    for name, labels in LABEL_CONVENTIONS.items():
        if name != convention and set(values) <= set(labels) and not set(values) <= expected:
            return name
    return None


def unexpected_labels_message(source: str, values: Sequence[int], convention: str) -> Optional[str]:
    """None when every value belongs to ``convention``; else a message naming the file, the values found and, when
    they fit the other convention, that they look like it."""
    allowed = LABEL_CONVENTIONS[convention]
    unexpected = sorted(set(values) - set(allowed))
    if not unexpected:
        return None
    message = (f"{source}: label values {unexpected} are not in {list(allowed)} ({convention} labels; found "
               f"{list(values)})")
    other = other_label_convention(values, convention)
    if other:
        message += f"; they look like {other} labels ({'/'.join(map(str, LABEL_CONVENTIONS[other]))})"
    return message


def _check_labels(labels: np.ndarray, convention: str, source: str, advice: str) -> None:
    problem = unexpected_labels_message(source, distinct_labels(labels, source, BratsConversionError), convention)
    if problem:
        raise BratsConversionError(f"{problem}. {advice}")


def brats_to_nnunet_labels(labels: np.ndarray, source: str = "segmentation",
                           advice: str = "Fix or remove this segmentation.") -> np.ndarray:
    """Ours: nnU-Net's BraTS conversion script maps labels only file to file, without checking them."""
    _check_labels(labels, "BraTS", source, advice)
    lookup = np.zeros(max(BRATS_TO_NNUNET) + 1, dtype=np.uint8)
    for old, new in BRATS_TO_NNUNET.items():
        lookup[old] = new
    return lookup[labels.astype(np.int64)]


def nnunet_to_brats_labels(labels: np.ndarray, source: str = "segmentation",
                           advice: str = "Fix or remove this segmentation.") -> np.ndarray:
    """nnU-Net's own back-conversion (its BraTS 2021 conversion script's), after the labels are checked."""
    from nnunetv2.dataset_conversion.Dataset137_BraTS21 import convert_labels_back_to_BraTS
    _check_labels(labels, "nnU-Net", source, advice)
    return convert_labels_back_to_BraTS(labels.astype(np.uint8))


def _convert_label_file(source: str, target: str, convert: Callable[..., np.ndarray],
                        advice: str = "Fix or remove this segmentation.") -> None:
    image = _read_checked(source)
    converted = sitk.GetImageFromArray(convert(sitk.GetArrayFromImage(image), source, advice))
    converted.CopyInformation(image)
    sitk.WriteImage(converted, target)


def _prediction_files(prediction_folder: str, output_folder: str, overwrite: bool, file_ending: str) -> List[str]:
    """The files ``convert_predictions_to_brats`` converts, after refusing every input / output mix-up it could
    otherwise turn into lost or mixed data (nothing is created before this returns)."""
    if not os.path.isdir(prediction_folder):
        problem = "not a folder" if os.path.exists(prediction_folder) else "no such folder"
        raise BratsConversionError(f"{prediction_folder}: {problem}. Give the folder nnUNetv2_predict wrote.")
    if is_within(output_folder, prediction_folder) or is_within(prediction_folder, output_folder):
        raise BratsConversionError(f"the output folder {output_folder} and the prediction folder {prediction_folder} "
                                   f"overlap (the same, or one inside the other). Choose a separate output folder.")
    files = sorted(f for f in os.listdir(prediction_folder) if f.endswith(file_ending))
    if not files:
        raise BratsConversionError(f"{prediction_folder}: no predictions (*{file_ending}) to convert.")
    check_output_folder(output_folder, overwrite,
                        lambda folder: all(f.endswith(file_ending) and os.path.isfile(os.path.join(folder, f))
                                           for f in os.listdir(folder)))
    return files


def convert_predictions_to_brats(prediction_folder: str, output_folder: str, file_ending: str = ".nii.gz",
                                 overwrite: bool = False) -> int:
    """Write BraTS-labelled (0/1/2/4) copies of nnU-Net predictions; returns the number of files converted.

    ``output_folder`` appears complete or not at all (a bad 4th file leaves no folder with 3 converted ones that
    could pass for the whole set). An existing non-empty one is refused unless ``overwrite``, and then replaced
    whole, never mixed with its old files; only a folder of segmentations counts as an earlier output. Every file's
    labels are checked before the first one is written (reading each file twice), so a bad file ends the command
    with one clear error before any output exists.
    """
    files = _prediction_files(prediction_folder, output_folder, overwrite, file_ending)
    advice = "to-brats-labels converts nnU-Net predictions (0/1/2/3); remove files that are not from the folder."
    for name in files:
        path = os.path.join(prediction_folder, name)
        image = _read_checked(path)  # kept alive while its array view is read
        _check_labels(sitk.GetArrayViewFromImage(image), "nnU-Net", path, advice)
    with atomic_folder(output_folder, overwrite) as partial:
        for name in tqdm(files, desc="Converting predictions to BraTS labels", unit="case"):
            _convert_label_file(os.path.join(prediction_folder, name), os.path.join(partial, name),
                                nnunet_to_brats_labels, advice)
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


def check_split_arguments(test_fraction: float, labeled_fraction: Optional[float], seed: int) -> None:
    """Refuse fractions and seeds no split can be made with (NaN fails every comparison, so it is refused too)."""
    if not 0 <= test_fraction < 1:
        raise BratsConversionError(f"--test-fraction must be at least 0 and below 1 (0: no test split), got "
                                   f"{test_fraction}")
    if labeled_fraction is not None and not 0 < labeled_fraction <= 1:
        raise BratsConversionError(f"--labeled-fraction must be above 0 and at most 1, got {labeled_fraction}")
    if not 0 <= seed < 2 ** 32:
        raise BratsConversionError(f"--seed must be between 0 and 2**32 - 1, got {seed}")


def split_cases(case_ids: Sequence[str], test_fraction: float, labeled_fraction: Optional[float],
                seed: int) -> Dict[str, List[str]]:
    """Seeded held-out test split, then (optionally) a labeled / unlabeled split of the rest.

    A fraction above 0 that rounds to no case at all (or to every case) is refused rather than silently giving a
    dataset without the test set, training case or unlabeled case that was asked for.
    """
    check_split_arguments(test_fraction, labeled_fraction, seed)
    ids = sorted(case_ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    num_test = int(round(test_fraction * len(ids)))
    if test_fraction > 0 and num_test == 0:
        raise BratsConversionError(f"--test-fraction {test_fraction} of {len(ids)} cases gives no test case. Raise "
                                   f"it to at least {0.5 / len(ids):.3g}, or pass 0 for no test split.")
    if num_test >= len(ids):
        raise BratsConversionError(f"--test-fraction {test_fraction} of {len(ids)} cases leaves no training case. "
                                   f"Lower it, or convert more cases.")
    test = sorted(ids[i] for i in order[:num_test])
    train = sorted(ids[i] for i in order[num_test:])
    if labeled_fraction is None:
        return {"test": test, "labeled": train, "unlabeled": []}
    labeled, unlabeled = split_labeled_fraction(train, labeled_fraction, seed)
    if labeled_fraction < 1 and not unlabeled:
        raise BratsConversionError(f"--labeled-fraction {labeled_fraction} of the {len(train)} training cases leaves "
                                   f"no unlabeled case. Lower it, pass 1 to keep all labeled, or convert more cases.")
    return {"test": test, "labeled": labeled, "unlabeled": unlabeled}


def write_dataset_json(folder: str, num_training: int) -> None:
    """``folder/dataset.json`` through nnU-Net's own ``generate_dataset_json``."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    fields = region_dataset_json(num_training)
    generate_dataset_json(folder, fields.pop("channel_names"), fields.pop("labels"), fields.pop("numTraining"),
                          fields.pop("file_ending"), license="see the BraTS 2019 data terms",
                          converted_by="nnunet-mem-cif convert-brats2019", **fields)


def region_dataset_json(num_training: int) -> dict:
    return {
        "channel_names": {str(i): m.upper() if m != "t1ce" else "T1ce" for i, m in enumerate(MODALITIES)},
        "labels": {"background": 0, **{name: list(labels) if len(labels) > 1 else labels[0]
                                        for name, labels in REGIONS_NNUNET.items()}},
        "regions_class_order": [min(labels) for labels in REGIONS_NNUNET.values()],
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "description": "BraTS 2019 converted by nnunet-mem-cif (labels: 1 edema, 2 necrotic/non-enhancing core, "
                       "3 enhancing tumor; region-based training)",
    }


def convert_brats2019(brats_dir: str, raw_root: str, dataset_id: int, name: str = "BraTS2019", subset: str = "HGG",
                      test_fraction: float = 0.2, labeled_fraction: Optional[float] = None, seed: int = 12345,
                      overwrite: bool = False) -> str:
    """Write ``raw_root/DatasetNNN_NAME`` and return its path; the source folder is only read.

    Arguments, the target and the split are checked before anything is written; the dataset is written through
    ``atomic_folder``, so it appears complete or not at all. An existing target is an error unless ``overwrite``.
    """
    if not 0 < dataset_id < 1000:
        raise BratsConversionError(f"dataset id must be 1..999, got {dataset_id}")
    if not name or os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise BratsConversionError(f"dataset name {name!r} must be a plain folder name")
    check_split_arguments(test_fraction, labeled_fraction, seed)
    target = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    if os.path.lexists(target) and not overwrite:
        raise BratsConversionError(f"{target} already exists. Choose another --dataset-id/--name or pass "
                                   f"--overwrite to replace it.")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise BratsConversionError(f"{target} exists and is not a folder. Choose another --dataset-id/--name.")
    if is_within(target, brats_dir) or is_within(brats_dir, target):
        raise BratsConversionError(f"{target} and the BraTS folder {brats_dir} overlap; the source is only read. "
                                   f"Point nnUNet_raw elsewhere.")
    cases = dict(find_brats_cases(brats_dir, subset))
    split = split_cases(list(cases), test_fraction, labeled_fraction, seed)
    legacy = target + ".partial"  # earlier versions' temporary: nnU-Net would take it for a second dataset NNN
    if os.path.isdir(legacy):
        print(f"nnunet-mem-cif: removing {legacy}, left over from an interrupted run", file=sys.stderr)
        shutil.rmtree(legacy)
    with atomic_folder(target, overwrite) as partial:
        folders = {"test": (TEST_FOLDER, "labelsTs"), "labeled": (TRAINING_FOLDER, "labelsTr"),
                   "unlabeled": (UNLABELED_FOLDER, None)}
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
                                    os.path.join(partial, labels, f"{case}.nii.gz"), brats_to_nnunet_labels)
        write_dataset_json(partial, len(split["labeled"]))
        record = {"source": os.path.abspath(brats_dir), "subset": subset, "seed": seed,
                  "test_fraction": test_fraction, "labeled_fraction": labeled_fraction, "cases": split}
        with open(os.path.join(partial, "conversion.json"), "w") as f:
            json.dump(record, f, indent=2)
    return target
