"""Ablations of the full method (docs/design.md §4): the same semi-supervised training without MEM or without CIF."""
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer


class MemCifSemiTrainer_noMEM(MemCifSemiTrainer):
    """No channel attention in the modality streams."""
    use_mem = False


class MemCifSemiTrainer_noCIF(MemCifSemiTrainer):
    """No exchange between modality streams: they only meet in the fused skips (plain concatenation)."""
    use_cif = False
