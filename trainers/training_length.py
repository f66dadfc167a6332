"""Short schedules on the same code path as the real trainers (as nnU-Net's ``variants/training_length``)."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mem_cif.trainers.atomic_checkpoints import AtomicCheckpointsMixin
from nnunet_mem_cif.trainers.memcif_semi_trainer import MemCifSemiTrainer


class DemoSchedule:
    """Mixin: the schedule of ``nnunet-mem-cif demo``, sized to finish within minutes on 2 CPU cores. One place, so
    that the method and its nnU-Net baseline always train equally long."""
    EPOCHS = 10
    ITERATIONS = 10

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.EPOCHS
        self.num_iterations_per_epoch = self.ITERATIONS
        self.num_val_iterations_per_epoch = 2
        self.save_every = 5


class MemCifSemiTrainer_debug(MemCifSemiTrainer):
    """2 epochs x 3 iterations (+2 validation iterations); the consistency ramp-up ends inside epoch 1."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 2


class MemCifSemiTrainer_demo(DemoSchedule, MemCifSemiTrainer):
    """MemCifSemiTrainer on the demo's schedule."""


class SupervisedBaselineTrainer_demo(DemoSchedule, AtomicCheckpointsMixin, nnUNetTrainer):
    """nnU-Net's own trainer and PlainConvUNet, labeled cases only, on the demo's schedule (side-by-side runs)."""
