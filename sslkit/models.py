"""The shared encoders and the heads that methods put on top of them.

Every CNN method in the series trains the same ``ResNetEncoder`` configuration, so differences in
accuracy come from the objective, not the network. MAE needs a network that works on a set of
patches, so it trains a small Vision Transformer (``ViTEncoder``), compared with a random ViT of
the same size. Two baselines compute their features by a fixed formula instead of a network: the raw
pixels (``PixelFeatures``) and the hand-crafted HOG descriptor (``HOGFeatures``). Heads (projectors,
classifiers, decoders) are separate modules: only the encoder is evaluated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import hog
from torch import nn

from .data import DEFAULT_DATASET, DatasetInfo, dataset_info

# The architecture half of an encoder config; ``encoder_config`` adds the dataset's half (channels,
# image size, pixel statistics), so a recorded config says everything the network was built from.
RESNET_CONFIG = {"architecture": "resnet", "widths": [32, 64, 128]}
# MAE's encoder: 4×4 patches (49 tokens on 28×28 images), 4 pre-norm blocks of width 128 (128-d features,
# like the ResNet's). Sized by measured speed, like the ResNet: on 2 CPU cores its features of the 70,000
# images take about 3× the ResNet's time (the skip-mode notebook computes them); MLPs of 2× the width
# (rather than ViT's 4×) keep it there.
VIT_CONFIG = {
    "architecture": "vit",
    "patch_size": 4,
    "dim": 128,
    "depth": 4,
    "heads": 4,
    "mlp_ratio": 2,
    "position": "sincos",
}
# The raw-pixel baseline: no network, no normalisation (the linear probe standardises its features).
PIXELS_CONFIG = {"architecture": "pixels"}
# The hand-crafted baseline: histograms of oriented gradients (Dalal & Triggs 2005) in 4×4-pixel cells,
# 9 orientations, blocks of 2×2 cells; `pretrain hog` chooses the cell size and orientations on the
# validation split (pipeline.choose_hog_settings) and records the chosen ones in the manifest.
HOG_CONFIG = {"architecture": "hog", "cell_size": 4, "orientations": 9, "block_size": 2}
ARCHITECTURES = {"resnet": RESNET_CONFIG, "vit": VIT_CONFIG, "pixels": PIXELS_CONFIG, "hog": HOG_CONFIG}
HAND_CRAFTED_ARCHITECTURES = ("pixels", "hog")  # features by a fixed formula: no network, no pixel statistics


def encoder_config(dataset: str | DatasetInfo = DEFAULT_DATASET, architecture: str = "resnet") -> dict:
    """The shared encoder's full config for ``dataset`` (a name or a ``DatasetInfo``): the architecture
    (``RESNET_CONFIG`` or ``VIT_CONFIG``) with the dataset's channels, image size and per-channel pixel
    statistics. The ResNet's pooling makes its weights size-agnostic; the ViT gets one token per 4×4
    patch (64 for 32×32 images)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    info = dataset if isinstance(dataset, DatasetInfo) else dataset_info(dataset)
    shape = {"in_channels": info.channels, "image_size": info.image_size}
    if architecture in HAND_CRAFTED_ARCHITECTURES:
        return {**ARCHITECTURES[architecture], **shape}
    return {**ARCHITECTURES[architecture], **shape, "mean": list(info.mean), "std": list(info.std)}


def normalization(mean: list[float], std: list[float], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel pixel ``(mean, std)`` shaped ``[1, C, 1, 1]``, checked to have one value per channel."""
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"the normalisation needs one mean and one std per input channel ({channels}), got {mean} and {std}"
        )
    return torch.tensor(list(mean)).view(1, -1, 1, 1), torch.tensor(list(std)).view(1, -1, 1, 1)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (He et al. 2016, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """A small ResNet: ``[N, C, S, S]`` in ``[0, 1]`` → features ``[N, D]``.

    A stride-2 stem (28 → 14), then one basic block per stage with widths 32-64-128 (14 → 7 → 4),
    then global average pooling: D = 128, about 0.3M parameters. The stride-2 stem halves the
    cost of a full-resolution one (about a minute per SimCLR epoch of Fashion-MNIST on 2 CPU cores).
    Inputs are normalised inside, with the dataset's ``mean`` and ``std`` per channel, so callers pass
    plain ``[0, 1]`` pixels. ``image_size`` is checked on every input and tells the decoders what to
    draw (32 for CIFAR: 32 → 16 → 8 → 4). ``encoder_config`` gives the arguments for a dataset.
    """

    def __init__(
        self,
        widths: list[int] | tuple[int, ...],
        in_channels: int,
        image_size: int,
        mean: list[float],
        std: list[float],
    ):
        super().__init__()
        self.widths = list(widths)
        self.in_channels, self.image_size = in_channels, image_size
        self.statistics = {"mean": list(mean), "std": list(std)}
        mean_tensor, std_tensor = normalization(mean, std, in_channels)
        # Not in the state dict: the statistics are part of the config, and the shipped files stay as they are.
        self.register_buffer("pixel_mean", mean_tensor, persistent=False)
        self.register_buffer("pixel_std", std_tensor, persistent=False)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, previous = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(BasicBlock(previous, width, stride=1 if i == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.feature_dim = widths[-1]

    def config(self) -> dict:
        return {
            "architecture": "resnet",
            "widths": self.widths,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            **self.statistics,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"ResNetEncoder expects images [N, {self.in_channels}, {self.image_size}, {self.image_size}] "
                f"in [0, 1], got {tuple(x.shape)}"
            )
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass without the size check, for views smaller than the images (DINO's local
        crops): the global average pooling gives ``[N, D]`` whatever the side (at least 8 pixels)."""
        x = (x - self.pixel_mean) / self.pixel_std
        x = self.stages(self.stem(x))
        return x.mean(dim=(2, 3))


class ProjectionHead(nn.Module):
    """An MLP head: (Linear → BatchNorm → ReLU) × ``hidden_layers`` → Linear.

    With one hidden layer it is SimCLR's projector g(·) (Chen et al. 2020, Sec. 2.1); VICReg's
    expander has two hidden layers as wide as its output (Bardes et al. 2022, Sec. 4.2).
    """

    def __init__(self, in_dim: int = 128, hidden_dim: int = 512, out_dim: int = 128, hidden_layers: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for layer in range(hidden_layers):
            layers += [
                nn.Linear(in_dim if layer == 0 else hidden_dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(),
            ]
        self.net = nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021, Sec. 3.1 and Appendix): a three-layer MLP with GELUs down to a
    ``bottleneck_dim`` vector, ℓ2-normalised, then a linear layer to K ``prototypes`` logits whose
    rows have unit norm (the weight-normalised layer with its norms fixed at 1 of the authors' code):
    each logit is the cosine between the image's vector and one prototype, in [−1, 1]."""

    def __init__(self, in_dim: int = 128, hidden_dim: int = 512, bottleneck_dim: int = 64, prototypes: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Linear(bottleneck_dim, prototypes, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(h), dim=-1) @ F.normalize(self.prototypes.weight, dim=-1).T


class ConvDecoder(nn.Module):
    """Features ``[N, D]`` → pixel logits ``[N, C, S, S]`` (apply a sigmoid for intensities); 1×28×28 by default.

    The mirror image of the encoder: a linear layer to an (S/4)×(S/4) map of ``widths[0]`` channels
    (7×7 for 28×28, 8×8 for 32×32), then two stride-2 transposed convolutions (7 → 14 → 28) and a
    3×3 convolution to ``out_channels``. The output size is exactly S×S (tests check it):
    ``ConvTranspose2d(kernel 4, stride 2, padding 1)`` doubles the side, ``(H - 1)·2 - 2 + 4 = 2H``.
    """

    def __init__(
        self,
        in_dim: int = 128,
        widths: list[int] | tuple[int, ...] = (64, 32, 16),
        out_channels: int = 1,
        image_size: int = 28,
    ):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"ConvDecoder draws images whose side is a multiple of 4, got {image_size}")
        self.in_dim, self.widths, self.base = in_dim, list(widths), image_size // 4
        self.project = nn.Sequential(nn.Linear(in_dim, widths[0] * self.base**2), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(widths[0], widths[1], 4, 2, 1, bias=False),
            nn.BatchNorm2d(widths[1]),
            nn.ReLU(),
            nn.ConvTranspose2d(widths[1], widths[2], 4, 2, 1, bias=False),
            nn.BatchNorm2d(widths[2]),
            nn.ReLU(),
            nn.Conv2d(widths[2], out_channels, 3, 1, 1),
        )

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "widths": self.widths}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"ConvDecoder expects features [N, {self.in_dim}], got {tuple(features.shape)}")
        return self.upsample(self.project(features).view(-1, self.widths[0], self.base, self.base))


class GaussianHead(nn.Module):
    """The VAE's inference head: features → mean and log-variance of q(z | x), each ``[N, latent_dim]``."""

    def __init__(self, in_dim: int = 128, latent_dim: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.mean = nn.Linear(in_dim, latent_dim)
        self.log_variance = nn.Linear(in_dim, latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), self.log_variance(h)


class PixelFeatures(nn.Module):
    """The raw-pixel baseline as an 'encoder': ``[N, C, S, S]`` → ``[N, C·S·S]`` (784 for Fashion-MNIST)."""

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.feature_dim = in_channels * image_size * image_size

    def config(self) -> dict:
        return {"architecture": "pixels", "in_channels": self.in_channels, "image_size": self.image_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x[0].numel() != self.feature_dim:
            raise ValueError(f"PixelFeatures expects images of {self.feature_dim} values each, got {tuple(x.shape)}")
        return x.flatten(1)


class HOGFeatures(nn.Module):
    """The hand-crafted baseline as an 'encoder': the histogram-of-oriented-gradients descriptor of
    Dalal & Triggs (2005), computed by scikit-image's ``hog`` on each image.

    Each ``cell_size``×``cell_size`` cell votes its pixels' gradient magnitudes into ``orientations``
    bins of unsigned direction (0–180°); each block of ``block_size``×``block_size`` neighbouring
    cells is normalised (L2, clipped at 0.2, renormalised: "L2-Hys"), and the blocks, overlapping by
    one cell, are concatenated. Colour images use the channel with the strongest gradient at each
    pixel. Nothing is learned: the features are the same for every dataset and seed.
    """

    def __init__(self, in_channels: int, image_size: int, cell_size: int, orientations: int, block_size: int):
        super().__init__()
        blocks = image_size // cell_size - block_size + 1
        if blocks < 1:
            raise ValueError(
                f"HOG needs at least {block_size} cells of {cell_size} pixels per side, but the images have "
                f"{image_size}: use a smaller cell_size or block_size"
            )
        self.in_channels, self.image_size = in_channels, image_size
        self.cell_size, self.orientations, self.block_size = cell_size, orientations, block_size
        self.feature_dim = blocks * blocks * block_size * block_size * orientations

    def config(self) -> dict:
        return {
            "architecture": "hog",
            "cell_size": self.cell_size,
            "orientations": self.orientations,
            "block_size": self.block_size,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"HOGFeatures expects images [N, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        images = x.detach().float().permute(0, 2, 3, 1).cpu().numpy()  # [N, S, S, C], as scikit-image reads them
        descriptors = [
            hog(
                image if self.in_channels > 1 else image[..., 0],
                orientations=self.orientations,
                pixels_per_cell=(self.cell_size, self.cell_size),
                cells_per_block=(self.block_size, self.block_size),
                block_norm="L2-Hys",
                channel_axis=-1 if self.in_channels > 1 else None,
            )
            for image in images
        ]
        return torch.from_numpy(np.stack(descriptors)).float().reshape(len(x), self.feature_dim).to(x.device)


# ------------------------------------------------------------------------------ Vision Transformer


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]`` → ``[N, L, p·p·C]``: the image cut into L = (H/p)(W/p) patches, row by row.

    Each patch is flattened with its pixels first and its channels last (MAE's convention), so a
    patch's values can be normalised by its own mean and variance.
    """
    n, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}×{w} is not a multiple of the patch size {patch_size}")
    x = images.reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch_size) * (w // patch_size), patch_size**2 * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 1) -> torch.Tensor:
    """Inverse of ``patchify`` for square images: ``[N, L, p·p·C]`` → ``[N, C, H, W]``."""
    n, length, _ = patches.shape
    side = math.isqrt(length)
    if side * side != length or patches.shape[2] != patch_size**2 * channels:
        raise ValueError(f"cannot arrange {length} patches of {patches.shape[2]} values as a square image")
    x = patches.reshape(n, side, side, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, side * patch_size, side * patch_size)


def random_masking(n: int, length: int, mask_ratio: float, device=None, generator=None):
    """MAE's per-sample random masking of ``length`` patches (He et al. 2022, Sec. 3).

    Each sample draws its own random permutation (argsort of uniform noise) and keeps the first
    ``len_keep = int(length · (1 - mask_ratio))`` patches of it. Returns ``keep`` ``[n, len_keep]``
    (indices of the visible patches), ``restore`` ``[n, length]`` (the inverse permutation: gathering
    [visible, masked] tokens with it puts them back in image order) and ``mask`` ``[n, length]``
    (1 for a masked patch, 0 for a visible one, in image order).
    """
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=device, generator=generator)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :len_keep] = 0
    return shuffle[:, :len_keep], restore, torch.gather(mask, 1, restore)


def sincos_position_embedding(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[grid_size², dim]`` (MAE, He et al. 2022).

    Half of the dimensions encode the row, half the column; each half is the 1-D embedding of
    Vaswani et al. (2017): sin and cos of the position at frequencies 1/10000^(k/(dim/4)).
    """
    if dim % 4:
        raise ValueError(f"the sine-cosine embedding needs a width divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, columns = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def embed(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1).double() * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(rows), embed(columns)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention: softmax(QKᵀ/√d) V per head, heads concatenated and projected."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # The fused CPU kernel's backward is slow for sequences this short (measured: 74% of an MAE
        # training step, 3.5× slower per epoch than the explicit product), so CPU training takes that.
        fused = not (x.device.type == "cpu" and torch.is_grad_enabled())
        attended = attend(q, k, v, fused)  # [N, heads, L, dim / heads]
        return self.out(attended.transpose(1, 2).reshape(n, length, dim))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool) -> torch.Tensor:
    """softmax(QKᵀ/√d) V over the last two dimensions: PyTorch's fused kernel, or the explicit product."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform linear layers with zero biases, unit LayerNorms (MAE's initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """A small Vision Transformer: ``[N, C, H, W]`` in ``[0, 1]`` → features ``[N, dim]``.

    The image is cut into ``patch_size``² patches (49 for 28×28 and 4×4, 64 for 32×32), each patch linearly
    embedded (a strided convolution) and given its position embedding; ``depth`` pre-norm blocks
    and a final LayerNorm follow. The features are the mean of the tokens after the final norm.
    ``tokens(x, keep)`` encodes only the patches indexed by ``keep``: MAE's encoder never sees
    the masked patches. ``position`` is ``"sincos"`` (fixed) or ``"learned"``.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        mean: list[float],
        std: list[float],
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        position: str = "sincos",
    ):
        super().__init__()
        if position not in ("sincos", "learned"):
            raise ValueError(f"ViTEncoder: position must be 'sincos' or 'learned', got {position!r}")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.dim, self.depth, self.heads, self.mlp_ratio, self.position = dim, depth, heads, mlp_ratio, position
        self.num_patches = (image_size // patch_size) ** 2
        self.statistics = {"mean": list(mean), "std": list(std)}  # of the dataset's pixels, per channel
        mean_tensor, std_tensor = normalization(mean, std, in_channels)
        self.register_buffer("pixel_mean", mean_tensor, persistent=False)
        self.register_buffer("pixel_std", std_tensor, persistent=False)
        self.patch_embedding = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        embedding = sincos_position_embedding(image_size // patch_size, dim).unsqueeze(0)
        if position == "learned":  # starts from the sine-cosine values, then trained
            self.position_embedding = nn.Parameter(embedding)
        else:  # fixed: a buffer, so no optimiser or fine-tuning ever changes it
            self.register_buffer("position_embedding", embedding)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.apply(init_transformer_weights)
        # The patch embedding is a linear map of the flattened patch: initialise it like one.
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(dim, -1))
        nn.init.zeros_(self.patch_embedding.bias)

    def config(self) -> dict:
        return {
            "architecture": "vit",
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "dim": self.dim,
            "depth": self.depth,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "position": self.position,
            **self.statistics,
        }

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens ``[N, L', dim]`` after the final norm, of all patches or those in ``keep`` ``[N, L']``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"ViTEncoder expects images [N, {', '.join(map(str, expected))}] in [0, 1], got {tuple(x.shape)}"
            )
        x = (x - self.pixel_mean) / self.pixel_std
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2) + self.position_embedding
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, self.dim))
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(dim=1)


class MAEDecoder(nn.Module):
    """MAE's light decoder: visible tokens + mask tokens → pixel values of every patch.

    The encoded visible tokens are projected to the decoder's width; a shared, learned mask token
    fills every masked position; all tokens are put back in image order (``restore``), given
    position embeddings again, and a few narrow blocks predict each patch's ``p·p·C`` values.
    """

    def __init__(
        self,
        encoder_dim: int = 128,
        num_patches: int = 49,
        patch_values: int = 16,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.dim, self.depth, self.heads, self.mlp_ratio = dim, depth, heads, mlp_ratio
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("position_embedding", sincos_position_embedding(math.isqrt(num_patches), dim).unsqueeze(0))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_values)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def config(self) -> dict:
        return {"dim": self.dim, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio}

    def forward(self, visible: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens ``[N, L_keep, D_enc]`` and ``restore`` ``[N, L]`` → predictions ``[N, L, p·p·C]``."""
        x = self.embed(visible)
        n, length = restore.shape
        x = torch.cat([x, self.mask_token.expand(n, length - x.shape[1], -1)], dim=1)  # shuffled order
        x = torch.gather(x, 1, restore.unsqueeze(-1).expand(-1, -1, self.dim))  # back to image order
        return self.predict(self.norm(self.blocks(x + self.position_embedding)))


def build_encoder(config: dict) -> ResNetEncoder | ViTEncoder | PixelFeatures | HOGFeatures:
    """An encoder from its full config (``encoder_config``): ``"architecture"`` says which network."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"an encoder config names its architecture ({', '.join(ARCHITECTURES)}), got {architecture!r}"
            "; build one with models.encoder_config(dataset, architecture)"
        )
    network = {"resnet": ResNetEncoder, "vit": ViTEncoder, "pixels": PixelFeatures, "hog": HOGFeatures}[architecture]
    return network(**config)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def convolution_weight_norm(module: nn.Module) -> float:
    """Euclidean norm of all convolution kernels (the 4-d parameters) of ``module`` taken together. A
    BatchNorm after each convolution undoes any rescaling of its kernel, so this size is free to drift
    in training, and SGD's effective learning rate on such weights falls as 1/norm² (van Laarhoven 2017)."""
    return torch.sqrt(sum(p.detach().pow(2).sum() for p in module.parameters() if p.ndim == 4)).item()
