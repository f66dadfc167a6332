"""make-phantom: reproducible BraTS-like cases with every sub-region."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mem_cif.brats import MODALITIES
from .synthetic_data import tree_hash


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


def test_sites_differ_in_contrast_noise_and_slice_thickness_and_depend_only_on_the_seed():
    from nnunet_mem_cif.phantom import VARIATION, make_sites
    sites = make_sites(0)
    assert len(sites) == VARIATION["sites"] and make_sites(0)[2]["t2"]["gamma"] == sites[2]["t2"]["gamma"]
    assert make_sites(1)[0]["t2"]["gamma"] != sites[0]["t2"]["gamma"]
    low, high = VARIATION["site_gamma"]
    gammas = [site[m]["gamma"] for site in sites for m in MODALITIES]
    assert all(low <= g <= high for g in gammas) and len(set(gammas)) == len(gammas)
    assert {site["flair"]["slice_mm"] for site in sites} == set(VARIATION["site_slice_thickness_mm"])
    assert {site["t1ce"]["slice_mm"] for site in sites} == {1.0}  # T1ce: a 3D acquisition everywhere


def test_variation_2_adds_sites_satellites_weak_and_non_enhancing_rim_and_keeps_variation_1s_sites():
    pytest.importorskip("nilearn")
    from nnunet_mem_cif.phantom import VARIATIONS, _focus, load_anatomy, make_sites, make_tumor, synthesise_case
    sites = make_sites(0, VARIATIONS[2])
    assert len(sites) == 19 and all(sites[i]["t2"]["gamma"] == site["t2"]["gamma"]
                                    for i, site in enumerate(make_sites(0)))
    anatomy = load_anatomy(4.0)
    # every case with a satellite and half of its rim not enhancing, so each property is certain to show
    variation = {**VARIATIONS[2], "satellite_probability": 1.0, "non_enhancing_fraction": (0.5, 0.5)}
    rng = np.random.default_rng(0)
    tumor = make_tumor(anatomy, 4.0, rng, variation)
    rim_before = (tumor.labels == 4).sum() + tumor.non_enhancing.sum()
    first_focus = _focus(anatomy, 4.0, np.random.default_rng(0), VARIATIONS[2], VARIATIONS[2]["core_radius_mm"])
    assert ((tumor.labels > 0) & (first_focus == 0)).sum() > 20  # a second focus beyond the first
    assert tumor.non_enhancing.any() and (tumor.labels[tumor.non_enhancing] == 1).all()
    assert abs(tumor.non_enhancing.sum() / rim_before - 0.5) < 0.05
    low, high = VARIATIONS[2]["enhancement"]
    assert low <= tumor.enhancement <= high
    images = synthesise_case(anatomy, tumor, 4.0, rng, sites[0])
    necrosis = (tumor.labels == 1) & ~tumor.non_enhancing
    # solid non-enhancing tumor: no enhancement, brighter than necrosis on T1ce, less bright than edema on FLAIR
    assert images["t1ce"][tumor.labels == 4].mean() > images["t1ce"][tumor.non_enhancing].mean()
    assert images["t1ce"][tumor.non_enhancing].mean() > images["t1ce"][necrosis].mean()
    assert images["flair"][tumor.labels == 2].mean() > images["flair"][tumor.non_enhancing].mean()
    # variation 1 draws none of this: its tumors are one focus with an enhancing rim as CONTRASTS says
    plain = make_tumor(anatomy, 4.0, np.random.default_rng(0))
    assert plain.enhancement == 1.0 and not plain.non_enhancing.any()


def test_every_key_of_the_variation_passed_is_the_one_used():
    """A variation that changes a key of variation 1 (shape, misregistration) must change the cases: nothing reads
    the module's variation 1 behind the caller's back."""
    pytest.importorskip("nilearn")
    from nnunet_mem_cif.phantom import VARIATION, load_anatomy, make_sites, make_tumor, synthesise_case
    anatomy = load_anatomy(4.0)
    # edema no larger than the core: no whole-tumor-only voxels; no misregistration: nothing outside the brain
    variation = {**VARIATION, "edema_factor": (1.0, 1.0), "misregistration_mm": 0.0}
    rng = np.random.default_rng(0)
    tumor = make_tumor(anatomy, 4.0, rng, variation)
    assert (tumor.labels == 4).any() and not (tumor.labels == 2).any()
    images = synthesise_case(anatomy, tumor, 4.0, rng, make_sites(0)[0], variation)
    assert all((image[~anatomy["brain"]] == 0).all() for image in images.values())
    shifted = synthesise_case(anatomy, tumor, 4.0, np.random.default_rng(1), make_sites(0)[0])
    assert any((image[~anatomy["brain"]] > 0).any() for image in shifted.values())
