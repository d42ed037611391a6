"""The geometry of features: alignment and uniformity, singular-value spectra, collapse diagnostics.

Alignment and uniformity (Wang and Isola 2020) of L2-normalised features of seeded augmented pairs
are the two properties a contrastive loss optimises; the singular values of the centred features
and their effective rank show how many directions a representation uses (dimensional collapse,
Jing et al. 2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment, simclr_augment_config
from .data import to_float
from .protocol import encode_images

GEOMETRY_ALPHA = 2.0
GEOMETRY_T = 2.0
GEOMETRY_SEED = 0


def alignment(features1: torch.Tensor, features2: torch.Tensor, alpha: float = GEOMETRY_ALPHA) -> float:
    """Alignment (Wang and Isola 2020, Eq. 4): E ‖f(x) - f(y)‖₂^α over positive pairs (x, y).

    Rows i of ``features1`` and ``features2`` are the two views of image i; the features are
    L2-normalised here. 0 when both views map to the same point; at most 2^α (opposite points).
    Lower is better: the encoder ignores what the augmentations change.
    """
    if features1.ndim != 2 or features1.shape != features2.shape:
        raise ValueError(
            f"alignment expects two [N, D] feature tensors of the same shape, got "
            f"{tuple(features1.shape)} and {tuple(features2.shape)}"
        )
    f1, f2 = F.normalize(features1.double(), dim=1), F.normalize(features2.double(), dim=1)
    return (f1 - f2).norm(dim=1).pow(alpha).mean().item()


def uniformity(features: torch.Tensor, t: float = GEOMETRY_T, chunk_size: int = 256) -> float:
    """Uniformity (Wang and Isola 2020, Eq. 5): log E exp(-t ‖f(x) - f(y)‖₂²) over pairs of images.

    The mean runs over all N(N-1)/2 pairs of distinct rows, with features L2-normalised here.
    0 when every image maps to the same point (collapse); lower (more negative) means the
    features spread more evenly over the unit sphere, whose limit for large D is -t·2 = -4.
    Computed in blocks of ``chunk_size`` rows, so 10,000 features need about 20 MB, not 0.4 GB.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"uniformity expects [N, D] features with N >= 2, got {tuple(features.shape)}")
    f = F.normalize(features.double(), dim=1)
    n = len(f)
    # Row blocks against the rows after them: memory stays at chunk_size × N distances, not N²/2.
    block_sums = []
    for start in range(0, n - 1, chunk_size):
        block = f[start : start + chunk_size]
        squared_distances = (2 - 2 * block @ f[start + 1 :].T).clamp(min=0)  # ‖a - b‖² of unit vectors
        later = torch.ones_like(squared_distances, dtype=torch.bool).triu()  # pairs (i, j) with j > i
        block_sums.append(torch.logsumexp(-t * squared_distances[later], dim=0))
    return (torch.logsumexp(torch.stack(block_sums), dim=0) - math.log(n * (n - 1) / 2)).item()


@torch.no_grad()
def alignment_and_uniformity(
    encoder: torch.nn.Module,
    images: torch.Tensor,
    augment_config: AugmentConfig | None = None,
    seed: int = GEOMETRY_SEED,
    device: str | torch.device = "cpu",
) -> dict:
    """Alignment and uniformity of an encoder's features (Wang and Isola 2020, α = 2, t = 2).

    Two seeded views of each uint8 image (``[N, 28, 28]``, or ``[N, 3, 32, 32]``) are drawn with
    SimCLR's augmentations, with its colour jitter and grayscale for colour images, unless
    ``augment_config`` names others (the same views for every encoder); alignment compares the two
    views of each image, and uniformity, the mean of both views' values, spreads over all pairs.
    """
    channels = 1 if images.ndim == 3 else images.shape[1]
    augment_config = simclr_augment_config(channels) if augment_config is None else augment_config
    generator = torch.Generator(device=device).manual_seed(seed)
    encoder.eval().to(device)

    def two_views(batch: torch.Tensor) -> torch.Tensor:
        view1 = encoder(augment(batch, augment_config, generator))
        return torch.cat([view1, encoder(augment(batch, augment_config, generator))], dim=1)

    f1, f2 = encode_images(two_views, images, device).chunk(2, dim=1)
    return {
        "alignment": round(alignment(f1, f2), 6),
        "uniformity": round((uniformity(f1) + uniformity(f2)) / 2, 6),
        "alpha": GEOMETRY_ALPHA,
        "t": GEOMETRY_T,
        "images": len(images),
        "seed": seed,
    }


def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values of the centred features ``[N, D]``, largest first (float64).

    Their decay is the spectrum of the representation: a few large values and the rest near zero
    mean the features use only a few directions (dimensional collapse, Jing et al. 2022).
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"singular_values expects [N, D] features with N >= 2, got {tuple(features.shape)}")
    centred = features.double() - features.double().mean(dim=0)
    return torch.linalg.svdvals(centred)


def effective_rank(values: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy and Vetterli 2007).

    D for D equal singular values, 1 when a single direction carries everything, 0 for collapse
    to a point (all singular values 0).
    """
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total
    return math.exp(-(torch.special.xlogy(p, p)).sum().item())


@torch.no_grad()
def embedding_diagnostics(method: torch.nn.Module, images: torch.Tensor, block: int = 32) -> dict:
    """Collapse diagnostics of a method with embeddings (``embed``) on uint8 images (no augmentation).

    For the embeddings the loss sees (``method.embed``) and for the encoder features: the
    standard deviation of every embedding dimension, the top-left ``block`` × ``block`` of the
    embeddings' covariance matrix, both singular-value spectra, and their effective ranks.
    """
    method.eval()
    batch = to_float(images.to(next(method.parameters()).device))
    features = method.encoder(batch).float().cpu()
    embeddings = method.embed(batch).float().cpu()
    covariance = torch.cov(embeddings.T)

    def rounded(values):
        return [float(f"{v:.4g}") for v in values.tolist()]

    embedding_spectrum, feature_spectrum = singular_values(embeddings), singular_values(features)
    return {
        "images": len(images),
        "embedding_std": rounded(embeddings.std(dim=0)),
        "embedding_covariance_block": [rounded(row) for row in covariance[:block, :block]],
        "embedding_singular_values": rounded(embedding_spectrum),
        "embedding_effective_rank": round(effective_rank(embedding_spectrum), 3),
        "feature_singular_values": rounded(feature_spectrum),
        "feature_effective_rank": round(effective_rank(feature_spectrum), 3),
    }
