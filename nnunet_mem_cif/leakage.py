"""A case belongs to exactly one of imagesTr (labeled training), imagesUnlabeled and imagesTs (test).

A test case that also reaches training (as labeled or as unlabeled data) makes every test number optimistic without
any visible sign, so membership is checked twice over: by case name, and by content, because a copied case is
usually renamed. Content is compared through a digest of each channel's voxel array as nnU-Net's own reader returns
it (float32, with its shape), so a copy re-saved with another compression, file name or pixel type is still found.
Decoding every image is the slow part (minutes for BraTS-size data), so each file's digest is stored next to a digest
of the file's bytes: a later check reads the bytes (seconds) and decodes only files that changed since.

Channels of constant value (a missing modality filled with zeros) say nothing about the case and are never compared.
"""
import hashlib
import multiprocessing
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import numpy as np
from tqdm import tqdm

from nnunet_mem_cif.errors import PluginUserError

# the image folders of a raw dataset, defined here once: nnU-Net's two and this plugin's unlabeled one
TRAINING_FOLDER, UNLABELED_FOLDER, TEST_FOLDER = "imagesTr", "imagesUnlabeled", "imagesTs"
FOLDER_ROLES = {TRAINING_FOLDER: "labeled training", UNLABELED_FOLDER: "unlabeled", TEST_FOLDER: "test"}
# file name -> {"sha256": digest of the bytes, "voxels": digest of the voxel array or None (constant channel)}
Fingerprints = Dict[str, Dict[str, Optional[str]]]


def case_files(folder: str, file_ending: str) -> Dict[str, List[str]]:
    """Case id -> its image files (sorted by channel) in an nnU-Net image folder; {} when the folder is missing.

    Lenient on purpose (files of another naming are skipped): this only asks which cases a folder holds. Checking
    that a folder is complete is the job of whoever reads it for training.
    """
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder
    if not os.path.isdir(folder):
        return {}
    # nnU-Net's own reading of a folder, case by case: its create_lists_from_splitted_dataset_folder runs the same
    # matcher in a forked process pool, which deadlocks in a process that already runs threads (a trainer, the
    # table, the tests). Hidden files (e.g. macOS's ._ copies) are not cases.
    names = sorted(name for name in os.listdir(folder) if name.endswith(file_ending))
    identifiers = [case for case in get_identifiers_from_splitted_dataset_folder(folder, file_ending)
                   if not case.startswith(".")]
    cases = {case: create_paths_fn(folder, names, file_ending, case) for case in identifiers}
    return {case: channels for case, channels in cases.items() if channels}


def file_digest(path: str) -> str:
    """SHA-256 of the file's bytes: cheap enough to recompute at every training start."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def voxel_digest(path: str, reader_class: type) -> Optional[str]:
    """SHA-256 of the image's voxel array (float32, C order) and shape as nnU-Net's ``reader_class`` reads it; None
    for a constant image, which would make unrelated cases look identical."""
    data, _ = reader_class().read_images([path])
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.size == 0 or data.min() == data.max():
        return None
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def _fingerprint(task: tuple) -> Tuple[str, Dict[str, Optional[str]], Optional[str]]:
    """(name, fingerprint, error message or None); errors travel back as text so that a worker process never
    has to pickle an exception."""
    name, path, reader_class, known = task
    try:
        sha256 = file_digest(path)
        if known is not None and known.get("sha256") == sha256 and "voxels" in known:
            return name, {"sha256": sha256, "voxels": known["voxels"]}, None
        return name, {"sha256": sha256, "voxels": voxel_digest(path, reader_class)}, None
    except Exception as e:  # a reader raises many types for a corrupt file
        return name, {}, f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"


def fingerprint_files(dataset_folder: str, names: Sequence[str], reader_class: type, num_processes: int = 1,
                      known: Optional[Fingerprints] = None,
                      error: Type[PluginUserError] = PluginUserError) -> Fingerprints:
    """Fingerprints of ``names`` (paths relative to ``dataset_folder``, e.g. ``imagesTs/case_0000.nii.gz``).

    ``known``: earlier fingerprints; a file whose bytes are unchanged keeps its recorded voxel digest instead of
    being decoded again.
    """
    known = known or {}
    tasks = [(name, os.path.join(dataset_folder, name), reader_class, known.get(name)) for name in names]
    if num_processes <= 1 or len(tasks) <= 1:
        return _collect(map(_fingerprint, tasks), len(tasks), error)
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
        return _collect(pool.imap_unordered(_fingerprint, tasks, chunksize=4), len(tasks), error)


def _collect(results: Iterable, total: int, error: Type[PluginUserError]) -> Fingerprints:
    """Gather the workers' results; the progress bar (terminals only, cleared when done) keeps a following error
    message the only line."""
    fingerprints: Fingerprints = {}
    with tqdm(results, total=total, desc="Comparing raw images", unit="image", leave=False,
              disable=not sys.stderr.isatty()) as bar:
        for name, fingerprint, problem in bar:
            if problem:
                raise error(f"{problem}. Replace the file or remove the case.")
            fingerprints[name] = fingerprint
    return fingerprints


def relative_names(dataset_folder: str, cases: Dict[str, List[str]]) -> List[str]:
    """The files of ``cases`` as manifest keys: relative to the dataset folder (which may move), '/'-separated."""
    return sorted(os.path.relpath(path, dataset_folder).replace(os.sep, "/")
                  for files in cases.values() for path in files)


def identical_images(first: Fingerprints, second: Fingerprints) -> List[Tuple[str, str]]:
    """(name in ``first``, name in ``second``) for every image of ``first`` whose voxels equal one of ``second``."""
    index: Dict[str, str] = {}
    for name in sorted(second):
        if second[name].get("voxels"):
            index.setdefault(second[name]["voxels"], name)
    return [(name, index[first[name]["voxels"]]) for name in sorted(first) if first[name].get("voxels") in index]


def in_folder(folder: str) -> Callable[[str], bool]:
    return lambda name: name.split("/", 1)[0] == folder


def same_case_message(dataset_folder: str, first: str, second: str, advice: str) -> str:
    """Why two files of different groups holding the same image is an error, naming both files."""
    first_group, second_group = (FOLDER_ROLES.get(name.split("/", 1)[0], "?") for name in (first, second))
    return (f"{os.path.join(dataset_folder, first)} holds the same image as {os.path.join(dataset_folder, second)}: "
            f"one case is in the {first_group} and the {second_group} set (a case may be in only one of imagesTr, "
            f"imagesUnlabeled and imagesTs, or test results are not held-out results). {advice}")


def check_names_disjoint(first_label: str, first: Iterable[str], others: Dict[str, Iterable[str]], where: str,
                         advice: str, error: Type[PluginUserError]) -> None:
    """Refuse a case id of ``first`` that is also in one of ``others`` (description -> case ids)."""
    first = set(first)
    for label, ids in others.items():
        both = sorted(first & set(ids))
        if both:
            shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
            raise error(f"case id(s) {shown} are both in {first_label} and in {label} of {where}: a case may be in "
                        f"only one of training, unlabeled and test data. {advice}")


def check_content_disjoint(dataset_folder: str, fingerprints: Fingerprints, pairs: Sequence[Tuple[str, str]],
                           advice: Dict[str, str], error: Type[PluginUserError]) -> None:
    """Refuse identical images across the folder pairs ``pairs`` ((folder, folder), e.g. (imagesUnlabeled,
    imagesTs)); ``advice[folder]`` says what to do when the first folder of a pair holds the copy."""
    for first, second in pairs:
        found = identical_images({k: v for k, v in fingerprints.items() if in_folder(first)(k)},
                                 {k: v for k, v in fingerprints.items() if in_folder(second)(k)})
        if found:
            a, b = found[0]
            more = f" ({len(found) - 1} more such file(s))" if len(found) > 1 else ""
            raise error(same_case_message(dataset_folder, a, b, advice[first]) + more)
