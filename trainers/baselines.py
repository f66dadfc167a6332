"""Semi-supervised baselines of the paper's table (docs/design.md §4), on the same SSL machinery as the method."""
from nnunet_mem_cif.ssl.perturbation import GaussianInputNoise
from nnunet_mem_cif.trainers.semi_supervised import SemiSupervisedTrainer


class MeanTeacherTrainer(SemiSupervisedTrainer):
    """Mean Teacher as users know it from SSL4MIS: nnU-Net's PlainConvUNet, EMA teacher, MSE consistency, the
    student's view perturbed by clipped Gaussian noise (no cross-modal perturbation). Teacher, ramp-up, loss
    masking and schedule are those of MemCifSemiTrainer, so that the two differ only in network and perturbation."""

    def get_strong_perturbation(self):
        return GaussianInputNoise()
