"""Batched image augmentations with per-sample random parameters.

Every operation works on a whole batch ``[N, C, H, W]`` of floats in ``[0, 1]`` at once, on
whatever device the batch is on, and draws a separate random parameter for every image (crop box,
flip, brightness, contrast, saturation, hue, grey or not, blur width, erased rectangle) from one
``torch.Generator``. That replaces the per-image Python transforms of a ``DataLoader`` (see
``python -m sslkit bench`` for the measured speed-up) and makes a run reproducible from the
generator's seed. Images are grey ``[N, 1, H, W]`` (Fashion-MNIST) or RGB ``[N, 3, H, W]``
(CIFAR-10); on grey images the colour operations (saturation, hue, grayscale) are the identity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities of each augmentation (SimCLR, Chen et al. 2020, Appendix A)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)  # area of the crop as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of the crop box
    flip_prob: float = 0.5
    jitter_prob: float = 0.8  # brightness, contrast, saturation and hue together: SimCLR's colour jitter
    brightness: float = 0.4  # factor drawn from [1 - brightness, 1 + brightness]
    contrast: float = 0.4
    saturation: float = 0.0  # factor drawn from [1 - saturation, 1 + saturation]; only changes RGB images
    hue: float = 0.0  # shift drawn from [-hue, hue], in fractions of a full turn of the colour wheel
    grayscale_prob: float = 0.0  # SimCLR's colour drop: an RGB image becomes its luminance
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 3  # about 10% of the image side, as in SimCLR
    erase_prob: float = 0.0  # random erasing (Zhong et al. 2020), off unless asked for
    erase_scale: tuple[float, float] = (0.02, 0.2)

    def __post_init__(self):
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (at most half a turn of the colour wheel), got {self.hue}")

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
# The augmentation ablation of notebook 04 (SimCLR, Chen et al. 2020, Section 3 and Fig. 5): SimCLR's
# views with one part taken out, or crops alone. ``sweep simclr views all no_crop ...`` runs them.
VIEW_ABLATIONS = {
    "all": SIMCLR_AUGMENT,
    "no_crop": replace(SIMCLR_AUGMENT, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)),
    "no_jitter": replace(SIMCLR_AUGMENT, jitter_prob=0.0),
    "no_blur": replace(SIMCLR_AUGMENT, blur_prob=0.0),
    "crop_only": replace(SIMCLR_AUGMENT, jitter_prob=0.0, blur_prob=0.0),
}
# Settings of a method's views that `sweep` can vary by number (the recipe search, docs/design.md §13):
# the smallest crop area (1 means no crop) and the strength of the brightness/contrast jitter.
VIEW_SETTINGS = ("crop_min_area", "jitter_strength")


def vary_views(views: AugmentConfig, setting: str, value: float) -> AugmentConfig:
    """``views`` with one of ``VIEW_SETTINGS`` set to ``value``."""
    if setting == "crop_min_area":
        if not 0 < value <= 1:
            raise ValueError(f"crop_min_area is a fraction of the image's area in (0, 1], got {value}")
        ratio = (1.0, 1.0) if value == 1 else views.crop_ratio  # the whole image keeps its shape
        return replace(views, crop_scale=(value, 1.0), crop_ratio=ratio)
    if setting == "jitter_strength":
        if views.jitter_prob == 0:
            raise ValueError("these views apply no brightness/contrast jitter (jitter_prob 0): nothing to strengthen")
        if not 0 <= value < 1:
            raise ValueError(f"jitter_strength scales brightness and contrast by 1 ± strength: in [0, 1), got {value}")
        return replace(views, brightness=value, contrast=value)
    raise ValueError(f"unknown view setting {setting!r}; choose one of {', '.join(VIEW_SETTINGS)}")


# SimCLR's colour augmentation on CIFAR-10 (Chen et al. 2020, Appendix A and B.9): jitter strength
# s = 0.5 gives brightness, contrast and saturation 0.8·s (brightness and contrast are 0.4 already)
# and hue 0.2·s; colour drop (grayscale) with probability 0.2.
SIMCLR_COLOUR = {"saturation": 0.4, "hue": 0.1, "grayscale_prob": 0.2}


def with_colour(config: AugmentConfig) -> AugmentConfig:
    """``config`` with SimCLR's colour augmentation (``SIMCLR_COLOUR``) for RGB images.

    Only photometric configs (``jitter_prob > 0``, the SimCLR-like presets) get it; label-preserving
    geometric ones such as ``SUPERVISED_AUGMENT`` and ``FLIP_AUGMENT`` are returned unchanged. The
    blur stays: SimCLR leaves it out on CIFAR-10 (B.9), but our 3×3 kernel is already about 10% of a
    32-pixel side, SimCLR's ImageNet rule, so every dataset gets the same pipeline.
    """
    return replace(config, **SIMCLR_COLOUR) if config.jitter_prob > 0 else config


def simclr_augment_config(channels: int) -> AugmentConfig:
    """The config of SimCLR's views for images of ``channels`` channels: ``SIMCLR_AUGMENT``, with its
    colour jitter and grayscale for RGB (3 channels)."""
    return with_colour(SIMCLR_AUGMENT) if channels == 3 else SIMCLR_AUGMENT


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=generator)


def _apply_with_prob(prob: float, n: int, like: torch.Tensor, generator) -> torch.Tensor:
    """Boolean ``[n]``: which samples get an augmentation applied with probability ``prob``."""
    return torch.rand(n, device=like.device, generator=generator) < prob


def random_resized_crop_and_flip(
    x: torch.Tensor, config: AugmentConfig, generator=None, size: int | None = None
) -> torch.Tensor:
    """Crop a random box per image and resize it to ``size`` × ``size`` (default: the image's own size),
    flipping half of them.

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
    grid = F.affine_grid(theta, [n, x.shape[1], size or x.shape[2], size or x.shape[3]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# Luminance weights of torchvision's ``rgb_to_grayscale`` (0.2989 where ITU-R BT.601 has 0.299), so
# that the colour operations agree with torchvision's to float precision.
LUMINANCE_WEIGHTS = (0.2989, 0.587, 0.114)


def _check_colour_channels(x: torch.Tensor, operation: str) -> None:
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"{operation} needs grey [N, 1, H, W] or RGB [N, 3, H, W] images, got {tuple(x.shape)}; "
            "set saturation, hue and grayscale_prob to 0 for images with other channels"
        )


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Grey level ``[N, 1, H, W]`` of RGB images ``[N, 3, H, W]`` (torchvision's ``rgb_to_grayscale``).

    A grey batch ``[N, 1, H, W]`` is its own luminance and is returned as it is.
    """
    _check_colour_channels(x, "luminance")
    if x.shape[1] == 1:
        return x
    red, green, blue = x.unbind(dim=1)
    weight_red, weight_green, weight_blue = LUMINANCE_WEIGHTS
    return (weight_red * red + weight_green * green + weight_blue * blue).unsqueeze(1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Stretch each image around its mean grey level by its own ``factor [N]``, clamped to ``[0, 1]``.

    The mean is over the luminance for RGB images (torchvision's ``adjust_contrast``) and over all
    values otherwise.
    """
    reference = luminance(x) if x.shape[1] == 3 else x
    mean = reference.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its luminance: ``factor · x + (1 - factor) · grey``, clamped to ``[0, 1]``.

    ``factor [N]`` is per image: 0 gives the grey image, 1 the image itself, above 1 stronger colours
    (torchvision's ``adjust_saturation``). Grey images are returned unchanged.
    """
    _check_colour_channels(x, "adjust_saturation")
    if x.shape[1] == 1:
        return x
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * luminance(x)).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue (fraction of a turn, red = 0), saturation and value ``[N, H, W]`` each, of RGB ``[N, 3, H, W]``."""
    red, green, blue = x.unbind(dim=1)
    value = x.amax(dim=1)
    chroma = value - x.amin(dim=1)
    grey = chroma == 0  # hue is undefined; 0 as in PIL and torchvision (the saturation is 0 there)
    chroma_or_one = torch.where(grey, 1.0, chroma)
    saturation = chroma / torch.where(value == 0, 1.0, value)
    # The sector of the colour wheel is set by the largest channel (red first on ties, like torchvision).
    hue = torch.where(
        value == red,
        (green - blue) / chroma_or_one,
        torch.where(value == green, (blue - red) / chroma_or_one + 2, (red - green) / chroma_or_one + 4),
    )
    return torch.where(grey, 0.0, torch.remainder(hue / 6, 1.0)), saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_rgb_to_hsv``: RGB ``[N, 3, H, W]`` from hue, saturation and value ``[N, H, W]``.

    Channel n (5 for red, 3 for green, 1 for blue) is ``v · (1 - s · clamp(min(k, 4 - k), 0, 1))`` with
    ``k = (n + 6 h) mod 6``, the closed form of the six-sector table, so no per-sector indexing.
    """
    offsets = torch.tensor([5.0, 3.0, 1.0], device=hue.device, dtype=hue.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6 * hue.unsqueeze(1), 6.0)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by its own ``shift [N]`` (fractions of a turn, modulo 1) in HSV space.

    torchvision's ``adjust_hue``, for the whole batch at once. Grey images are returned unchanged.
    """
    _check_colour_channels(x, "adjust_hue")
    if x.shape[1] == 1:
        return x
    hue, saturation, value = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(hue + shift.view(-1, 1, 1), 1.0), saturation, value)


def colour_jitter(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue of a random subset (``jitter_prob``), each with its own factor.

    SimCLR (Chen et al. 2020, Appendix A) uses torchvision's ``ColorJitter``, which applies the four
    in a random order per image; here the order is fixed: brightness, contrast, saturation, hue.
    Saturation and hue are drawn only when enabled (after the brightness and contrast draws), so a
    config without them draws exactly what the brightness-and-contrast jitter always drew.
    """
    n = x.shape[0]
    if config.saturation > 0 or config.hue > 0:
        _check_colour_channels(x, "colour_jitter with saturation or hue")
    applied = _apply_with_prob(config.jitter_prob, n, x, generator)
    brightness = _uniform(n, 1 - config.brightness, 1 + config.brightness, x, generator)
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, x, generator)
    brightness = torch.where(applied, brightness, 1.0).view(n, 1, 1, 1)
    x = (x * brightness).clamp(0, 1)
    x = adjust_contrast(x, torch.where(applied, contrast, 1.0))
    if config.saturation > 0:
        saturation = _uniform(n, 1 - config.saturation, 1 + config.saturation, x, generator)
        x = adjust_saturation(x, torch.where(applied, saturation, 1.0))  # a factor of 1 is exactly the identity
    if config.hue > 0:
        shift = _uniform(n, -config.hue, config.hue, x, generator)
        x = torch.where(applied.view(n, 1, 1, 1), adjust_hue(x, shift), x)  # the HSV round trip is not exact
    return x


def random_grayscale(x: torch.Tensor, config: AugmentConfig, generator=None) -> torch.Tensor:
    """Replace a random subset (``grayscale_prob``) of RGB images by their luminance in all three channels.

    SimCLR's colour drop (Chen et al. 2020, Appendix A), applied after the colour jitter. Grey images
    are returned unchanged (the random subset is still drawn, so the draws depend on the config only).
    """
    _check_colour_channels(x, "random_grayscale")
    applied = _apply_with_prob(config.grayscale_prob, x.shape[0], x, generator)
    if x.shape[1] == 1:
        return x
    return torch.where(applied.view(-1, 1, 1, 1), luminance(x).expand_as(x), x)


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


def augment(
    x: torch.Tensor, config: AugmentConfig = SIMCLR_AUGMENT, generator=None, size: int | None = None
) -> torch.Tensor:
    """One random view of every image: crop + flip, colour jitter, grayscale, blur, erasing (each only if enabled).

    Args:
        x: float ``[N, C, H, W]`` in ``[0, 1]``, on any device.
        config: strengths and probabilities.
        generator: a ``torch.Generator`` on ``x.device`` for reproducible views (None: global RNG).
        size: the side of the views (default: the images' own), e.g. DINO's small local crops.

    Returns:
        float ``[N, C, size, size]`` in ``[0, 1]``, on ``x.device``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects a float batch [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if size is not None and size < 1:
        raise ValueError(f"augment: the views' size must be a positive number of pixels, got {size}")
    x = random_resized_crop_and_flip(x, config, generator, size)
    if config.jitter_prob > 0:
        x = colour_jitter(x, config, generator)
    if config.grayscale_prob > 0:
        x = random_grayscale(x, config, generator)
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
