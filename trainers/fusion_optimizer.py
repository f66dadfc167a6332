"""MEM and CIF in their own optimizer parameter groups: lr multipliers, no weight decay (docs/design.md §2,
"MEM and CIF must learn").

Why: under nnU-Net's SGD (lr 1e-2, momentum 0.99, weight decay 3e-5) a parameter moves by about ``lr * grad`` per
step. MEM's and CIF's gradients, relative to their size, are one to two orders of magnitude below the
convolutions', so with nnU-Net's single group they barely move, and weight decay, not the loss, decides where a
small-gradient parameter such as CIF's gate bias ends up. ``experiments/gradient_scale.py`` measures the relative
update per step of each family of parameters over real training steps.
"""
from typing import Dict, Iterable, List, Tuple, Type

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

LR_SCALE_KEY = "lr_scale"
# Defaults chosen with experiments/gradient_scale.py (relative update per step of each family within 3x of the
# convolutions': MEM needs ~30, CIF's gate weights, mixing and gate bias ~150; one multiplier for both cannot do it).
# On validation folds at demo length (experiments/choose_fusion_lr.py) no gain over 1 was measurable; a converged
# schedule must decide. The numbers are in docs/cost.md
MEM_LR_MULTIPLIER = 30.0
CIF_LR_MULTIPLIER = 150.0


def fusion_parameter_groups(network: nn.Module, initial_lr: float, weight_decay: float,
                            multipliers: Dict[Type[nn.Module], float]) -> List[dict]:
    """Group 0: every parameter that is not in a module type of ``multipliers``, with nnU-Net's own settings
    (nnU-Net logs group 0's lr); then one group per module type present in the network (e.g. MEM, CIF): ``lr *
    multiplier`` and no weight decay. Each parameter is in exactly one group."""
    for module_type, multiplier in multipliers.items():
        if not multiplier > 0:
            raise ValueError(f"the lr multiplier of {module_type.__name__} must be > 0, got {multiplier}")
    taken, groups = set(), []
    for module_type, multiplier in multipliers.items():
        params = [p for module in network.modules() if isinstance(module, module_type)
                  for p in module.parameters() if p.requires_grad and id(p) not in taken]
        taken.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": initial_lr * multiplier, "weight_decay": 0.0,
                           LR_SCALE_KEY: multiplier})
    rest = [p for p in network.parameters() if p.requires_grad and id(p) not in taken]
    return [{"params": rest, "lr": initial_lr, "weight_decay": weight_decay, LR_SCALE_KEY: 1.0}] + groups


class GroupScaledPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's PolyLRScheduler, whose ``step`` gives every group the same lr, then each group's lr times its
    ``lr_scale`` (a group without one keeps nnU-Net's lr)."""

    def step(self, current_step=None):
        super().step(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get(LR_SCALE_KEY, 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def fusion_optimizer(parameter_groups: Iterable[dict], initial_lr: float, weight_decay: float,
                     num_epochs: int) -> Tuple[torch.optim.Optimizer, GroupScaledPolyLRScheduler]:
    """nnU-Net's optimizer (SGD, momentum 0.99, Nesterov) and schedule over the given groups."""
    optimizer = torch.optim.SGD(list(parameter_groups), initial_lr, weight_decay=weight_decay, momentum=0.99,
                                nesterov=True)
    return optimizer, GroupScaledPolyLRScheduler(optimizer, initial_lr, num_epochs)
