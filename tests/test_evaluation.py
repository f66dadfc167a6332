"""The evaluation: Dice, Sensitivity, HD95 per region, checked against medpy (a test-only dependency)."""
import os

import numpy as np
import pytest

from nnunet_mem_cif.brats import REGIONS_BRATS
from nnunet_mem_cif.evaluation import evaluate_folders, hd95, missed_regions, region_metrics, write_results
from .synthetic_data import write_image


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


def test_a_region_is_missed_only_when_no_case_finds_it(tmp_path):
    """A case without the region (Dice 1 when none is predicted) counts neither way; one case that finds it is
    enough, and voxels in the wrong place do not find it."""
    os.makedirs(tmp_path / "gt")
    os.makedirs(tmp_path / "pred")
    reference = np.zeros((8, 9, 10), np.uint8)
    reference[1:7, 1:7, 1:7] = 1
    reference[2:6, 2:6, 2:6] = 2
    reference[3:5, 3:5, 3:5] = 3
    no_enhancing = np.where(reference == 3, 2, reference).astype(np.uint8)
    misplaced = no_enhancing.copy()
    misplaced[2, 2, 2] = 3
    cases = {"found_no_et": (reference, no_enhancing), "misplaced_et": (reference, misplaced),
             "no_et_at_all": (no_enhancing, no_enhancing)}
    for case, (gt, prediction) in cases.items():
        write_image(gt, str(tmp_path / "gt" / f"{case}.nii.gz"))
        write_image(prediction, str(tmp_path / "pred" / f"{case}.nii.gz"))
    results = evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert results["cases"]["no_et_at_all"]["enhancing_tumor"]["dice"] == 1.0
    assert missed_regions(results) == ["enhancing_tumor"]
    write_image(reference, str(tmp_path / "pred" / "found_no_et.nii.gz"))
    assert missed_regions(evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "gt"))) == []
