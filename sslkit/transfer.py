"""Transfer: the linear probe on a dataset none of the encoders saw, by repeated cross-validation.

The grey datasets (Fashion-MNIST, MNIST) transfer to scikit-learn's 1,797 handwritten digits
(upsampled to 28×28), CIFAR-10 to 10 classes of CIFAR-100. For reference only, torchvision's
ImageNet ResNet-18 (supervised, 40× larger) can be measured on the same task.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .data import DEFAULT_DATASET, dataset_info, load_cifar100_transfer, load_digits_28
from .protocol import PROBE_WEIGHT_DECAYS, accuracy, best_probe_on_validation, extract_features, fit_linear_probe


class ReferenceWeightsError(ValueError):
    """torchvision's ImageNet weights are neither cached nor downloadable."""


TRANSFER_FOLDS = 5
TRANSFER_REPEATS = 3
TRANSFER_SEED = 0
SMOKE_FOLDS = 2  # runs limited to their first images (smoke runs, tests): each half held out once


def transfer_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    folds: int = TRANSFER_FOLDS,
    repeats: int = TRANSFER_REPEATS,
    seed: int = TRANSFER_SEED,
    weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
) -> dict:
    """The linear probe on a small dataset no encoder saw, by repeated stratified k-fold cross-validation.

    With 1,797 images (scikit-learn's digits) a single split would make a noisy estimate, so each of
    ``repeats`` shufflings is cut into ``folds`` stratified folds and each fold is held out once. In
    every split the L2 strength is chosen as in the main protocol, on a stratified fifth of the
    training folds, then the probe is refitted on all the training folds and scored on the held-out
    one.

    Returns:
        JSON-ready ``{"mean", "std", "accuracies", "folds", "repeats", "seed", "images"}``: the mean
        and sample standard deviation of the ``folds · repeats`` held-out accuracies.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

    if len(features) != len(labels):
        raise ValueError(f"transfer_probe: {len(features)} feature rows but {len(labels)} labels")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    accuracies = []
    for train_indices, test_indices in splitter.split(features.numpy(), labels.numpy()):
        fit_indices, val_indices = train_test_split(
            train_indices, test_size=0.2, random_state=seed, stratify=labels[train_indices].numpy()
        )
        best, _ = best_probe_on_validation(
            features, labels, torch.from_numpy(fit_indices), torch.from_numpy(val_indices), weight_decays
        )
        train_indices = torch.from_numpy(train_indices)
        probe = fit_linear_probe(features[train_indices], labels[train_indices], best.weight_decay, init=best)
        accuracies.append(accuracy(probe.predict(features[test_indices]), labels[test_indices]))
    return {
        "mean": round(statistics.mean(accuracies), 6),
        "std": round(statistics.stdev(accuracies), 6),
        "accuracies": [round(a, 6) for a in accuracies],
        "folds": folds,
        "repeats": repeats,
        "seed": seed,
        "images": len(labels),
    }


def transfer_digits(
    encoder: torch.nn.Module,
    device: str | torch.device = "cpu",
    repeats: int = TRANSFER_REPEATS,
    limit: int | None = None,
    folds: int = TRANSFER_FOLDS,
) -> dict:
    """``transfer_probe`` on the encoder's frozen features of ``data.load_digits_28`` (its first ``limit``
    images in smoke runs), the dataset named."""
    images, labels = load_digits_28()
    features = extract_features(encoder, images[:limit], device=device)
    measured = transfer_probe(features, labels[:limit], folds=folds, repeats=repeats)
    return {"dataset": "scikit-learn digits, 8x8 upsampled to 28x28", **measured}


def transfer_cifar100(
    encoder: torch.nn.Module,
    device: str | torch.device = "cpu",
    repeats: int = TRANSFER_REPEATS,
    limit: int | None = None,
    folds: int = TRANSFER_FOLDS,
) -> dict:
    """``transfer_probe`` on the frozen features of ``data.load_cifar100_transfer``: 10 CIFAR-100 classes
    (6,000 images, both splits; the first ``limit`` in smoke runs), none of them a CIFAR-10 class."""
    images, labels, names = load_cifar100_transfer()
    features = extract_features(encoder, images[:limit], device=device)
    measured = transfer_probe(features, labels[:limit], folds=folds, repeats=repeats)
    return {"dataset": f"CIFAR-100, {len(names)} classes ({', '.join(names)})", **measured}


def transfer(
    encoder: torch.nn.Module,
    dataset: str = DEFAULT_DATASET,
    device: str | torch.device = "cpu",
    repeats: int = TRANSFER_REPEATS,
    limit: int | None = None,
) -> dict:
    """The transfer task of an encoder pretrained on ``dataset``: the digits for the grey datasets
    (Fashion-MNIST, MNIST), 10 classes of CIFAR-100 for CIFAR-10. ``limit``: only its first images,
    cut into ``SMOKE_FOLDS`` folds instead of ``TRANSFER_FOLDS`` (smoke runs and tests, where each
    probe fit costs as much as on all images; the result records the images and folds it used)."""
    folds = SMOKE_FOLDS if limit else TRANSFER_FOLDS
    if dataset_info(dataset).channels == 1:
        return transfer_digits(encoder, device, repeats, limit, folds)
    return transfer_cifar100(encoder, device, repeats, limit, folds)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_REFERENCE_SIZE = 224  # the resolution ResNet-18 was trained at on ImageNet


class ImageNetResNet18(torch.nn.Module):
    """torchvision's ResNet-18, trained *with labels* on ImageNet, as a frozen feature extractor.

    A reference of another kind, never one of the series' encoders: supervised, not
    self-supervised; 11.7M parameters against the series' 0.3M; trained on 1.28M labelled photos.
    ``[N, C, H, W]`` in ``[0, 1]`` (grey images are repeated to three channels) is resized to
    ``size`` (bilinear) and normalised with ImageNet's statistics; the features are the 512
    globally pooled values before its classifier.
    """

    def __init__(self, network: torch.nn.Module, size: int = IMAGENET_REFERENCE_SIZE):
        super().__init__()
        network.fc = torch.nn.Identity()
        self.network, self.size, self.feature_dim = network, size, 512
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"ImageNetResNet18 expects images [N, 1 or 3, H, W] in [0, 1], got {tuple(x.shape)}")
        x = F.interpolate(x.expand(-1, 3, -1, -1), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.network((x - self.pixel_mean) / self.pixel_std)


def load_imagenet_resnet18(size: int = IMAGENET_REFERENCE_SIZE) -> ImageNetResNet18:
    """The ImageNet reference in eval mode, its weights from torchvision (downloaded into torch.hub's
    cache the first time). A clear ``ReferenceWeightsError`` when they are neither cached nor downloadable."""
    from torchvision.models import ResNet18_Weights, resnet18

    try:
        network = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    except Exception as error:  # offline, blocked host, or a broken cache file
        raise ReferenceWeightsError(
            f"torchvision's ImageNet weights of ResNet-18 are not in torch.hub's cache ({torch.hub.get_dir()}/"
            f"checkpoints) and could not be downloaded ({type(error).__name__}: {error}). They are an optional "
            "reference: run with network access (Colab), or copy resnet18-f37072fd.pth into that folder."
        ) from error
    return ImageNetResNet18(network, size).eval().requires_grad_(False)
