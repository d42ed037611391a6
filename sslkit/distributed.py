"""Data-parallel training across processes: ``torchrun --nproc_per_node=K -m sslkit pretrain ...``.

torchrun starts K copies of the same command and tells each its ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` through the environment. ``train.train`` then wraps the method in
``DistributedDataParallel``: every process takes its share of each global batch, computes its
gradients, and DDP averages them across processes before the optimiser step, so all copies stay
identical.

Losses that compare images with each other (NT-Xent, DCL) or take batch statistics (VICReg) need
the embeddings of the *whole* global batch, not only the local share: ``global_loss`` gathers
them from all processes with a gradient-preserving all-gather, so that the negatives (or the
variance and covariance estimates) span the global batch exactly as in a single process holding
it. Backends: NCCL on CUDA, gloo on CPU (used by the tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (which names its job in ``TORCHELASTIC_RUN_ID``), even
    with one process: ``--nproc_per_node=1`` runs the distributed code paths on a single GPU."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def initialize(device_type: str) -> torch.device:
    """Join the process group torchrun set up; return this process's device.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` and talks NCCL; on CPU, gloo.
    """
    if device_type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0: the one process that logs, shows progress and writes checkpoints, history and weights."""
    return rank() == 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every process, concatenated in rank order, differentiably.

    ``torch.distributed.nn.functional.all_gather`` is the autograd-aware collective: its backward
    sums, for each process's rows, the gradients that every process computed for them.
    """
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def global_loss(loss: Callable, z1: torch.Tensor, z2: torch.Tensor, *args, **kwargs):
    """``loss(z1, z2, ...)`` over the global batch, when each process holds only its share of rows.

    Every process gathers all embeddings and computes the loss of the whole global batch, so the
    value is the same everywhere and equal to what one process holding the whole batch would
    compute. Each process's gradient is scaled by 1/K: the all-gather's backward adds up the K
    processes' contributions, so the gradient reaching each process's own embeddings is exactly
    the single-process gradient for those rows. Outside a process group this is ``loss`` itself.

    Returns what ``loss`` returns: a scalar, or a dict of scalars (VICReg's terms).
    """
    k = world_size()
    if k == 1:
        return loss(z1, z2, *args, **kwargs)
    out = loss(all_gather_with_grad(z1), all_gather_with_grad(z2), *args, **kwargs)

    def scale_gradient(value: torch.Tensor) -> torch.Tensor:
        return value / k + (value - value / k).detach()  # the value of `value`, 1/K of its gradient

    return {key: scale_gradient(v) for key, v in out.items()} if isinstance(out, dict) else scale_gradient(out)


def average_across_processes(values: dict[str, float]) -> dict[str, float]:
    """The mean over processes of each value (a no-op in one process): for the epoch's history."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    stacked = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return {key: value / world_size() for key, value in zip(keys, stacked.tolist(), strict=True)}


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over its rows and those of every other process (DINO's center, Caron et al.
    2021, Eq. 4): the same on every process, equal to one process holding the whole batch. No gradient."""
    total = x.detach().sum(dim=0)
    if world_size() > 1:
        dist.all_reduce(total)
    return total / (len(x) * world_size())
