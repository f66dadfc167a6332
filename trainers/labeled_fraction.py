"""Hidden-label mode: the paper's 1 %, 5 %, 10 % labeled settings from one fully labeled dataset.

Only a seeded fraction of the fold's training cases keeps its labels; the others are used as unlabeled data
(their labels are never read). See HiddenLabelsMixin.do_split.
"""
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer


class MemCifSemiTrainer_1pct(MemCifSemiTrainer):
    labeled_fraction = 0.01


class MemCifSemiTrainer_5pct(MemCifSemiTrainer):
    labeled_fraction = 0.05


class MemCifSemiTrainer_10pct(MemCifSemiTrainer):
    labeled_fraction = 0.10
