"""Unlabeled data: raw-folder checks, the manifest's integrity checks, and the loader's batches."""
import os
import shutil

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from .nnunet_workspace import DATASET_NAME
from nnunet_mem_cif.atomic import partial_path
from nnunet_mem_cif.ssl.unlabeled_data import UnlabeledDataError, find_unlabeled_cases, load_unlabeled_dataset, \
    manifest_file, unlabeled_folder


def touch(folder, *names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        open(os.path.join(folder, name), "w").close()


def test_find_unlabeled_cases_orders_channels(tmp_path):
    touch(tmp_path, "b_0001.nii.gz", "b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", ".hidden")
    cases = find_unlabeled_cases(str(tmp_path), ".nii.gz", 2)
    assert list(cases) == ["a", "b"]
    assert [os.path.basename(f) for f in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]


@pytest.mark.parametrize("files, message", [
    ([], "holds no unlabeled images"),
    (["a_0000.nii.gz"], "lacks a_0001.nii.gz"),
    (["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"], "declares 2 channels"),
    (["a.nii.gz"], "not named CASE_XXXX"),
])
def test_find_unlabeled_cases_rejects_bad_folders(tmp_path, files, message):
    touch(tmp_path, *files)
    with pytest.raises(UnlabeledDataError, match=message):
        find_unlabeled_cases(str(tmp_path), ".nii.gz", 2)


def test_find_unlabeled_cases_missing_folder(tmp_path):
    with pytest.raises(UnlabeledDataError, match="does not exist"):
        find_unlabeled_cases(str(tmp_path / "imagesUnlabeled"), ".nii.gz", 4)


@pytest.fixture
def preprocessed_copy(workspace, tmp_path):
    """A private copy of the preprocessed dataset that a test may damage."""
    target = tmp_path / DATASET_NAME
    shutil.copytree(os.path.join(workspace.preprocessed, DATASET_NAME), target)
    return str(target)


def plans_of(base: str) -> PlansManager:
    return PlansManager(os.path.join(base, "nnUNetPlans.json"))


def test_load_unlabeled_dataset_accepts_fresh_preprocessing(preprocessed_copy):
    dataset = load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")
    assert sorted(dataset.identifiers) == ["unl_000", "unl_001", "unl_002"]
    data, seg, _, properties = dataset.load_case("unl_000")
    assert data.shape[0] == 4 and "class_locations" not in properties
    assert set(np.unique(seg[:])) <= {-1, 0}  # nonzero mask only: there is no label


def test_missing_unlabeled_folder_names_the_command(preprocessed_copy):
    shutil.rmtree(unlabeled_folder(preprocessed_copy, "nnUNetPlans_3d_fullres"))
    with pytest.raises(UnlabeledDataError, match="nnunet-mem-cif preprocess-unlabeled -d Dataset501_SynthBraTS"):
        load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")


def test_unfinished_preprocessing_is_refused(preprocessed_copy):
    os.remove(manifest_file(preprocessed_copy, "nnUNetPlans_3d_fullres"))
    with pytest.raises(UnlabeledDataError, match="did not finish"):
        load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")


def test_other_plans_are_refused(preprocessed_copy):
    plans_file = os.path.join(preprocessed_copy, "nnUNetPlans.json")
    plans = load_json(plans_file)
    plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
    save_json(plans, plans_file)
    with pytest.raises(UnlabeledDataError, match="other plans"):
        load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")


def test_plans_changes_that_do_not_affect_preprocessing_are_accepted(preprocessed_copy):
    plans_file = os.path.join(preprocessed_copy, "nnUNetPlans.json")
    plans = load_json(plans_file)
    plans["configurations"]["3d_fullres"]["batch_size"] = 7
    save_json(plans, plans_file)
    load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")


def test_cases_changed_by_hand_are_refused(preprocessed_copy):
    folder = unlabeled_folder(preprocessed_copy, "nnUNetPlans_3d_fullres")
    for name in os.listdir(folder):
        if name.startswith("unl_001"):
            os.remove(os.path.join(folder, name))
    with pytest.raises(UnlabeledDataError, match="changed by hand"):
        load_unlabeled_dataset(preprocessed_copy, plans_of(preprocessed_copy), "3d_fullres")


def test_unlabeled_loader_batches(workspace, monkeypatch, tmp_path):
    """The trainer's unlabeled loader: weak + strong view stacked on channels, a brain mask per DS scale."""
    from .nnunet_workspace import make_trainer
    workspace.set_environment(monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # single-threaded augmenters: no worker processes in this test
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    trainer.get_dataloaders()
    batch = next(trainer.dataloader_unlabeled)
    patch = tuple(trainer.configuration_manager.patch_size)
    assert tuple(batch["data"].shape) == (trainer.batch_size, 8, *patch)
    masks = batch["target"]
    scales = trainer._get_deep_supervision_scales()
    assert len(masks) == len(scales)
    for mask, scale in zip(masks, scales):
        assert tuple(mask.shape) == (trainer.batch_size, 1, *[round(p * s) for p, s in zip(patch, scale)])
        assert set(torch.unique(mask).tolist()) <= {-1, 0}
    weak, strong = batch["data"][:, :4], batch["data"][:, 4:]
    assert not torch.equal(weak, strong)
    # the weak view is zero outside the brain (nnU-Net's MaskImageTransform), like labeled training patches
    outside = (masks[0] < 0).expand_as(weak)
    assert torch.all(weak[outside] == 0)


def _nan_voxel(array):
    array[0, 0, 0] = np.nan
    return array


def _all_zero(array):
    return np.zeros_like(array)


def _other_shape(array):
    return array[:-2]


@pytest.mark.parametrize("damage, message", [(_nan_voxel, "zz_bad_0002.nii.gz: contains NaN or infinite"),
                                             (_all_zero, "zz_bad_0002.nii.gz: the image is all zero"),
                                             (_other_shape, "unlabeled case zz_bad failed")])
def test_bad_unlabeled_case_fails_and_keeps_the_previous_result(workspace, monkeypatch, damage, message):
    """Preprocessing stops at the bad case; the unlabeled folder of the last good run stays as it was."""
    import SimpleITK as sitk
    from nnunet_mem_cif.ssl.unlabeled_data import preprocess_unlabeled
    workspace.set_environment(monkeypatch)
    raw = os.path.join(workspace.raw, DATASET_NAME, "imagesUnlabeled")
    base = os.path.join(workspace.preprocessed, DATASET_NAME)
    manifest_before = load_json(manifest_file(base, "nnUNetPlans_3d_fullres"))
    bad_files = [os.path.join(raw, f"zz_bad_{c:04d}.nii.gz") for c in range(4)]
    try:
        for channel, path in enumerate(bad_files):
            shutil.copyfile(os.path.join(raw, f"unl_000_{channel:04d}.nii.gz"), path)
        image = sitk.ReadImage(bad_files[2])
        damaged = sitk.GetImageFromArray(damage(sitk.GetArrayFromImage(image)))
        damaged.SetSpacing(image.GetSpacing())
        sitk.WriteImage(damaged, bad_files[2])
        with pytest.raises(UnlabeledDataError, match=message):
            preprocess_unlabeled(DATASET_NAME, "3d_fullres", num_processes=1, overwrite=True)
    finally:
        for path in bad_files:
            if os.path.exists(path):
                os.remove(path)
    assert load_json(manifest_file(base, "nnUNetPlans_3d_fullres")) == manifest_before
    assert not os.path.exists(partial_path(unlabeled_folder(base, "nnUNetPlans_3d_fullres")))
    load_unlabeled_dataset(base, plans_of(base), "3d_fullres")


def test_preprocess_unlabeled_never_modifies_the_raw_images(workspace, monkeypatch):
    import hashlib
    from nnunet_mem_cif.ssl.unlabeled_data import preprocess_unlabeled
    workspace.set_environment(monkeypatch)
    raw = os.path.join(workspace.raw, DATASET_NAME, "imagesUnlabeled")

    def digest():
        h = hashlib.sha256()
        for name in sorted(os.listdir(raw)):
            h.update(name.encode())
            with open(os.path.join(raw, name), "rb") as f:
                h.update(f.read())
        return h.hexdigest()

    before = digest()
    folder = preprocess_unlabeled(DATASET_NAME, "3d_fullres", num_processes=1, overwrite=True)
    assert digest() == before
    assert sorted(load_json(folder + ".json")["cases"]) == ["unl_000", "unl_001", "unl_002"]
