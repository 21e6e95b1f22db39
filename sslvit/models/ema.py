"""Exponential moving average of a student's weights: DINO's teacher (and any mean teacher)."""

import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum x teacher + (1 - momentum) x student, parameter by parameter.

    Both modules must have the same parameters in the same order (the teacher is built as a
    copy of the student); buffers are not averaged.
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher has {len(t_params)} parameters, student {len(s_params)}")
    s_data = [p.detach().to(t.dtype) for p, t in zip(s_params, t_params)]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_data, alpha=1.0 - momentum)
