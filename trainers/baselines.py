"""Reference trainers that are nnU-Net's own, only on this plugin's short schedules (for side-by-side runs)."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mem_cif.trainers.training_length import MemCifSemiTrainer_demo


class SupervisedBaselineTrainer_demo(nnUNetTrainer):
    """nnU-Net's trainer and PlainConvUNet, labeled cases only, on MemCifSemiTrainer_demo's schedule."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = MemCifSemiTrainer_demo.EPOCHS
        self.num_iterations_per_epoch = MemCifSemiTrainer_demo.ITERATIONS
        self.num_val_iterations_per_epoch = 2
        self.save_every = 5
