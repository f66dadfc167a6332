"""The product: MemCifUNet trained with nnU-Net's supervised loss + cross-modal consistency on unlabeled cases."""
from nnunet_mem_cif.trainers.memcif_trainer import MemCifTrainer
from nnunet_mem_cif.trainers.semi_supervised import SemiSupervisedTrainer


class MemCifSemiTrainer(SemiSupervisedTrainer, MemCifTrainer):
    """``nnUNetv2_train DATASET CONFIG FOLD -tr MemCifSemiTrainer``: MEM + CIF network (from MemCifTrainer),
    mean teacher with cross-modal perturbation (from SemiSupervisedTrainer), everything else nnU-Net's."""
