"""The BraTS 2019 converter and the back-conversion of predictions to BraTS labels."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mem_cif.brats import BratsConversionError, brats_to_nnunet_labels, convert_brats2019, \
    convert_predictions_to_brats, nnunet_to_brats_labels
from .synthetic_data import make_brats_folder, tree_hash, write_image


def test_label_mapping_round_trip():
    brats = np.array([0, 1, 2, 4, 4, 2])
    assert brats_to_nnunet_labels(brats).tolist() == [0, 2, 1, 3, 3, 1]
    assert nnunet_to_brats_labels(brats_to_nnunet_labels(brats)).tolist() == brats.tolist()
    with pytest.raises(BratsConversionError, match=r"\[3\]"):
        brats_to_nnunet_labels(np.array([0, 3]), "x_seg.nii.gz")


def test_converter_splits_maps_labels_and_never_touches_the_source(tmp_path):
    source = tmp_path / "brats"
    make_brats_folder(str(source), hgg=20, lgg=3)
    before = tree_hash(source)
    target = convert_brats2019(str(source), str(tmp_path / "raw"), 77, test_fraction=0.25, labeled_fraction=0.1,
                               seed=5)
    assert tree_hash(source) == before
    record = json.load(open(os.path.join(target, "conversion.json")))
    split = record["cases"]
    assert len(split["test"]) == 5 and len(split["labeled"]) == 2 and len(split["unlabeled"]) == 13
    everything = split["test"] + split["labeled"] + split["unlabeled"]
    assert len(set(everything)) == 20 and all("HGG" in c for c in everything)  # LGG excluded by default
    dataset = json.load(open(os.path.join(target, "dataset.json")))
    assert dataset["numTraining"] == 2 and dataset["regions_class_order"] == [1, 2, 3]
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert sorted(os.listdir(os.path.join(target, "imagesUnlabeled")))[:4] == \
        [f"{split['unlabeled'][0]}_{c:04d}.nii.gz" for c in range(4)]
    assert not os.path.exists(os.path.join(target, "labelsUnlabeled"))
    for case, group in [(split["labeled"][0], "labelsTr"), (split["test"][0], "labelsTs")]:
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "HGG" / case / f"{case}_seg.nii.gz")))
        converted = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(target, group, f"{case}.nii.gz")))
        for brats_value, nnunet_value in {0: 0, 1: 2, 2: 1, 4: 3}.items():
            assert np.array_equal(original == brats_value, converted == nnunet_value)
    # same seed, same split; the existing target is protected
    with pytest.raises(BratsConversionError, match="already exists"):
        convert_brats2019(str(source), str(tmp_path / "raw"), 77, test_fraction=0.25, labeled_fraction=0.1, seed=5)
    again = convert_brats2019(str(source), str(tmp_path / "raw2"), 77, test_fraction=0.25, labeled_fraction=0.1,
                              seed=5)
    assert json.load(open(os.path.join(again, "conversion.json")))["cases"] == split


def test_converter_rejects_a_case_with_a_missing_modality(tmp_path):
    make_brats_folder(str(tmp_path / "brats"), hgg=2, lgg=0)
    os.remove(tmp_path / "brats" / "HGG" / "BraTS19_HGG_001" / "BraTS19_HGG_001_flair.nii.gz")
    with pytest.raises(BratsConversionError, match="BraTS19_HGG_001_flair.nii.gz"):
        convert_brats2019(str(tmp_path / "brats"), str(tmp_path / "raw"), 78)
    assert not os.path.exists(tmp_path / "raw" / "Dataset078_BraTS2019")


def _nan_image(path):
    array = sitk.GetArrayFromImage(sitk.ReadImage(path))
    array[0, 0, 0] = np.nan
    write_image(array, path)


def _zero_image(path):
    write_image(np.zeros((6, 7, 8), np.float32), path)


def _other_spacing(path):
    write_image(sitk.GetArrayFromImage(sitk.ReadImage(path)), path, spacing=(1.0, 1.0, 2.0))


def _truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


@pytest.mark.parametrize("damage, message", [(_nan_image, "NaN or infinite"), (_zero_image, "all zero"),
                                             (_other_spacing, "one voxel grid"), (_truncate, "unreadable or corrupt")])
def test_converter_rejects_bad_images_and_leaves_nothing_behind(tmp_path, damage, message):
    make_brats_folder(str(tmp_path / "brats"), hgg=3, lgg=0)
    damage(str(tmp_path / "brats" / "HGG" / "BraTS19_HGG_002" / "BraTS19_HGG_002_t2.nii.gz"))
    with pytest.raises(BratsConversionError, match=f"BraTS19_HGG_002_t2.nii.gz.*{message}"):
        convert_brats2019(str(tmp_path / "brats"), str(tmp_path / "raw"), 81, test_fraction=0.0)
    assert os.listdir(tmp_path / "raw") == []  # neither the dataset nor its .partial folder


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_dataset_name_cannot_escape_nnunet_raw(tmp_path, name):
    make_brats_folder(str(tmp_path / "brats"), hgg=1, lgg=0)
    with pytest.raises(BratsConversionError, match="plain folder name"):
        convert_brats2019(str(tmp_path / "brats"), str(tmp_path / "raw" / "inner"), 82, name=name)
    assert not (tmp_path / "raw").exists()


def test_converter_rejects_labels_outside_brats_values(tmp_path):
    make_brats_folder(str(tmp_path / "brats"), hgg=2, lgg=0)
    seg = str(tmp_path / "brats" / "HGG" / "BraTS19_HGG_001" / "BraTS19_HGG_001_seg.nii.gz")
    write_image(np.full((6, 7, 8), 3, np.uint8), seg)  # BraTS 2019 has no label 3
    with pytest.raises(BratsConversionError, match=r"BraTS19_HGG_001_seg.nii.gz: label values \[3\]"):
        convert_brats2019(str(tmp_path / "brats"), str(tmp_path / "raw"), 83, test_fraction=0.0)
    assert os.listdir(tmp_path / "raw") == []


def test_back_conversion_of_predictions_is_exact(tmp_path):
    os.makedirs(tmp_path / "pred")
    labels = np.random.default_rng(0).integers(0, 4, (5, 6, 7)).astype(np.uint8)
    write_image(labels, str(tmp_path / "pred" / "a.nii.gz"), spacing=(1.0, 2.0, 3.0))
    assert convert_predictions_to_brats(str(tmp_path / "pred"), str(tmp_path / "brats")) == 1
    image = sitk.ReadImage(str(tmp_path / "brats" / "a.nii.gz"))
    assert image.GetSpacing() == (1.0, 2.0, 3.0)
    assert np.array_equal(sitk.GetArrayFromImage(image), np.array([0, 2, 1, 4])[labels])
