"""The shared encoder and the heads that methods put on top of it.

Every CNN method in the series trains the same ``ResNetEncoder`` configuration, so differences in
accuracy come from the objective, not the network. Heads (projectors, classifiers) are separate
modules: only the encoder is evaluated.
"""

from __future__ import annotations

import torch
from torch import nn

# Mean and standard deviation of Fashion-MNIST training pixels in [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

ENCODER_CONFIG = {"widths": [32, 64, 128], "in_channels": 1}


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
    """A small ResNet for 28×28 images: ``[N, 1, 28, 28]`` in ``[0, 1]`` → features ``[N, D]``.

    A stride-2 stem (28 → 14), then one basic block per stage with widths 32-64-128 (14 → 7 → 4),
    then global average pooling: D = 128, about 0.3M parameters. The stride-2 stem halves the
    cost of a full-resolution one (DESIGN.md §4: about a minute per SimCLR epoch on 2 CPU cores).
    Inputs are normalised inside, so callers pass plain ``[0, 1]`` pixels.
    """

    def __init__(self, widths: list[int] | tuple[int, ...] = (32, 64, 128), in_channels: int = 1):
        super().__init__()
        self.widths = list(widths)
        self.in_channels = in_channels
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
        return {"widths": self.widths, "in_channels": self.in_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNetEncoder expects images [N, {self.in_channels}, H, W] in [0, 1], got {tuple(x.shape)}"
            )
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
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
            layers += [nn.Linear(in_dim if layer == 0 else hidden_dim, hidden_dim, bias=False),
                       nn.BatchNorm1d(hidden_dim), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ConvDecoder(nn.Module):
    """Features ``[N, D]`` → pixel logits ``[N, 1, 28, 28]`` (apply a sigmoid for intensities).

    The mirror image of the encoder: a linear layer to a 7×7 map of ``widths[0]`` channels, then
    two stride-2 transposed convolutions (7 → 14 → 28) and a 3×3 convolution to one channel. The
    output size is exactly 28×28 (tests check it): ``ConvTranspose2d(kernel 4, stride 2, padding 1)``
    doubles the side, ``(H - 1)·2 - 2 + 4 = 2H``.
    """

    def __init__(self, in_dim: int = 128, widths: list[int] | tuple[int, ...] = (64, 32, 16), out_channels: int = 1):
        super().__init__()
        self.in_dim, self.widths = in_dim, list(widths)
        self.project = nn.Sequential(nn.Linear(in_dim, widths[0] * 7 * 7), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(widths[0], widths[1], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[1]), nn.ReLU(),
            nn.ConvTranspose2d(widths[1], widths[2], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[2]), nn.ReLU(),
            nn.Conv2d(widths[2], out_channels, 3, 1, 1),
        )

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "widths": self.widths}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"ConvDecoder expects features [N, {self.in_dim}], got {tuple(features.shape)}")
        return self.upsample(self.project(features).view(-1, self.widths[0], 7, 7))


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
    """The raw-pixel baseline as a 'encoder': ``[N, 1, 28, 28]`` → ``[N, 784]``."""

    feature_dim = 28 * 28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def build_encoder(config: dict | None = None) -> ResNetEncoder:
    """The shared encoder from its config (``ENCODER_CONFIG`` when None)."""
    return ResNetEncoder(**(config or ENCODER_CONFIG))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
