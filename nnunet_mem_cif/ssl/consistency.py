"""Cross-modal consistency loss, its sigmoid ramp-up, and the loss that joins it to nnU-Net's supervised loss."""
import math
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

TensorOrList = Union[torch.Tensor, List[torch.Tensor]]


def sigmoid_rampup(step: float, rampup_steps: float) -> float:
    """Laine & Aila's ramp-up ``exp(-5 (1 - t/T)^2)`` for t < T, 1 afterwards (and 1 when T <= 0)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0.0), rampup_steps) / rampup_steps
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class MaskedProbabilityMSE(nn.Module):
    """Mean squared difference between student and teacher probabilities, inside a mask only.

    Probabilities are sigmoids for region-based training (nnU-Net's BraTS setup: overlapping regions) and softmax
    over the class axis otherwise, i.e. whatever nnU-Net's own inference turns the logits into. The teacher is a
    target: no gradient flows into it. The mean is over masked voxels and output channels, so the value does not
    depend on how much of a patch lies outside the brain. The mask has one channel (shared by every output) or one
    per output channel (a trainer that asks no consistency of some regions in some samples).
    """

    def __init__(self, use_sigmoid: bool):
        super().__init__()
        self.use_sigmoid = use_sigmoid

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.use_sigmoid else torch.softmax(logits, dim=1)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                             f"outputs differ in shape")
        mask = mask.to(student_logits.device, torch.float32)
        if mask.ndim == student_logits.ndim - 1:
            mask = mask[:, None]
        squared = (self.probabilities(student_logits) - self.probabilities(teacher_logits.detach())) ** 2
        num_values = mask.sum() * (student_logits.shape[1] // mask.shape[1])
        return (squared * mask).sum() / num_values.clamp_min(1.0)


class SemiSupervisedLoss(nn.Module):
    """``L_sup + weight * L_cons`` inside nnU-Net's own ``train_step``, the consistency part back-propagated ahead.

    Why this shape: the student's pass over the unlabeled strong views runs *before* nnU-Net's step, on its own, with
    ``torch.autograd.grad``, so that only one batch's activations are alive at any time: peak memory is that of
    nnU-Net's step on the labeled batch, not of a batch twice as large. The gradients are those of one pass over
    ``cat(labeled, unlabeled)``, because nnU-Net normalises per sample (instance norm has no batch statistics).
    ``prepare_unlabeled`` hands over those gradients for exactly the next call; nnU-Net's ``train_step`` then zeroes
    the gradients, runs the labeled forward pass and calls this loss, which puts the consistency gradients into
    ``.grad``; nnU-Net's ``backward()`` adds the supervised ones, and nnU-Net clips, scales and steps as always.
    The value returned is the total loss for nnU-Net's log; only its supervised part carries a graph. Without a
    preparation (validation) it is the supervised loss alone.
    """

    def __init__(self, supervised: nn.Module, consistency: nn.Module):
        super().__init__()
        self.supervised = supervised
        self.consistency = consistency
        self._unlabeled = None
        self.last_supervised: Optional[torch.Tensor] = None
        self.last_consistency: Optional[torch.Tensor] = None

    def prepare_unlabeled(self, parameters: Sequence[nn.Parameter], gradients: Sequence[Optional[torch.Tensor]],
                          consistency: torch.Tensor, weight: float) -> None:
        """``gradients``: of ``weight * consistency`` (scaled as nnU-Net's GradScaler scales the loss, if any)."""
        if len(parameters) != len(gradients):
            raise ValueError(f"{len(parameters)} parameters but {len(gradients)} gradients")
        self._unlabeled = (parameters, gradients, consistency.detach(), weight)

    def forward(self, output: TensorOrList, target: TensorOrList) -> torch.Tensor:
        supervised = self.supervised(output, target)
        if self._unlabeled is None:
            return supervised
        parameters, gradients, consistency, weight = self._unlabeled
        self._unlabeled = None
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients):
                if gradient is not None:  # contiguous: autograd accumulates into .grad in the parameter's layout
                    parameter.grad = gradient.contiguous() if parameter.grad is None else parameter.grad + gradient
        self.last_supervised, self.last_consistency = supervised.detach(), consistency
        return supervised + weight * consistency
