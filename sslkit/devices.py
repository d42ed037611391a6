"""Which device to run on, which mixed precision it supports, and how to name it in a record."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when PyTorch sees a GPU, else the CPU; a clear error for CUDA without a GPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return device


def mixed_precision_dtype(
    device: torch.device, enabled: bool = True, requested: str | None = None
) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None where mixed precision would not pay off.

    On CUDA: bf16 where supported, else fp16 (with a gradient scaler). On CPU: bf16 only where
    the processor computes it natively (oneDNN reports AVX512-BF16 or AMX); elsewhere it would be
    emulated and slower than float32. ``requested`` ("float16" or "bfloat16") overrides the choice,
    e.g. to run a Colab T4's fp16 path elsewhere. Losses stay in float32 either way (see ``losses.py``).
    """
    if not enabled:
        return None
    if requested is not None:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def processor_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device, amp: bool = True, amp_dtype: str | None = None) -> str:
    """E.g. ``cuda (NVIDIA H100 80GB HBM3), bfloat16 autocast`` or ``cpu (AMD EPYC ...), float32``: the
    precision a run with these ``amp`` settings (as in ``TrainConfig``) trains in."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else processor_name()
    dtype = mixed_precision_dtype(device, amp, amp_dtype)
    return f"{device.type} ({name}), " + (f"{str(dtype).removeprefix('torch.')} autocast" if dtype else "float32")
