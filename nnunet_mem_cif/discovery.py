"""Where nnU-Net's ``nnUNet_extTrainer`` must point to find this plugin's trainers."""
import os
import shutil
import sys
from typing import Optional


def ext_trainer_folder() -> str:
    """The folder holding only ``nnunet_mem_cif_trainers.py`` (see that module for why)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def ext_trainer_value(current: Optional[str] = None) -> str:
    """``nnUNet_extTrainer`` with our folder first and any other folders the user already had kept."""
    ours = ext_trainer_folder()
    others = [p for p in (current or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours] + others)


def console_script(name: str) -> str:
    """Path of an installed console script (nnUNetv2_train, nnunet-mem-cif, ...): next to this Python, else PATH."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isfile(path):
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH: install nnunetv2 and "
                                    f"nnunet-mem-cif into this environment")
        path = found
    return path
