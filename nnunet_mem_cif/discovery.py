"""Where nnU-Net's ``nnUNet_extTrainer`` must point to find this plugin's trainers."""
import os
from typing import Optional


def ext_trainer_folder() -> str:
    """The folder holding only ``nnunet_mem_cif_trainers.py`` (see that module for why)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def ext_trainer_value(current: Optional[str] = None) -> str:
    """``nnUNet_extTrainer`` with our folder first and any other folders the user already had kept."""
    ours = ext_trainer_folder()
    others = [p for p in (current or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours] + others)
