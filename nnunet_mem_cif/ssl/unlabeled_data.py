"""Unlabeled cases: preprocessing with the labeled cases' plans, integrity checks, and nnU-Net-style loading.

Convention: raw unlabeled images live in ``nnUNet_raw/DatasetXXX/imagesUnlabeled/`` with nnU-Net's channel naming
(``CASE_0000.nii.gz`` ...). They are preprocessed with the configuration's own preprocessor class and plans into
``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` — a folder of its own, because nnU-Net's
cross-validation split takes every case in the labeled folder. A manifest beside it
(``<data_identifier>_unlabeled.json``; not inside it, where nnU-Net's ``infer_dataset_class`` would trip over it)
records the plans' fingerprint, the case list and a fingerprint of every raw image of imagesTr, imagesUnlabeled and
imagesTs, so training refuses stale or partial data, and unlabeled cases that are training or test cases, instead of
silently using them.
"""
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
from datetime import datetime
from typing import Dict, List, Sequence, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetBaseDataset
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_mem_cif.atomic import OutputFolderError, atomic_folder, write_atomically
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.image_checks import InvalidImageError, check_image_file
from nnunet_mem_cif.leakage import TEST_FOLDER, TRAINING_FOLDER, UNLABELED_FOLDER, case_files, \
    check_content_disjoint, check_names_disjoint, file_digest, fingerprint_files, relative_names
from nnunet_mem_cif.nnunet_commands import nnunet_folder

MANIFEST_VERSION = 2  # 2: fingerprints of the raw images ("files")


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
    """Map case id -> its channel files (in channel order), checking that every case has every channel.

    Ours rather than nnU-Net's ``create_lists_from_splitted_dataset_folder``: that one skips what does not match its
    naming, where unlabeled data that cannot be read must fail loudly, naming the file."""
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
                                 f"without unlabeled data (MemCifTrainer).")
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
                raise UnlabeledDataError(f"{e} (in {UNLABELED_FOLDER})") from e


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


# what nnU-Net's preprocessing writes per case (data, segmentation or mask, properties), in all its storage formats
PREPROCESSED_SUFFIXES = (".pkl", ".b2nd", ".npz", ".npy")
LEAKAGE_ADVICE = {
    UNLABELED_FOLDER: "Delete the unlabeled copy from imagesUnlabeled, then run nnunet-mem-cif "
                          "preprocess-unlabeled again.",
    TRAINING_FOLDER: "Keep the case in imagesTr or in imagesTs, not both (then plan and preprocess again).",
}


def _holds_preprocessed_cases(folder: str) -> bool:
    """Whether ``folder`` holds only files nnU-Net's preprocessing writes: the only folder this command replaces."""
    return all(os.path.isfile(join(folder, name)) and name.endswith(PREPROCESSED_SUFFIXES)
               for name in os.listdir(folder))


def _check_output(folder: str, manifest: str, overwrite: bool) -> bool:
    """Refuse an output this command may not replace; True when ``folder`` is the leftover of an interrupted run
    (cases but no manifest: the manifest is written last), which is removed without ``overwrite``."""
    if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
        raise OutputFolderError(f"{folder} exists and is not a folder. Move it away, then run again.")
    if not isdir(folder) or not os.listdir(folder):
        return False
    if not _holds_preprocessed_cases(folder):
        raise OutputFolderError(f"{folder} holds files nnU-Net's preprocessing does not write, so this command "
                                f"neither writes into nor replaces it (not even with --overwrite). Move them away, "
                                f"then run again.")
    if not isfile(manifest):
        return True
    if not overwrite:
        raise OutputFolderError(f"{folder} already holds preprocessed unlabeled cases (made "
                                f"{load_json(manifest).get('created', 'earlier')}). Pass --overwrite to replace them "
                                f"whole (e.g. after adding cases or re-planning).")
    return False


def preprocess_unlabeled(dataset_name_or_id: Union[int, str], configuration: str,
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 4,
                         overwrite: bool = False) -> str:
    """Preprocess ``imagesUnlabeled`` like the labeled cases of ``configuration``; returns the output folder.

    Everything is checked before anything is written: the arguments, that the labeled cases were planned and
    preprocessed for ``configuration``, the raw unlabeled folder, that no unlabeled case is a training or test case
    (by name, then by the content of every raw image of imagesTr, imagesUnlabeled and imagesTs; see
    ``nnunet_mem_cif.leakage``), and the output folder (an earlier result is replaced only with ``overwrite``).
    The cases are written through ``atomic_folder``, so an interrupted run never leaves a folder that training would
    accept; the manifest, written last, records the plans' fingerprint, the cases, and the fingerprint of every raw
    image, which each training start compares with the raw folders (``check_unlabeled_sources``).
    """
    if num_processes < 1:
        raise UnlabeledDataError(f"-np must be at least 1, got {num_processes}")
    raw_root, preprocessed_root = (nnunet_folder(v, UnlabeledDataError) for v in ("nnUNet_raw", "nnUNet_preprocessed"))
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's own message says which id and where it looked
        raise UnlabeledDataError(f"-d {dataset_name_or_id}: {e}") from e
    preprocessed_base = join(preprocessed_root, dataset_name)
    plans_file = join(preprocessed_base, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UnlabeledDataError(f"{plans_file} not found. Plan and preprocess the labeled cases first: "
                                 f"nnUNetv2_plan_and_preprocess -d {dataset_name} -c {configuration}")
    plans_manager = PlansManager(plans_file)
    if configuration not in plans_manager.available_configurations:
        raise UnlabeledDataError(f"-c {configuration}: {plans_file} has no such configuration (it has "
                                 f"{', '.join(plans_manager.available_configurations)}). Choose one of those.")
    configuration_manager = plans_manager.get_configuration(configuration)
    labeled_preprocessed = join(preprocessed_base, configuration_manager.data_identifier)
    if not isdir(labeled_preprocessed) or not os.listdir(labeled_preprocessed):
        raise UnlabeledDataError(f"-c {configuration}: the labeled cases were not preprocessed for it "
                                 f"({labeled_preprocessed} is missing or empty). Run nnUNetv2_plan_and_preprocess -d "
                                 f"{dataset_name} -c {configuration} first: unlabeled cases are preprocessed like the "
                                 f"cases they are trained with.")
    dataset_json = load_json(join(preprocessed_base, "dataset.json"))
    file_ending = dataset_json["file_ending"]
    raw_dataset = join(raw_root, dataset_name)
    cases = find_unlabeled_cases(join(raw_dataset, UNLABELED_FOLDER), file_ending,
                                 len(dataset_json["channel_names"]))
    training, test = (case_files(join(raw_dataset, folder), file_ending) for folder in (TRAINING_FOLDER, TEST_FOLDER))
    check_names_disjoint(UNLABELED_FOLDER, cases, {TRAINING_FOLDER: training, TEST_FOLDER: test}, raw_dataset,
                         LEAKAGE_ADVICE[UNLABELED_FOLDER], UnlabeledDataError)
    check_names_disjoint(TRAINING_FOLDER, training, {TEST_FOLDER: test}, raw_dataset,
                         LEAKAGE_ADVICE[TRAINING_FOLDER], UnlabeledDataError)

    output_folder = unlabeled_folder(preprocessed_base, configuration_manager.data_identifier)
    manifest = manifest_file(preprocessed_base, configuration_manager.data_identifier)
    leftover = _check_output(output_folder, manifest, overwrite)

    names = [name for group in (training, cases, test) for name in relative_names(raw_dataset, group)]
    fingerprints = fingerprint_files(raw_dataset, names, plans_manager.image_reader_writer_class, num_processes,
                                     error=UnlabeledDataError)
    check_content_disjoint(raw_dataset, fingerprints, [(UNLABELED_FOLDER, TRAINING_FOLDER),
                                                       (UNLABELED_FOLDER, TEST_FOLDER),
                                                       (TRAINING_FOLDER, TEST_FOLDER)],
                           LEAKAGE_ADVICE, UnlabeledDataError)

    # everything checked: from here on, writing
    for stale in ([output_folder] if leftover else []) + [output_folder + ".partial"]:  # the latter: older versions
        if os.path.lexists(stale):
            print(f"nnunet-mem-cif: removing {stale}, left over from an interrupted run", file=sys.stderr)
            shutil.rmtree(stale)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    with atomic_folder(output_folder, overwrite=True) as partial_folder:
        tasks = [(preprocessor, join(partial_folder, case), files, plans_manager, configuration_manager,
                  dataset_json) for case, files in sorted(cases.items())]
        progress = dict(total=len(tasks), desc=f"Preprocessing unlabeled cases ({configuration})", unit="case")
        if num_processes <= 1:
            for task in tqdm(tasks, **progress):
                _preprocess_one(task)
        else:
            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                for _ in tqdm(pool.imap_unordered(_preprocess_one, tasks), **progress):
                    pass
        if isfile(manifest):
            os.remove(manifest)  # the old cases must never be paired with a new manifest, nor the new with the old
    manifest_content = {
        "version": MANIFEST_VERSION,
        "dataset": dataset_name,
        "plans_identifier": plans_identifier,
        "configuration": configuration,
        "data_identifier": configuration_manager.data_identifier,
        "plans_fingerprint": plans_fingerprint(plans_manager, configuration),
        "cases": sorted(cases),
        "source": join(raw_dataset, UNLABELED_FOLDER),
        "created": datetime.now().isoformat(timespec="seconds"),
        "files": fingerprints,
    }
    write_atomically(manifest, lambda partial: save_json(manifest_content, partial, sort_keys=False))
    return output_folder


def _command(plans_manager: PlansManager, configuration_name: str, overwrite: bool = False) -> str:
    return (f"nnunet-mem-cif preprocess-unlabeled -d {plans_manager.dataset_name} -c {configuration_name} "
            f"-p {plans_manager.plans_name}" + (" --overwrite" if overwrite else ""))


def check_unlabeled_sources(preprocessed_dataset_base: str, plans_manager: PlansManager, configuration_name: str,
                            labeled_identifiers: Sequence[str], num_processes: int = 1) -> None:
    """At training start: the preprocessed unlabeled cases are still those of the raw ``imagesUnlabeled`` folder,
    and none of them is a training or test case.

    Run after ``load_unlabeled_dataset`` (which checks the manifest against the plans and the preprocessed folder).
    Names are compared with the preprocessed training cases (``labeled_identifiers``) and with the raw imagesTr and
    imagesTs. Content is compared through the fingerprints the manifest recorded at preprocessing time: every raw
    file's bytes are hashed again (seconds for BraTS-size data, where decoding every image would take minutes), an
    unlabeled file whose bytes changed means the preprocessed set is stale, and only an imagesTr / imagesTs file
    that is new or changed since is decoded to compare its voxels with the unlabeled cases'. This needs the raw
    dataset (``nnUNet_raw``), also where nnU-Net's training alone would not.
    """
    data_identifier = plans_manager.get_configuration(configuration_name).data_identifier
    recorded = load_json(manifest_file(preprocessed_dataset_base, data_identifier))
    dataset_name = plans_manager.dataset_name
    rerun = _command(plans_manager, configuration_name, overwrite=True)
    raw_dataset = _raw_dataset(dataset_name)
    file_ending = load_json(join(preprocessed_dataset_base, "dataset.json"))["file_ending"]
    raw_unlabeled = join(raw_dataset, UNLABELED_FOLDER)
    current = case_files(raw_unlabeled, file_ending)
    if sorted(current) != sorted(recorded["cases"]):
        added, removed = sorted(set(current) - set(recorded["cases"])), sorted(set(recorded["cases"]) - set(current))
        raise UnlabeledDataError(f"{raw_unlabeled} changed since its cases were preprocessed (added: "
                                 f"{', '.join(added[:5]) or 'none'}; removed: {', '.join(removed[:5]) or 'none'}). "
                                 f"Run again: {rerun}")
    files = recorded["files"]
    for name in relative_names(raw_dataset, current):
        if name not in files or files[name].get("sha256") != file_digest(join(raw_dataset, name)):
            raise UnlabeledDataError(f"{join(raw_dataset, name)} changed since it was preprocessed, so the "
                                     f"preprocessed unlabeled cases are not those of {raw_unlabeled}. Run again: "
                                     f"{rerun}")
    training, test = (case_files(join(raw_dataset, folder), file_ending) for folder in (TRAINING_FOLDER, TEST_FOLDER))
    check_names_disjoint(f"the preprocessed unlabeled cases ({UNLABELED_FOLDER})", recorded["cases"],
                         {f"the training cases ({join(preprocessed_dataset_base, data_identifier)})":
                          labeled_identifiers, TRAINING_FOLDER: training, TEST_FOLDER: test}, raw_dataset,
                         f"Delete the unlabeled copy from {UNLABELED_FOLDER}, then run: {rerun}",
                         UnlabeledDataError)
    names = relative_names(raw_dataset, training) + relative_names(raw_dataset, test)
    fingerprints = fingerprint_files(raw_dataset, names, plans_manager.image_reader_writer_class, num_processes,
                                     known=files, error=UnlabeledDataError)
    fingerprints.update({name: files[name] for name in relative_names(raw_dataset, current)})
    advice = f"Delete the unlabeled copy from {UNLABELED_FOLDER}, then run: {rerun}"
    check_content_disjoint(raw_dataset, fingerprints, [(UNLABELED_FOLDER, TRAINING_FOLDER),
                                                       (UNLABELED_FOLDER, TEST_FOLDER)],
                           {UNLABELED_FOLDER: advice}, UnlabeledDataError)


def _raw_dataset(dataset_name: str) -> str:
    raw_root = os.environ.get("nnUNet_raw")
    raw_dataset = join(raw_root, dataset_name) if raw_root else None
    if raw_dataset is None or not isdir(raw_dataset):
        raise UnlabeledDataError(f"the raw dataset {raw_dataset or dataset_name} was not found (nnUNet_raw="
                                 f"{raw_root}): at every training start the unlabeled cases are checked against the "
                                 f"raw imagesTr, imagesUnlabeled and imagesTs, so that no test case is trained on. Set "
                                 f"nnUNet_raw to the folder that holds {dataset_name}.")
    return raw_dataset


def check_hidden_label_pool(dataset_name: str, file_ending: str, hidden: Sequence[str], validation: Sequence[str],
                            fold) -> None:
    """Hidden-label mode (training cases with hidden labels as the unlabeled data): none of them may be a validation
    case of the fold or a test case (imagesTs) of the raw dataset.

    Names only: the pool comes from nnU-Net's own training cases, so a copy under another name is a train/test
    overlap of the labeled dataset itself, which ``nnunet-mem-cif table`` checks by content once before its runs
    (decoding every image at each of its many training starts would take minutes on BraTS-size data).
    """
    both = sorted(set(hidden) & set(validation))
    if both:
        raise UnlabeledDataError(f"case(s) {', '.join(both[:5])} would be unlabeled training data and validation "
                                 f"cases of fold {fold} at once (check splits_final.json; fold 'all' validates on its "
                                 f"training cases and cannot be used with a labeled fraction). Use another fold or "
                                 f"fix the split.")
    raw_dataset = _raw_dataset(dataset_name)
    test = case_files(join(raw_dataset, TEST_FOLDER), file_ending)
    check_names_disjoint("the training cases with hidden labels", hidden, {TEST_FOLDER: test}, raw_dataset,
                         "Remove the test case from imagesTr (then plan and preprocess again).", UnlabeledDataError)


def load_unlabeled_dataset(preprocessed_dataset_base: str, plans_manager: PlansManager,
                           configuration_name: str) -> nnUNetBaseDataset:
    """The preprocessed unlabeled cases for this plans/configuration, or one clear UnlabeledDataError."""
    data_identifier = plans_manager.get_configuration(configuration_name).data_identifier
    folder = unlabeled_folder(preprocessed_dataset_base, data_identifier)
    manifest = manifest_file(preprocessed_dataset_base, data_identifier)
    command, rerun = _command(plans_manager, configuration_name), _command(plans_manager, configuration_name, True)
    if not isdir(folder):
        raise UnlabeledDataError(
            f"This trainer learns from unlabeled cases, but {folder} does not exist. Put unlabeled images into "
            f"nnUNet_raw/{plans_manager.dataset_name}/{UNLABELED_FOLDER}/ and run: {command}")
    if not isfile(manifest):
        raise UnlabeledDataError(f"{folder} has no manifest ({manifest}): its preprocessing did not finish. "
                                 f"Run again: {command}")
    recorded = load_json(manifest)
    if recorded.get("version") != MANIFEST_VERSION:
        raise UnlabeledDataError(f"{folder} was preprocessed by another version of nnunet-mem-cif (manifest version "
                                 f"{recorded.get('version')}, not {MANIFEST_VERSION}), which did not record what "
                                 f"training start checks now. Run again: {rerun}")
    if recorded.get("plans_fingerprint") != plans_fingerprint(plans_manager, configuration_name):
        raise UnlabeledDataError(f"{folder} was preprocessed with other plans than the current "
                                 f"{plans_manager.plans_name}/{configuration_name} (the plans changed since). "
                                 f"Run again: {rerun}")
    if not subfiles(folder, suffix=".pkl"):
        raise UnlabeledDataError(f"{folder} holds no preprocessed cases. Run again: {rerun}")
    dataset_class = infer_dataset_class(folder)
    identifiers = sorted(dataset_class.get_identifiers(folder))
    if identifiers != sorted(recorded["cases"]):
        raise UnlabeledDataError(f"{folder} holds {len(identifiers)} cases but its manifest lists "
                                 f"{len(recorded['cases'])}: the folder was changed by hand. Run again: {rerun}")
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
    0 inside, -1 outside and in padding. For table runs that hide the labels of labeled cases, the labels are
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
