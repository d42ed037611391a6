"""Batched image augmentations with per-sample random parameters.

Every operation works on a whole batch ``[N, C, H, W]`` of floats in ``[0, 1]`` at once, on
whatever device the batch is on, and draws a separate random parameter for every image (crop box,
flip, brightness, contrast, blur width, erased rectangle) from one ``torch.Generator``. That
replaces the per-image Python transforms of a ``DataLoader`` (see ``python -m sslkit bench`` for
the measured speed-up) and makes a run reproducible from the generator's seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities of each augmentation (SimCLR, Chen et al. 2020, Appendix A)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)  # area of the crop as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop box
    flip_prob: float = 0.5
    jitter_prob: float = 0.8  # brightness and contrast together, like SimCLR's colour jitter
    brightness: float = 0.4  # factor drawn from [1 - brightness, 1 + brightness]
    contrast: float = 0.4
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 3  # about 10% of the image side, as in SimCLR
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2020), off unless asked for
    erase_scale: tuple[float, float] = (0.02, 0.2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        """Inverse of ``to_dict`` (JSON turns the tuples into lists)."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


SIMCLR_AUGMENT = AugmentConfig()
# Supervised training wants label-preserving views: mild crops and flips, no photometric changes.
SUPERVISED_AUGMENT = AugmentConfig(crop_scale=(0.6, 1.0), jitter_prob=0.0, blur_prob=0.0)
# Mirror images only: every pixel of the target stays where the encoder saw it.
FLIP_AUGMENT = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, blur_prob=0.0)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=generator)


def _apply_with_prob(prob: float, n: int, like: torch.Tensor, generator) -> torch.Tensor:
    """Boolean ``[n]``: which samples get an augmentation applied with probability ``prob``."""
    return torch.rand(n, device=like.device, generator=generator) < prob


def random_resized_crop_and_flip(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Crop a random box per image and resize it back to the full size, flipping half of them.

    The box and the flip are one affine map per sample, sampled with ``affine_grid`` and
    ``grid_sample`` (bilinear), so the whole batch is a single kernel launch. Boxes whose side
    would exceed the image are clipped to it (torchvision re-draws them instead).
    """
    n = x.shape[0]
    area = _uniform(n, *config.crop_scale, x, generator)
    log_ratio = _uniform(n, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), x, generator)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # In affine_grid's coordinates the image spans [-1, 1]: a box of width w can be centred anywhere
    # in [-(1 - w), 1 - w].
    center_x = (1 - width) * (2 * torch.rand(n, device=x.device, generator=generator) - 1)
    center_y = (1 - height) * (2 * torch.rand(n, device=x.device, generator=generator) - 1)
    flip = torch.where(_apply_with_prob(config.flip_prob, n, x, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def brightness_contrast_jitter(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Scale brightness, then stretch contrast around each image's mean, for a random subset."""
    n = x.shape[0]
    applied = _apply_with_prob(config.jitter_prob, n, x, generator)
    brightness = _uniform(n, 1 - config.brightness, 1 + config.brightness, x, generator)
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, x, generator)
    brightness = torch.where(applied, brightness, 1.0).view(n, 1, 1, 1)
    contrast = torch.where(applied, contrast, 1.0).view(n, 1, 1, 1)
    x = (x * brightness).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Blur a random subset with a Gaussian of per-image width, as one grouped separable convolution."""
    n, c, h, w = x.shape
    k = config.blur_kernel
    applied = _apply_with_prob(config.blur_prob, n, x, generator)
    sigma = _uniform(n, *config.blur_sigma, x, generator)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, k)
    kernel = torch.where(applied[:, None], kernel, identity).repeat_interleave(c, dim=0)  # [n*c, k]
    flat = x.reshape(1, n * c, h, w)
    pad = k // 2
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
    return flat.view(n, c, h, w)


def random_erasing(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Set a random rectangle of a random subset of images to zero (the background colour here)."""
    n, _, h, w = x.shape
    applied = _apply_with_prob(config.erase_prob, n, x, generator)
    area = _uniform(n, *config.erase_scale, x, generator)
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), x, generator))
    box_h = torch.sqrt(area * ratio).clamp(max=1.0)
    box_w = torch.sqrt(area / ratio).clamp(max=1.0)
    top = (1 - box_h) * torch.rand(n, device=x.device, generator=generator)
    left = (1 - box_w) * torch.rand(n, device=x.device, generator=generator)
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    inside_y = (ys[None, :] >= top[:, None]) & (ys[None, :] < (top + box_h)[:, None])
    inside_x = (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + box_w)[:, None])
    erase = (inside_y[:, :, None] & inside_x[:, None, :]) & applied[:, None, None]
    return x.masked_fill(erase[:, None], 0.0)


def augment(x: torch.Tensor, config: AugmentConfig = SIMCLR_AUGMENT, generator=None) -> torch.Tensor:
    """One random view of every image: crop + flip, jitter, blur, erasing (each only if enabled).

    Args:
        x: float ``[N, C, H, W]`` in ``[0, 1]``, on any device.
        config: strengths and probabilities.
        generator: a ``torch.Generator`` on ``x.device`` for reproducible views (None: global RNG).

    Returns:
        float ``[N, C, H, W]`` in ``[0, 1]``, on ``x.device``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects a float batch [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    x = random_resized_crop_and_flip(x, config, generator)
    if config.jitter_prob > 0:
        x = brightness_contrast_jitter(x, config, generator)
    if config.blur_prob > 0:
        x = gaussian_blur(x, config, generator)
    if config.erase_prob > 0:
        x = random_erasing(x, config, generator)
    return x


def four_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image rotated by 0°, 90°, 180° and 270° (Gidaris et al. 2018, Eq. 2).

    ``[N, C, H, W]`` (square images) → ``([4N, C, H, W], labels [4N])``: block k holds all N
    images rotated counter-clockwise by k·90°, labelled k.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"four_rotations expects square images [N, C, H, H], got {tuple(x.shape)}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return rotated, labels


def random_rotations(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image rotated by its own random multiple of 90°: ``([N, C, H, W], labels [N])``.

    Label k means a counter-clockwise rotation by k·90°, drawn uniformly from {0, 1, 2, 3}.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"random_rotations expects square images [N, C, H, H], got {tuple(x.shape)}")
    labels = torch.randint(4, (len(x),), device=x.device, generator=generator)
    all_four = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # [4, N, C, H, W]
    return all_four[labels, torch.arange(len(x), device=x.device)], labels
