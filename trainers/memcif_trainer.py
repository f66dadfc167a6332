"""Supervised nnU-Net training with MemCifUNet (the 'MEM + CIF, supervised' row of the ablation table)."""
from copy import deepcopy

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_mem_cif.architectures.cif import ComplementaryInformationFusion
from nnunet_mem_cif.architectures.mem import ModalitySpecificEnhancement
from nnunet_mem_cif.trainers.atomic_checkpoints import AtomicCheckpointsMixin
from nnunet_mem_cif.trainers.fusion_optimizer import CIF_LR_MULTIPLIER, MEM_LR_MULTIPLIER, fusion_optimizer, \
    fusion_parameter_groups


class MemCifTrainer(AtomicCheckpointsMixin, nnUNetTrainer):
    """nnU-Net's trainer, unchanged except that the network is MemCifUNet built from the plans' PlainConvUNet
    arguments.

    The network switches are *class* attributes because nnUNetv2_predict rebuilds the network from the trainer
    class alone (``build_network_architecture`` is called on the class, with no instance); variants such as
    ``MemCifSemiTrainer_noCIF`` override them.

    MEM and CIF train in optimizer groups of their own, at ``mem_lr_multiplier`` / ``cif_lr_multiplier`` times
    nnU-Net's lr and without weight decay (see ``fusion_optimizer``); everything else keeps nnU-Net's optimizer and
    schedule.
    """
    network_class_name = "nnunet_mem_cif.architectures.MemCifUNet"
    use_mem: bool = True
    use_cif: bool = True
    stream_width: float = 0.5
    stream_formulation: str = "grouped"  # how the streams' convolutions run; same maths and weights in all (see
    # architectures/grouped_conv.py); grouped stays the default until GPU measurements say otherwise (docs/cost.md)
    mem_lr_multiplier: float = MEM_LR_MULTIPLIER
    cif_lr_multiplier: float = CIF_LR_MULTIPLIER

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        planned = configuration_manager.network_arch_class_name
        if planned.split(".")[-1] != "PlainConvUNet":
            raise RuntimeError(f"{cls.__name__} builds MemCifUNet from PlainConvUNet plans (nnU-Net's default "
                               f"nnUNetPlans), but plans '{plans_manager.plans_name}' configure {planned}. Plan with "
                               f"the default planner or use a trainer for that architecture.")
        arch_kwargs = deepcopy(configuration_manager.network_arch_init_kwargs)
        arch_kwargs.update(use_mem=cls.use_mem, use_cif=cls.use_cif, stream_width=cls.stream_width,
                           stream_formulation=cls.stream_formulation)
        return get_network_from_plans(cls.network_class_name, arch_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True,
                                      deep_supervision=enable_deep_supervision)

    def configure_optimizers(self):
        groups = fusion_parameter_groups(self.network, self.initial_lr, self.weight_decay,
                                         {ModalitySpecificEnhancement: self.mem_lr_multiplier,
                                          ComplementaryInformationFusion: self.cif_lr_multiplier})
        self.print_to_log_file(f"MEM lr x{self.mem_lr_multiplier:g}, CIF lr x{self.cif_lr_multiplier:g} of "
                               f"nnU-Net's (initial {self.initial_lr:g}), without weight decay")
        return fusion_optimizer(groups, self.initial_lr, self.weight_decay, self.num_epochs)


class MemCifTrainer_noSSL(MemCifTrainer):
    """The former name of ``MemCifTrainer``, kept so that models trained under it still load in nnUNetv2_predict."""
