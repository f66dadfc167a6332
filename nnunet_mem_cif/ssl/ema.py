"""Mean teacher: an exponential moving average of the student's weights."""
import copy

import torch
from torch import nn


def ema_decay_at(step: int, max_decay: float) -> float:
    """``min(1 - 1/(step + 1), max_decay)``: Tarvainen & Valpola's warm-up, so early teachers follow the student."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


class EMATeacher(nn.Module):
    """Holds a frozen copy of the (unwrapped) student and updates it with ``t <- d t + (1 - d) s``.

    Buffers (e.g. BatchNorm running statistics) are copied, not averaged. The teacher stays in eval mode (no
    dropout) and never requires gradients; under DDP every rank updates its own copy from identical student
    weights, so the teachers stay identical without communication.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        return super().train(False)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        teacher_params = list(self.module.parameters())
        student_params = [p.detach() for p in student.parameters()]
        if len(teacher_params) != len(student_params):
            raise RuntimeError("teacher and student have different parameter lists; was the network rebuilt?")
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)
        for teacher_buffer, student_buffer in zip(self.module.buffers(), student.buffers()):
            teacher_buffer.copy_(student_buffer)

    def forward(self, x: torch.Tensor):
        return self.module(x)
