"""Cross-modal consistency loss, its sigmoid ramp-up, and the loss that joins it to nnU-Net's supervised loss."""
import math
from typing import List, Optional, Union

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
    depend on how much of a patch lies outside the brain.
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
        num_values = mask.sum() * student_logits.shape[1]
        return (squared * mask).sum() / num_values.clamp_min(1.0)


class SemiSupervisedLoss(nn.Module):
    """``L_sup(labeled part) + weight * L_cons(unlabeled part)`` on one student output.

    Why this shape: the trainer runs the student once on ``cat(labeled, strong unlabeled view)`` and lets nnU-Net's
    own ``train_step`` do autocast, GradScaler, clipping and the optimizer step. nnU-Net calls ``loss(output,
    target)``; ``prepare_unlabeled`` tells the loss, for exactly the next call, how many leading samples are labeled
    and what the teacher predicted for the rest. Without it (validation) only the supervised loss is computed.
    """

    def __init__(self, supervised: nn.Module, consistency: nn.Module):
        super().__init__()
        self.supervised = supervised
        self.consistency = consistency
        self._unlabeled = None
        self.last_supervised: Optional[torch.Tensor] = None
        self.last_consistency: Optional[torch.Tensor] = None

    def prepare_unlabeled(self, num_labeled: int, teacher_output: TensorOrList, masks: TensorOrList,
                          weight: float) -> None:
        self._unlabeled = (num_labeled, teacher_output, masks, weight)

    def forward(self, output: TensorOrList, target: TensorOrList) -> torch.Tensor:
        if self._unlabeled is None:
            return self.supervised(output, target)
        num_labeled, teacher_output, masks, weight = self._unlabeled
        self._unlabeled = None
        if isinstance(output, (list, tuple)):
            labeled, unlabeled = [o[:num_labeled] for o in output], [o[num_labeled:] for o in output]
        else:
            labeled, unlabeled = output[:num_labeled], output[num_labeled:]
        supervised = self.supervised(labeled, target)
        consistency = self.consistency(unlabeled, teacher_output, masks)
        self.last_supervised, self.last_consistency = supervised.detach(), consistency.detach()
        return supervised + weight * consistency
