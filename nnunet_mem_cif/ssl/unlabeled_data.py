"""Unlabeled cases: preprocessing with the labeled cases' plans, integrity checks, and nnU-Net-style loading.

Convention: raw unlabeled images live in ``nnUNet_raw/DatasetXXX/imagesUnlabeled/`` with nnU-Net's channel naming
(``CASE_0000.nii.gz`` ...). They are preprocessed with the configuration's own preprocessor class and plans into
``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` — a folder of its own, because nnU-Net's
cross-validation split takes every case in the labeled folder. A manifest beside it
(``<data_identifier>_unlabeled.json``; not inside it, where nnU-Net's ``infer_dataset_class`` would trip over it)
records the plans' fingerprint and the case list, so training refuses stale or partial data instead of silently
using it.
"""
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from datetime import datetime
from typing import Dict, List, Sequence, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetBaseDataset
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_mem_cif.atomic import write_atomically
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.image_checks import InvalidImageError, check_image_file

RAW_UNLABELED_FOLDER = "imagesUnlabeled"
MANIFEST_VERSION = 1


class UnlabeledDataError(PluginUserError, RuntimeError):
    """Unlabeled data is configured but missing, incomplete or inconsistent with the plans."""


def unlabeled_folder(preprocessed_dataset_base: str, data_identifier: str) -> str:
    return join(preprocessed_dataset_base, data_identifier + "_unlabeled")


def manifest_file(preprocessed_dataset_base: str, data_identifier: str) -> str:
    return join(preprocessed_dataset_base, data_identifier + "_unlabeled.json")


# the entries of a configuration that change what a preprocessed case looks like (not batch or patch size)
PREPROCESSING_KEYS = ("data_identifier", "preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                      "resampling_fn_seg_kwargs")


def plans_fingerprint(plans_manager: PlansManager, configuration_name: str) -> str:
    """Hash of everything in the plans that changes what a preprocessed case looks like."""
    configuration = plans_manager.get_configuration(configuration_name).configuration
    relevant = {
        "plans_name": plans_manager.plans_name,
        "configuration": {key: configuration.get(key) for key in PREPROCESSING_KEYS},
        "transpose_forward": plans_manager.transpose_forward,
        "foreground_intensity_properties_per_channel": plans_manager.foreground_intensity_properties_per_channel,
        "image_reader_writer": plans_manager.plans.get("image_reader_writer"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def find_unlabeled_cases(images_folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """Map case id -> its channel files (in channel order), checking that every case has every channel."""
    if not isdir(images_folder):
        raise UnlabeledDataError(f"{images_folder} does not exist. Put unlabeled images there with nnU-Net's channel "
                                 f"naming (CASE_0000{file_ending}, CASE_0001{file_ending}, ...).")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    channels: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(images_folder)):
        if name.startswith("."):
            continue
        match = pattern.match(name)
        if match is None:
            raise UnlabeledDataError(f"{join(images_folder, name)}: not named CASE_XXXX{file_ending} (XXXX = 4-digit "
                                     f"channel index). Rename or remove it.")
        case, channel = match.group(1), int(match.group(2))
        if channel >= num_channels:
            raise UnlabeledDataError(f"{join(images_folder, name)}: channel {channel} but dataset.json declares "
                                     f"{num_channels} channels (0..{num_channels - 1}).")
        channels.setdefault(case, {})[channel] = join(images_folder, name)
    if not channels:
        raise UnlabeledDataError(f"{images_folder} holds no unlabeled images (*{file_ending}). Add cases or train "
                                 f"without unlabeled data (MemCifTrainer_noSSL).")
    for case, files in channels.items():
        missing = [c for c in range(num_channels) if c not in files]
        if missing:
            expected = ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing)
            raise UnlabeledDataError(f"unlabeled case {case} in {images_folder} lacks {expected}. Add the missing "
                                     f"channel file(s) or remove the case.")
    return {case: [files[c] for c in range(num_channels)] for case, files in channels.items()}


def check_unlabeled_images(image_files: List[str]) -> None:
    """NIfTI files checked as stored (finite, not all zero): either fault would silently poison the consistency
    loss. Other formats are left to nnU-Net's reader."""
    for path in image_files:
        if path.endswith((".nii", ".nii.gz")):
            try:
                check_image_file(path)
            except InvalidImageError as e:
                raise UnlabeledDataError(f"{e} (in {RAW_UNLABELED_FOLDER})") from e


def _preprocess_one(task) -> str:
    preprocessor, output_truncated, image_files, plans_manager, configuration_manager, dataset_json = task
    try:
        check_unlabeled_images(image_files)
        preprocessor.run_case_save(output_truncated, image_files, None, plans_manager, configuration_manager,
                                   dataset_json)
    except UnlabeledDataError:
        raise
    except Exception as e:
        raise UnlabeledDataError(f"preprocessing unlabeled case {os.path.basename(output_truncated)} failed "
                                 f"({', '.join(image_files)}): {type(e).__name__}: {e}") from e
    return output_truncated


def preprocess_unlabeled(dataset_name_or_id: Union[int, str], configuration: str,
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 4) -> str:
    """Preprocess ``imagesUnlabeled`` like the labeled cases of ``configuration``; returns the output folder.

    Writes into a ``.partial`` folder and swaps it in only when every case succeeded, so an interrupted run never
    leaves a folder that training would accept.
    """
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's own message says which id and where it looked
        raise UnlabeledDataError(str(e)) from e
    preprocessed_base = join(nnUNet_preprocessed, dataset_name)
    plans_file = join(preprocessed_base, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UnlabeledDataError(f"{plans_file} not found. Plan and preprocess the labeled cases first: "
                                 f"nnUNetv2_plan_and_preprocess -d {dataset_name} -c {configuration}")
    plans_manager = PlansManager(plans_file)
    configuration_manager = plans_manager.get_configuration(configuration)
    dataset_json = load_json(join(preprocessed_base, "dataset.json"))
    file_ending = dataset_json["file_ending"]
    cases = find_unlabeled_cases(join(nnUNet_raw, dataset_name, RAW_UNLABELED_FOLDER), file_ending,
                                 len(dataset_json["channel_names"]))
    labeled_folder = join(nnUNet_raw, dataset_name, "imagesTr")
    if isdir(labeled_folder):
        labeled = {f[:-len(file_ending) - 5] for f in subfiles(labeled_folder, suffix=file_ending, join=False)}
        both = sorted(labeled & set(cases))
        if both:
            raise UnlabeledDataError(f"case id(s) {both[:5]} are in both imagesTr and {RAW_UNLABELED_FOLDER}. A case "
                                     f"is either labeled or unlabeled: remove or rename the unlabeled copy.")

    output_folder = unlabeled_folder(preprocessed_base, configuration_manager.data_identifier)
    partial_folder = output_folder + ".partial"
    manifest = manifest_file(preprocessed_base, configuration_manager.data_identifier)
    shutil.rmtree(partial_folder, ignore_errors=True)
    os.makedirs(partial_folder)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    tasks = [(preprocessor, join(partial_folder, case), files, plans_manager, configuration_manager, dataset_json)
             for case, files in sorted(cases.items())]
    progress = dict(total=len(tasks), desc=f"Preprocessing unlabeled cases ({configuration})", unit="case")
    try:
        if num_processes <= 1:
            for task in tqdm(tasks, **progress):
                _preprocess_one(task)
        else:
            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                for _ in tqdm(pool.imap_unordered(_preprocess_one, tasks), **progress):
                    pass
    except BaseException:
        shutil.rmtree(partial_folder, ignore_errors=True)  # the previous result, if any, stays untouched
        raise

    if isfile(manifest):
        os.remove(manifest)
    if isdir(output_folder):
        shutil.rmtree(output_folder)
    os.replace(partial_folder, output_folder)
    manifest_content = {
        "version": MANIFEST_VERSION,
        "dataset": dataset_name,
        "plans_identifier": plans_identifier,
        "configuration": configuration,
        "data_identifier": configuration_manager.data_identifier,
        "plans_fingerprint": plans_fingerprint(plans_manager, configuration),
        "cases": sorted(cases),
        "source": join(nnUNet_raw, dataset_name, RAW_UNLABELED_FOLDER),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    write_atomically(manifest, lambda partial: save_json(manifest_content, partial, sort_keys=False))
    return output_folder


def load_unlabeled_dataset(preprocessed_dataset_base: str, plans_manager: PlansManager,
                           configuration_name: str) -> nnUNetBaseDataset:
    """The preprocessed unlabeled cases for this plans/configuration, or one clear UnlabeledDataError."""
    data_identifier = plans_manager.get_configuration(configuration_name).data_identifier
    folder = unlabeled_folder(preprocessed_dataset_base, data_identifier)
    manifest = manifest_file(preprocessed_dataset_base, data_identifier)
    command = (f"nnunet-mem-cif preprocess-unlabeled -d {plans_manager.dataset_name} -c {configuration_name} "
               f"-p {plans_manager.plans_name}")
    if not isdir(folder):
        raise UnlabeledDataError(
            f"This trainer learns from unlabeled cases, but {folder} does not exist. Put unlabeled images into "
            f"nnUNet_raw/{plans_manager.dataset_name}/{RAW_UNLABELED_FOLDER}/ and run: {command}")
    if not isfile(manifest):
        raise UnlabeledDataError(f"{folder} has no manifest ({manifest}): its preprocessing did not finish. "
                                 f"Run again: {command}")
    recorded = load_json(manifest)
    if recorded.get("plans_fingerprint") != plans_fingerprint(plans_manager, configuration_name):
        raise UnlabeledDataError(f"{folder} was preprocessed with other plans than the current "
                                 f"{plans_manager.plans_name}/{configuration_name} (the plans changed since). "
                                 f"Run again: {command}")
    if not subfiles(folder, suffix=".pkl"):
        raise UnlabeledDataError(f"{folder} holds no preprocessed cases. Run again: {command}")
    dataset_class = infer_dataset_class(folder)
    identifiers = sorted(dataset_class.get_identifiers(folder))
    if identifiers != sorted(recorded["cases"]):
        raise UnlabeledDataError(f"{folder} holds {len(identifiers)} cases but its manifest lists "
                                 f"{len(recorded['cases'])}: the folder was changed by hand. Run again: {command}")
    return dataset_class(folder, identifiers)


class _CasesWithoutLabels:
    """Presents a dataset to nnUNetDataLoader, which reads foreground locations, for random cropping only."""

    def __init__(self, dataset: nnUNetBaseDataset):
        self.dataset = dataset
        self.identifiers = list(dataset.identifiers)

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        properties["class_locations"] = None  # never read: no oversampling, no ignore label (see below)
        return data, seg, seg_prev, properties


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader on unlabeled cases: random crops, no foreground oversampling (there are no labels).

    The ``segmentation`` it yields is the brain (nonzero) mask that nnU-Net's preprocessing stores for every case:
    0 inside, -1 outside and in padding. For benchmark runs that hide the labels of labeled cases, the labels are
    never read as targets either: the consistency loss uses ``segmentation >= 0`` only.
    """

    def __init__(self, data: nnUNetBaseDataset, batch_size: int, patch_size: Sequence[int],
                 final_patch_size: Sequence[int], label_manager: LabelManager, transforms=None):
        super().__init__(_CasesWithoutLabels(data), batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False  # an ignore label is about annotations; these crops use none


def brain_mask(segmentation: torch.Tensor) -> torch.Tensor:
    """The region the consistency loss is computed in: inside the nonzero mask, not in padding."""
    return segmentation >= 0
