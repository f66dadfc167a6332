"""Re-exports this plugin's trainers for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports every module of the folder that ``nnUNet_extTrainer`` names as a *top-level* module. This folder
holds only this uniquely named module, which imports the trainers from their real package, so the classes keep
their module path ``nnunet_mem_cif.trainers...`` (pickling, worker processes, checkpoint loading keep working).
"""
from nnunet_mem_cif.trainers import *  # noqa: F401,F403
