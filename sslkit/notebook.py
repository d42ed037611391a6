"""What every notebook's setup cell does once sslkit is importable."""

from __future__ import annotations

import os
import random

import matplotlib.pyplot as plt
import numpy as np
import torch

from .train import describe_device, resolve_device


def setup(seed: int = 0, pretrain_default: bool = False) -> tuple[torch.device, bool]:
    """Seed everything, pick the device and read the ``PRETRAIN`` switch.

    ``PRETRAIN`` is ``pretrain_default`` (False: load the shipped, verified weights) unless the
    environment variable ``SSLKIT_PRETRAIN`` is set to 1 (train for real) or 0.

    Returns:
        ``(device, PRETRAIN)``.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    value = os.environ.get("SSLKIT_PRETRAIN")
    if value not in (None, "", "0", "1"):
        raise ValueError(f"SSLKIT_PRETRAIN must be 0 or 1, got {value!r}")
    pretrain = pretrain_default if value in (None, "") else value == "1"
    device = resolve_device("auto")
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "axes.spines.top": False, "axes.spines.right": False})
    mode = "PRETRAIN=True: training from scratch" if pretrain else "PRETRAIN=False: loading the shipped weights"
    print(f"device: {describe_device(device)}; {mode}")
    return device, pretrain
