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
