"""BraTS 2019 converter, phantom, and the evaluation (checked against medpy, a test-only dependency)."""
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mem_cif.brats import BratsConversionError, MODALITIES, brats_to_nnunet_labels, convert_brats2019, \
    convert_predictions_to_brats, nnunet_to_brats_labels
from nnunet_mem_cif.discovery import console_script
from nnunet_mem_cif.evaluation import REGIONS_BRATS, evaluate_folders, hd95, region_metrics, write_results
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


def random_blob(rng, shape, center, radius):
    grid = np.indices(shape)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    return distance + rng.normal(0, 1.0, shape) < radius


@pytest.mark.parametrize("seed", range(4))
def test_metrics_agree_with_medpy(seed):
    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    shape, spacing = (30, 34, 28), (1.0, 1.5, 2.0)
    reference = random_blob(rng, shape, (15, 17, 14), 8)
    prediction = random_blob(rng, shape, (15 + rng.integers(-3, 4), 17, 14), rng.uniform(5, 10))
    ours = region_metrics(prediction, reference, spacing)
    assert ours["dice"] == pytest.approx(medpy.dc(prediction, reference), abs=1e-6)
    assert ours["sensitivity"] == pytest.approx(medpy.sensitivity(prediction, reference), abs=1e-6)
    assert ours["hd95"] == pytest.approx(medpy.hd95(prediction, reference, voxelspacing=spacing), abs=min(spacing))


def test_empty_masks_follow_the_documented_convention():
    empty, full = np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool)
    both_empty = region_metrics(empty, empty, (1, 1, 1))
    assert both_empty["dice"] == 1 and np.isnan(both_empty["sensitivity"]) and both_empty["hd95"] == 0
    missed = region_metrics(empty, full, (1, 2, 2))
    assert missed["dice"] == 0 and missed["sensitivity"] == 0
    assert missed["hd95"] == pytest.approx(np.sqrt(4 ** 2 + 8 ** 2 + 8 ** 2))
    assert hd95(full, empty, (1, 1, 1)) == pytest.approx(np.sqrt(48))


def test_evaluate_folders_writes_json_csv_and_markdown(tmp_path):
    os.makedirs(tmp_path / "gt")
    os.makedirs(tmp_path / "pred")
    rng = np.random.default_rng(1)
    for case in ("a", "b"):
        labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(8, 9, 10))
        write_image(labels, str(tmp_path / "gt" / f"{case}.nii.gz"))
        write_image(labels, str(tmp_path / "pred" / f"{case}.nii.gz"))
    results = evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"), brats_labels=True)
    assert set(results["mean"]) == set(REGIONS_BRATS) | {"mean"}
    assert results["mean"]["mean"]["dice"] == 1.0 and results["mean"]["whole_tumor"]["hd95"] == 0.0
    csv_file, markdown_file = write_results(results, str(tmp_path / "out" / "metrics.json"))
    assert len(open(csv_file).read().strip().splitlines()) == 1 + 2 * 3
    assert "| enhancing_tumor | 1.0000 |" in open(markdown_file).read()
    os.remove(tmp_path / "pred" / "b.nii.gz")
    with pytest.raises(ValueError, match="no prediction for b.nii.gz"):
        evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"))


def test_phantom_is_reproducible_and_has_all_subregions(tmp_path):
    pytest.importorskip("nilearn")
    from nnunet_mem_cif.phantom import make_phantom
    cases = make_phantom(str(tmp_path / "a"), 2, seed=3, spacing=4.0)
    make_phantom(str(tmp_path / "b"), 2, seed=3, spacing=4.0)
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    for case in cases:
        folder = tmp_path / "a" / "HGG" / case
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}_seg.nii.gz")))
        assert set(np.unique(labels)) == {0, 1, 2, 4}
        images = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}_{m}.nii.gz"))) for m in MODALITIES}
        assert images["t1"].shape == labels.shape
        # contrasts differ the way real ones do
        assert images["flair"][labels == 2].mean() > images["flair"][(labels == 0) & (images["t1"] > 0)].mean()
        assert images["t1ce"][labels == 4].mean() > images["t1ce"][labels == 1].mean()
        assert images["t2"][labels == 1].mean() > images["t1ce"][labels == 1].mean()


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"))
    make_brats_folder(str(tmp_path / "brats"), hgg=1, lgg=0)
    os.makedirs(tmp_path / "raw" / "Dataset079_BraTS2019")
    runs = {
        "already exists": ["convert-brats2019", str(tmp_path / "brats"), "--dataset-id", "79"],
        "does not exist": ["convert-brats2019", str(tmp_path / "nowhere"), "--dataset-id", "80"],
        "no reference segmentations": ["evaluate", str(tmp_path), str(tmp_path / "raw")],
    }
    without_raw = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    for message, args in runs.items():
        result = subprocess.run([console_script("nnunet-mem-cif"), *args], env=env, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([console_script("nnunet-mem-cif"), "convert-brats2019", str(tmp_path / "brats"),
                             "--dataset-id", "84"], env=without_raw, capture_output=True, text=True)
    assert result.returncode == 2 and "nnUNet_raw is not set" in result.stderr
