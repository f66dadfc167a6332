"""Ablations of the full method (docs/design.md §4): the same semi-supervised training without MEM or without CIF;
and a variant of its perturbation (docs/design.md §3)."""
from nnunet_mem_cif.errors import PluginUserError
from nnunet_mem_cif.ssl.perturbation import CrossModalPerturbation
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer


class MemCifSemiTrainer_noMEM(MemCifSemiTrainer):
    """No channel attention in the modality streams."""
    use_mem = False


class MemCifSemiTrainer_noCIF(MemCifSemiTrainer):
    """No exchange between modality streams: they only meet in the fused skips (plain concatenation)."""
    use_cif = False


class MemCifSemiTrainer_keepT1ce(MemCifSemiTrainer):
    """The strong view never drops T1ce: enhancing tumor is visible on T1ce alone, so a student without it cannot
    match the teacher there (experiments/consistency_by_modality.py measures how much). A candidate against the
    enhancing-tumor loss of the full method, to be chosen on validation cases (docs/results.md)."""
    kept_channel_name = "T1ce"

    def get_strong_perturbation(self):
        names = {str(name).lower(): int(index) for index, name in self.dataset_json["channel_names"].items()}
        if self.kept_channel_name.lower() not in names:
            present = ", ".join(map(str, self.dataset_json["channel_names"].values()))
            raise PluginUserError(f"{type(self).__name__} keeps the channel named {self.kept_channel_name}, but "
                                  f"dataset.json names {present}")
        return CrossModalPerturbation(never_dropped=(names[self.kept_channel_name.lower()],))
