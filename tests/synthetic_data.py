"""Tiny 4-modality BraTS-like cases in nnU-Net raw format (and in the official BraTS 2019 layout), generated on the
fly (no downloads)."""
import hashlib
import json
import os
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mem_cif.brats import region_dataset_json

SHAPE = (36, 44, 40)  # z, y, x as numpy sees a SimpleITK image
SPACING = (1.0, 1.0, 1.0)
# mean intensity of (background-brain, edema, necrotic core, enhancing rim) per modality: T1, T1ce, T2, FLAIR
CONTRASTS = np.array([[100, 80, 60, 90], [100, 95, 50, 220], [100, 200, 180, 160], [100, 210, 120, 170]], float)


def make_case(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Return (images (4, z, y, x) float32, labels (z, y, x) uint8 in nnU-Net's BraTS convention 0..3)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).astype(float)
    center = np.array(SHAPE) / 2
    brain = (((grid - center) / (np.array(SHAPE) * 0.42)) ** 2).sum(-1) <= 1
    tumor_center = center + rng.uniform(-5, 5, 3)
    distance = np.linalg.norm(grid - tumor_center, axis=-1)
    radius = rng.uniform(7, 10)
    labels = np.zeros(SHAPE, np.uint8)
    labels[distance < radius] = 1                      # edema
    labels[distance < 0.65 * radius] = 3               # enhancing rim
    labels[distance < 0.4 * radius] = 2                # necrotic core
    labels[~brain] = 0
    images = np.zeros((4,) + SHAPE, np.float32)
    for modality in range(4):
        mean = CONTRASTS[modality][labels]
        images[modality] = (mean + rng.normal(0, 8, SHAPE)) * brain
    return images, labels


def write_dataset(raw_root: str, dataset_id: int, num_labeled: int = 6, num_unlabeled: int = 3, num_test: int = 2,
                  seed: int = 0) -> str:
    """Write DatasetNNN_SynthBraTS with imagesTr/labelsTr, imagesUnlabeled and imagesTs/labelsTs; return its path."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_SynthBraTS")
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    groups = [("imagesTr", "labelsTr", "lab", num_labeled), ("imagesUnlabeled", None, "unl", num_unlabeled),
              ("imagesTs", "labelsTs", "test", num_test)]
    for images_dir, labels_dir, prefix, count in groups:
        for i in range(count):
            images, labels = make_case(rng)
            case = f"{prefix}_{i:03d}"
            for modality in range(4):
                write_image(images[modality], os.path.join(folder, images_dir, f"{case}_{modality:04d}.nii.gz"),
                            SPACING)
            if labels_dir is not None:
                write_image(labels, os.path.join(folder, labels_dir, f"{case}.nii.gz"), SPACING)
    dataset_json = region_dataset_json(num_labeled)  # the converter's, so that the tests train what users do
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder


def write_image(array: np.ndarray, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> None:
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def make_brats_folder(root, hgg: int, lgg: int, seed: int = 0) -> None:
    """Random cases in the official layout ``root/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    from nnunet_mem_cif.brats import MODALITIES
    rng = np.random.default_rng(seed)
    for grade, count in (("HGG", hgg), ("LGG", lgg)):
        for i in range(count):
            case = f"BraTS19_{grade}_{i:03d}"
            folder = os.path.join(root, grade, case)
            os.makedirs(folder)
            for modality in MODALITIES:
                write_image(rng.normal(size=(6, 7, 8)).astype(np.float32),
                            os.path.join(folder, f"{case}_{modality}.nii.gz"))
            write_image(rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 7, 8)),
                        os.path.join(folder, f"{case}_seg.nii.gz"))


def tree_hash(root) -> str:
    """One digest of every file name and content under ``root``: equal digests, untouched tree."""
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()
