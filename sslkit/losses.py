"""One function per self-supervised objective, each citing its paper and equation.

All losses compute in float32 with autocast switched off, also when the model trains in mixed
precision: softmaxes over similarities divided by small temperatures overflow in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name} expects two embeddings of the same shape [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"{name} needs a batch of at least 2 pairs to have negatives, got N={z1.shape[0]}")


def _check_temperature(temperature: float, name: str) -> None:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, Eq. 1).

    The two views of N images give 2N embeddings. For anchor i with positive partner p(i),

        ℓ_i = -log  exp(sim(z_i, z_p(i)) / τ) / Σ_{k ≠ i} exp(sim(z_i, z_k) / τ),

    where sim is the cosine similarity and the sum runs over the other 2N - 1 views: the partner
    and 2N - 2 negatives. The loss is the mean of ℓ_i over all 2N anchors.

    Args:
        z1, z2: projections of the first and second views, ``[N, D]``; row i of each comes from
            the same image.
        temperature: τ > 0.

    Returns:
        Scalar float32 tensor.
    """
    _check_pair(z1, z2, "nt_xent_loss")
    _check_temperature(temperature, "nt_xent_loss")
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))  # a view is never its own negative
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, partner)
