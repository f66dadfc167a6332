"""Hidden-label mode for any nnU-Net trainer: only a seeded fraction of the fold's training cases keeps its labels."""
import os
from typing import List, Optional

from batchgenerators.utilities.file_and_folder_operations import join, save_json

from nnunet_mem_cif.atomic import write_atomically
from nnunet_mem_cif.splits import split_labeled_fraction


class HiddenLabelsMixin:
    """Put before an nnU-Net trainer class: with ``labeled_fraction`` set, ``do_split`` keeps a seeded fraction of
    the fold's training cases; the others become ``hidden_label_keys`` (the unlabeled pool of the semi-supervised
    trainers; supervised trainers never see them). Which case went where is written to ``labeled_subset.json`` in
    the fold's output folder. Validation cases are nnU-Net's, untouched. Supervised and semi-supervised rows of the
    paper's table share this code, so that with the same fold, fraction and seed they share the labeled cases.
    """
    labeled_fraction: Optional[float] = None  # a variant sets it as a class attribute (trainers/labeled_fraction.py)
    labeled_subset_seed: int = 12345
    hidden_label_keys: Optional[List[str]] = None
    validation_keys: Optional[List[str]] = None  # the fold's, kept to check that no hidden-label case is one

    def hidden_label_split(self):
        """(labeled training keys, validation keys) of the fold, with ``hidden_label_keys`` and ``validation_keys``
        set; records nothing (``do_split`` does)."""
        tr_keys, val_keys = super().do_split()
        self.validation_keys = list(val_keys)
        if self.labeled_fraction is None:
            return tr_keys, val_keys
        labeled, self.hidden_label_keys = split_labeled_fraction(tr_keys, self.labeled_fraction,
                                                                 self.labeled_subset_seed)
        return labeled, val_keys

    def do_split(self):
        labeled, val_keys = self.hidden_label_split()
        if self.labeled_fraction is not None and self.local_rank == 0:
            hidden = self.hidden_label_keys
            record = {"labeled_fraction": self.labeled_fraction, "seed": self.labeled_subset_seed,
                      "fold": self.fold, "labeled": labeled, "unlabeled": hidden, "validation": list(val_keys)}
            target = join(self.output_folder, "labeled_subset.json")
            os.makedirs(self.output_folder, exist_ok=True)
            write_atomically(target, lambda partial: save_json(record, partial, sort_keys=False))
        return labeled, val_keys
