"""nnU-Net trainers of this plugin (installed as ``nnunet_mem_cif.trainers``).

nnU-Net finds them through ``nnUNet_extTrainer`` (see ``nnunet-mem-cif env``).
"""
from nnunet_mem_cif.errors import install_user_error_hook
from nnunet_mem_cif.trainers.memcif_trainer import MemCifTrainer, MemCifTrainer_noSSL
from nnunet_mem_cif.trainers.semi_supervised import SemiSupervisedTrainer
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer
from nnunet_mem_cif.trainers.ablations import MemCifSemiTrainer_keepT1ce, MemCifSemiTrainer_maskT1ce, \
    MemCifSemiTrainer_noCIF, MemCifSemiTrainer_noMEM
from nnunet_mem_cif.trainers.labeled_fraction import MemCifSemiTrainer_10pct, MemCifSemiTrainer_1pct, \
    MemCifSemiTrainer_5pct
from nnunet_mem_cif.trainers.baselines import MeanTeacherTrainer
from nnunet_mem_cif.trainers.table_runs import MeanTeacherTrainer_table, MemCifSemiTrainer_keepT1ce_table, \
    MemCifSemiTrainer_maskT1ce_table, MemCifSemiTrainer_noCIF_table, MemCifSemiTrainer_noMEM_table, \
    MemCifSemiTrainer_table, MemCifTrainer_table, nnUNetTrainer_selftraining_table, nnUNetTrainer_table
from nnunet_mem_cif.trainers.training_length import MemCifSemiTrainer_debug, MemCifSemiTrainer_demo, \
    SupervisedBaselineTrainer_demo

__all__ = ["MemCifTrainer", "MemCifTrainer_noSSL", "MemCifSemiTrainer", "MemCifSemiTrainer_noMEM",
           "MemCifSemiTrainer_noCIF", "MemCifSemiTrainer_keepT1ce", "MemCifSemiTrainer_maskT1ce",
           "MemCifSemiTrainer_1pct", "MemCifSemiTrainer_5pct", "MemCifSemiTrainer_10pct",
           "MemCifSemiTrainer_debug", "MemCifSemiTrainer_demo", "SemiSupervisedTrainer",
           "SupervisedBaselineTrainer_demo", "MeanTeacherTrainer", "nnUNetTrainer_table",
           "nnUNetTrainer_selftraining_table", "MeanTeacherTrainer_table", "MemCifTrainer_table",
           "MemCifSemiTrainer_noMEM_table", "MemCifSemiTrainer_noCIF_table", "MemCifSemiTrainer_table",
           "MemCifSemiTrainer_keepT1ce_table", "MemCifSemiTrainer_maskT1ce_table"]

install_user_error_hook()  # nnUNetv2_train / _predict end with one line for this plugin's user errors
