"""A case is in exactly one of imagesTr, imagesUnlabeled and imagesTs: checked by name and by image content when
unlabeled cases are preprocessed, when a semi-supervised trainer starts, and before a table's runs.

Every test works on a private copy of the shared workspace's dataset (``private_copy``)."""
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

import nnunet_mem_cif.ssl.unlabeled_data as unlabeled_data
from nnunet_mem_cif.results_table import TableError, check_no_test_case_in_training
from nnunet_mem_cif.cli import main
from nnunet_mem_cif.ssl.unlabeled_data import UnlabeledDataError, preprocess_unlabeled
from .nnunet_workspace import DATASET_NAME, make_trainer, private_copy
from .synthetic_data import tree_hash


@pytest.fixture
def copy(workspace, tmp_path, monkeypatch):
    ws = private_copy(workspace, str(tmp_path / "ws"), monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return ws


def raw(ws, *parts) -> str:
    return os.path.join(ws.raw, DATASET_NAME, *parts)


def preprocessed(ws, *parts) -> str:
    return os.path.join(ws.preprocessed, DATASET_NAME, *parts)


def copy_case(ws, source_folder, case, target_folder, new_name, resave=False):
    """Copy a case's four channel files; ``resave``: decoded and written as float64, so that only the voxels are
    the same, not the bytes."""
    for channel in range(4):
        source = raw(ws, source_folder, f"{case}_{channel:04d}.nii.gz")
        target = raw(ws, target_folder, f"{new_name}_{channel:04d}.nii.gz")
        if resave:
            image = sitk.ReadImage(source)
            sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat64), target)
        else:
            shutil.copyfile(source, target)


def one_line_error(capsys, *args) -> str:
    code = main([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("nnunet-mem-cif: error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------------------ preprocess-unlabeled

@pytest.mark.parametrize("source_folder, case, new_name, resave, role", [
    ("imagesTs", "test_000", "extra_017", False, "test"),           # renamed copy of a test case
    ("imagesTs", "test_001", "extra_018", True, "test"),            # re-saved as float64: other bytes, same voxels
    ("imagesTr", "lab_002", "extra_019", False, "labeled training"),
])
def test_preprocess_unlabeled_refuses_a_training_or_test_case_by_content(copy, capsys, source_folder, case,
                                                                         new_name, resave, role):
    copy_case(copy, source_folder, case, "imagesUnlabeled", new_name, resave)
    before = tree_hash(preprocessed(copy))
    line = one_line_error(capsys, "preprocess-unlabeled", "-d", DATASET_NAME, "-c", "3d_fullres", "-np", "1",
                          "--overwrite")
    assert raw(copy, "imagesUnlabeled", f"{new_name}_0000.nii.gz") in line
    assert raw(copy, source_folder, f"{case}_0000.nii.gz") in line
    assert f"the unlabeled and the {role} set" in line and "Delete the unlabeled copy" in line
    assert tree_hash(preprocessed(copy)) == before


@pytest.mark.parametrize("source_folder, case", [("imagesTs", "test_000"), ("imagesTr", "lab_001")])
def test_preprocess_unlabeled_refuses_a_training_or_test_case_by_name(copy, capsys, source_folder, case):
    copy_case(copy, "imagesUnlabeled", "unl_000", "imagesUnlabeled", case)  # another image, a taken name
    before = tree_hash(preprocessed(copy))
    line = one_line_error(capsys, "preprocess-unlabeled", "-d", DATASET_NAME, "-c", "3d_fullres", "-np", "1",
                          "--overwrite")
    assert f"case id(s) {case} are both in imagesUnlabeled and in {source_folder}" in line
    assert tree_hash(preprocessed(copy)) == before


def test_preprocess_unlabeled_records_the_fingerprint_of_every_raw_image(copy):
    folder = preprocess_unlabeled(DATASET_NAME, "3d_fullres", num_processes=1, overwrite=True)
    from batchgenerators.utilities.file_and_folder_operations import load_json
    files = load_json(folder + ".json")["files"]
    assert len(files) == 4 * (6 + 3 + 2)
    assert {name.split("/")[0] for name in files} == {"imagesTr", "imagesUnlabeled", "imagesTs"}
    assert all(len(entry["sha256"]) == 64 and len(entry["voxels"]) == 64 for entry in files.values())


# ---------------------------------------------------------------------------------------------- training start

def unchecked_preprocessing(monkeypatch) -> None:
    """Preprocess as an earlier version did, without the leakage checks (to get a leaking set at all)."""
    with monkeypatch.context() as patch:
        patch.setattr(unlabeled_data, "check_content_disjoint", lambda *args, **kwargs: None)
        patch.setattr(unlabeled_data, "check_names_disjoint", lambda *args, **kwargs: None)
        preprocess_unlabeled(DATASET_NAME, "3d_fullres", num_processes=1, overwrite=True)


def test_training_start_refuses_a_test_case_among_the_unlabeled_ones(copy, monkeypatch):
    copy_case(copy, "imagesTs", "test_001", "imagesUnlabeled", "extra_000")
    unchecked_preprocessing(monkeypatch)
    trainer = make_trainer("MemCifSemiTrainer_debug")
    with pytest.raises(UnlabeledDataError) as raised:
        trainer.get_dataloaders()
    message = str(raised.value)
    assert raw(copy, "imagesUnlabeled", "extra_000_0000.nii.gz") in message
    assert raw(copy, "imagesTs", "test_001_0000.nii.gz") in message and "--overwrite" in message
    assert trainer.dataloader_train is None  # stopped before nnU-Net's loaders (and their workers) were made


def test_training_start_refuses_an_unlabeled_case_named_like_a_test_case(copy, monkeypatch):
    copy_case(copy, "imagesUnlabeled", "unl_001", "imagesUnlabeled", "test_000")
    unchecked_preprocessing(monkeypatch)
    with pytest.raises(UnlabeledDataError, match="test_000 are both in the preprocessed unlabeled cases"):
        make_trainer("MemCifSemiTrainer_debug").get_unlabeled_dataset()


def test_training_start_finds_a_test_case_added_after_preprocessing(copy):
    """imagesTs changed since preprocessing: its new file is decoded at training start and compared."""
    assert len(make_trainer("MemCifSemiTrainer_debug").get_unlabeled_dataset().identifiers) == 3
    copy_case(copy, "imagesUnlabeled", "unl_002", "imagesTs", "test_new", resave=True)
    with pytest.raises(UnlabeledDataError, match="unl_002_0000.nii.gz holds the same image as .*test_new_0000"):
        make_trainer("MemCifSemiTrainer_debug").get_unlabeled_dataset()


@pytest.mark.parametrize("change, message", [("add", "changed since its cases were preprocessed"),
                                             ("modify", "unl_001_0003.nii.gz changed since it was preprocessed")])
def test_training_start_refuses_preprocessed_cases_of_another_raw_folder(copy, change, message):
    if change == "add":
        copy_case(copy, "imagesTr", "lab_000", "imagesUnlabeled", "new_case", resave=True)
    else:
        path = raw(copy, "imagesUnlabeled", "unl_001_0003.nii.gz")
        image = sitk.ReadImage(path)
        changed = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) * np.float32(1.01))
        changed.CopyInformation(image)
        sitk.WriteImage(changed, path)
    with pytest.raises(UnlabeledDataError, match=message):
        make_trainer("MemCifSemiTrainer_debug").get_unlabeled_dataset()


def test_training_start_needs_the_raw_dataset(copy, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "elsewhere"))
    with pytest.raises(UnlabeledDataError, match="Set nnUNet_raw to the folder that holds Dataset501"):
        make_trainer("MemCifSemiTrainer_debug").get_unlabeled_dataset()


def test_hidden_label_mode_refuses_hidden_label_cases_that_are_validation_cases(copy):
    cases = [f"lab_{i:03d}" for i in range(6)]
    save_json([{"train": cases, "val": cases[:2]}], preprocessed(copy, "splits_final.json"))  # overlapping split
    with pytest.raises(UnlabeledDataError, match="validation cases of fold 0"):
        make_trainer("MemCifSemiTrainer_10pct").get_unlabeled_dataset()


def test_hidden_label_mode_refuses_hidden_label_cases_named_like_test_cases(copy):
    copy_case(copy, "imagesTr", "lab_003", "imagesTs", "lab_003")
    save_json([{"train": ["lab_000", "lab_001", "lab_002", "lab_003"], "val": ["lab_004", "lab_005"]}],
              preprocessed(copy, "splits_final.json"))
    trainer = make_trainer("MemCifSemiTrainer_10pct")
    with pytest.raises(UnlabeledDataError, match="lab_003 are both in the training cases with hidden labels and "
                                                 "in imagesTs"):
        trainer.get_unlabeled_dataset()


# ------------------------------------------------------------------------------------------------------ table

def test_table_refuses_a_test_case_that_is_a_training_case(copy):
    check_no_test_case_in_training(raw(copy), ".nii.gz", SimpleITKIO)
    copy_case(copy, "imagesTr", "lab_004", "imagesTs", "test_copy", resave=True)
    with pytest.raises(TableError, match="imagesTr/lab_004_0000.nii.gz holds the same image as .*test_copy"):
        check_no_test_case_in_training(raw(copy), ".nii.gz", SimpleITKIO)
