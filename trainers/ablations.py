"""Ablations of the full method (docs/design.md §4): the same semi-supervised training without MEM or without CIF;
and two variants of its perturbation against the enhancing-tumor loss (docs/design.md §3, docs/results.md)."""
from typing import List, Tuple

import torch

from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.ssl.perturbation import CrossModalPerturbation
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer


class MemCifSemiTrainer_noMEM(MemCifSemiTrainer):
    """No channel attention in the modality streams."""
    use_mem = False


class MemCifSemiTrainer_noCIF(MemCifSemiTrainer):
    """No exchange between modality streams: they only meet in the fused skips (plain concatenation)."""
    use_cif = False


def channel_index(trainer, channel_name: str) -> int:
    """The input channel dataset.json names ``channel_name`` (any case); one clear error if it names none."""
    names = {str(name).lower(): int(index) for index, name in trainer.dataset_json["channel_names"].items()}
    if channel_name.lower() not in names:
        present = ", ".join(map(str, trainer.dataset_json["channel_names"].values()))
        raise PluginUserError(f"{type(trainer).__name__} needs the channel named {channel_name}, but dataset.json "
                              f"names {present}")
    return names[channel_name.lower()]


def output_indices(trainer, label_names: Tuple[str, ...]) -> List[int]:
    """The network's output channels of the dataset.json labels (regions) ``label_names``."""
    def as_key(region):  # dataset.json holds regions as lists, nnU-Net's label manager as tuples
        return tuple(region) if isinstance(region, (list, tuple)) else region

    regions = [as_key(r) for r in trainer.label_manager.foreground_regions]
    labels = trainer.dataset_json["labels"]
    missing = [name for name in label_names if name not in labels]
    if missing or not trainer.label_manager.has_regions:
        raise PluginUserError(f"{type(trainer).__name__} masks the regions {', '.join(label_names)} of region-based "
                              f"training (nnunet-mem-cif convert-brats2019 writes them); dataset.json has labels "
                              f"{', '.join(labels)}")
    return [regions.index(as_key(labels[name])) for name in label_names]


class MemCifSemiTrainer_keepT1ce(MemCifSemiTrainer):
    """The strong view never drops T1ce: enhancing tumor is visible on T1ce alone, so a student without it cannot
    match the teacher there (experiments/consistency_by_modality.py measures how much). A candidate against the
    enhancing-tumor loss of the full method, to be chosen on validation cases (docs/results.md)."""
    kept_channel_name = "T1ce"

    def get_strong_perturbation(self):
        return CrossModalPerturbation(never_dropped=(channel_index(self, self.kept_channel_name),))


class MemCifSemiTrainer_maskT1ce(MemCifSemiTrainer):
    """The strong view drops T1ce as the full method's does, but a student whose view lacks T1ce is not asked to
    match the teacher in the regions only T1ce shows (tumor core, enhancing tumor: without T1ce the student's Dice
    there was 0.04 / 0.00 and its consistency term 40-80x the all-modality view's, docs/results.md); everywhere else,
    and for whole tumor, the consistency stays. The other candidate beside keepT1ce: the student still learns to
    segment whole tumor without T1ce. A dropped modality is exactly 0 in the strong view (CrossModalPerturbation
    zeroes it); a kept one carries its random intensity offset."""
    masked_channel_name = "T1ce"
    masked_region_names = ("tumor_core", "enhancing_tumor")

    def initialize(self):
        super().initialize()  # checked here, so that a dataset without T1ce or the regions fails before training
        self.masked_channel = channel_index(self, self.masked_channel_name)
        outputs = output_indices(self, self.masked_region_names)
        self.masked_outputs = torch.tensor([i in outputs for i in range(self.label_manager.num_segmentation_heads)])

    def consistency_masks(self, strong: torch.Tensor, masks):
        dropped = (strong[:, self.masked_channel] == 0).flatten(1).all(dim=1)
        unasked = dropped[:, None] & self.masked_outputs.to(strong.device)[None]  # (sample, output channel)

        def narrowed(mask: torch.Tensor) -> torch.Tensor:  # (sample, 1, ...) -> (sample, output channel, ...)
            mask = mask.expand(mask.shape[0], unasked.shape[1], *mask.shape[2:]).clone()
            mask[unasked] = False
            return mask

        return [narrowed(m) for m in masks] if isinstance(masks, list) else narrowed(masks)
