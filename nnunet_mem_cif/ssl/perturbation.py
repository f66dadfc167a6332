"""Weak and strong views of one unlabeled patch: the strong view is a cross-modal perturbation of the weak one."""
from typing import Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform


def modality_keep_mask(num_modalities: int, drop_probability: float, generator: torch.Generator = None) -> torch.Tensor:
    """Bool mask of kept modalities: each dropped with ``drop_probability``, never all of them."""
    keep = torch.rand(num_modalities, generator=generator) >= drop_probability
    if not keep.any():
        keep[torch.randint(num_modalities, (1,), generator=generator)] = True
    return keep


def shift_with_zero_fill(image: torch.Tensor, offsets: Tuple[int, ...]) -> torch.Tensor:
    """Translate a (X, Y[, Z]) image by integer ``offsets``; voxels shifted in are 0 (no wrap-around)."""
    shifted = torch.zeros_like(image)
    src, dst = [], []
    for size, offset in zip(image.shape, offsets):
        offset = max(-size, min(size, offset))
        src.append(slice(max(0, -offset), size - max(0, offset)))
        dst.append(slice(max(0, offset), size - max(0, -offset)))
    shifted[tuple(dst)] = image[tuple(src)]
    return shifted


class CrossModalPerturbation(ImageOnlyTransform):
    """The strong view of docs/design.md §3: modality dropout, per-modality intensity jitter, per-modality shift.

    Each modality gets its own random gain and offset (in the normalised intensity units nnU-Net trains on) and
    its own small integer translation, which mimics imperfect co-registration; then whole modalities are zeroed
    with ``drop_probability`` (at least one is always kept). Zero is the value a missing, z-score-normalised
    modality has, so a student trained this way also learns to segment with a modality absent.

    Ours rather than batchgeneratorsv2's brightness and ``ChannelMisalignmentTransform``: the offset is uniform and
    bounded (bgv2's additive brightness is Gaussian) and the shift an integer translation with zero fill (bgv2's
    misalignment resamples, rotates and scales), drawn together with the dropout as one set of parameters.
    """

    def __init__(self, drop_probability: float = 0.25, gain_range: Tuple[float, float] = (0.9, 1.1),
                 offset_range: Tuple[float, float] = (-0.1, 0.1), max_shift_voxels: int = 2,
                 never_dropped: Tuple[int, ...] = ()):
        super().__init__()
        self.drop_probability = drop_probability
        self.never_dropped = tuple(never_dropped)  # channels whose evidence no other modality carries
        self.gain_range = gain_range
        self.offset_range = offset_range
        self.max_shift_voxels = max_shift_voxels

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        c, spatial_dims = image.shape[0], image.ndim - 1

        def uniform(low, high):
            return low + (high - low) * torch.rand(c)

        return {
            "gain": uniform(*self.gain_range),
            "offset": uniform(*self.offset_range),
            "shifts": torch.randint(-self.max_shift_voxels, self.max_shift_voxels + 1, (c, spatial_dims)),
            "keep": modality_keep_mask(c, self.drop_probability) | self._never_dropped_mask(c),
        }

    def _never_dropped_mask(self, num_channels: int) -> torch.Tensor:
        mask = torch.zeros(num_channels, dtype=torch.bool)
        mask[list(self.never_dropped)] = True
        return mask

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        view_shape = (-1,) + (1,) * (img.ndim - 1)
        out = img * params["gain"].view(view_shape) + params["offset"].view(view_shape)
        if self.max_shift_voxels > 0:
            out = torch.stack([shift_with_zero_fill(out[i], tuple(params["shifts"][i].tolist()))
                               for i in range(out.shape[0])])
        return out * params["keep"].view(view_shape).to(out.dtype)


class WeakStrongViews(ImageOnlyTransform):
    """Stack the weak view and ``strong_transform(weak view)`` along the channel axis: (C, ...) -> (2C, ...).

    Both views come out of the same spatial augmentation, so teacher and student predictions are voxel-aligned
    and no inverse warping is needed.
    """

    def __init__(self, strong_transform: ImageOnlyTransform):
        super().__init__()
        self.strong_transform = strong_transform

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        strong = self.strong_transform(image=img.clone())["image"]
        return torch.cat((img, strong), dim=0)


class GaussianInputNoise(ImageOnlyTransform):
    """The standard mean-teacher perturbation (as in SSL4MIS): ``clip(N(0, sigma^2), -clip, clip)`` added to every
    voxel of every modality. No modality-specific change: the baseline that cross-modal perturbation is tested
    against. Ours rather than batchgeneratorsv2's ``GaussianNoiseTransform``: the mean teacher's noise is clipped
    with a fixed sigma, bgv2's is unclipped with a random variance."""

    def __init__(self, sigma: float = 0.1, clip: float = 0.2):
        super().__init__()
        self.sigma = sigma
        self.clip = clip

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        return img + torch.clamp(torch.randn_like(img) * self.sigma, -self.clip, self.clip)
