"""A teacher network that follows its student as an exponential moving average (BYOL, DINO).

The teacher (BYOL's "target network") is a copy of the student's modules that no optimiser
touches: after every optimiser step its parameters move a fraction 1 − τ of the way to the
student's, ξ ← τ·ξ + (1 − τ)·θ (Grill et al. 2020, Sec. 3.1, Eq. 1), with τ rising from ``base`` to 1
on a cosine over the run (their Sec. 3.3, "Optimization"): τ = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2
at step k of K.
The teacher's parameters and buffers are part of the method's state dict, so a checkpoint holds
them, and τ is a function of the step, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(progress: float, base: float) -> float:
    """τ after a fraction ``progress`` ∈ [0, 1] of the run's steps: ``base`` at the start, 1 at the end."""
    if not 0 <= base <= 1:
        raise ValueError(f"the teacher's momentum must lie in [0, 1], got {base}")
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters take no gradient (the teacher starts equal to the student)."""
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def follow(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """ξ ← τ·ξ + (1 − τ)·θ for every parameter. Buffers (BatchNorm's running statistics) are left
    alone: the teacher keeps its own, gathered by its own forward passes in training mode, as in the
    authors' code of BYOL and DINO, so that a teacher evaluated on its own is normalised by them."""
    for ours, theirs in zip(teacher.parameters(), student.parameters(), strict=True):
        ours.lerp_(theirs.detach(), 1 - momentum)
