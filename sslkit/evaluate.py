"""The evaluation protocol of DESIGN.md §5: linear probe, kNN and the metrics around them.

Features come from the frozen encoder. The linear probe standardises them with training
statistics and fits a multinomial logistic regression by full-batch L-BFGS; its L2 strength is
chosen on the validation split, then it is refitted on all 60,000 training images and reported
once on the test set. The fitted probe (weights and standardisation statistics) is a few KB and is
shipped with the encoder, so the test accuracy can be reproduced from test features alone.

Label efficiency: ``fine_tune`` trains the encoder and a linear head end to end on a stratified,
seeded 1% or 10% of the training labels (the same images for every method), and the same
network from its random initialisation on the same labels is the from-scratch reference.

Geometry: ``alignment`` and ``uniformity`` (Wang and Isola 2020) of L2-normalised features of
seeded augmented pairs of test images, the two properties a contrastive loss optimises.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment, simclr_views
from .data import (
    DEFAULT_DATASET,
    NUM_CLASSES,
    VALIDATION_SIZE,
    dataset_info,
    load_cifar100_transfer,
    load_digits_28,
    low_label_subset,
    to_float,
    validation_split,
)
from .weights import load_pretrained, load_probe, manifest_entry, trained_on

PROBE_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
KNN_K = 200
KNN_TEMPERATURE = 0.1
FINE_TUNE_FRACTIONS = (0.01, 0.1)
FINE_TUNE_SEEDS = (0, 1, 2)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Features of uint8 images (``[N, 28, 28]`` grey or ``[N, 3, 32, 32]`` colour) from a frozen encoder →
    float32 ``[N, D]`` on the CPU."""
    encoder.eval().to(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start : start + batch_size].to(device))
        chunks.append(encoder(batch).float().cpu())
    return torch.cat(chunks)


@dataclass
class LinearProbe:
    """A linear classifier on standardised features: ``logits = ((f - mean) / std) @ weight.T + bias``."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"the probe expects features [N, {self.weight.shape[1]}], got {tuple(features.shape)}")
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)

    def state_dict(self, prefix: str = "probe.") -> dict[str, torch.Tensor]:
        return {
            prefix + "weight": self.weight,
            prefix + "bias": self.bias,
            prefix + "mean": self.mean,
            prefix + "std": self.std,
            prefix + "weight_decay": torch.tensor(self.weight_decay, dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prefix: str = "probe.") -> LinearProbe:
        return cls(
            weight=state[prefix + "weight"],
            bias=state[prefix + "bias"],
            mean=state[prefix + "mean"],
            std=state[prefix + "std"],
            weight_decay=float(state[prefix + "weight_decay"]),
        )


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight_decay: float,
    max_iter: int = 500,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Multinomial logistic regression on standardised features, L2 penalty ``weight_decay·‖W‖²``.

    Full-batch L-BFGS with a strong-Wolfe line search, in float64: deterministic on the CPU. The
    objective is strictly convex, so ``init`` (a nearby solution, e.g. for a neighbouring
    ``weight_decay``) changes only how many iterations it takes, not where it ends.
    """
    features = features.double()
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp(min=1e-6)  # constant features (dead units, black pixels) stay 0
    x = (features - mean) / std
    if init is None:
        weight = torch.zeros(NUM_CLASSES, x.shape[1], dtype=torch.float64)
        bias = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    else:
        weight, bias = init.weight.double().clone(), init.bias.double().clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach().float(), bias.detach().float(), mean.float(), std.float(), float(weight_decay))


def probe_validation_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, validation)`` indices: the series' 5,000-image validation split; smaller slices
    (smoke runs) hold out a tenth."""
    return validation_split(labels, min(VALIDATION_SIZE, len(labels) // 10))


def select_and_fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
) -> tuple[LinearProbe, dict[float, float]]:
    """Choose the probe's L2 strength on the validation split, then refit on all training images.

    Returns the refitted probe and the validation accuracy of every candidate.
    """
    fit_indices, val_indices = probe_validation_split(train_labels)
    best, val_accuracy = _best_probe_on_validation(
        train_features, train_labels, fit_indices, val_indices, weight_decays
    )
    return fit_linear_probe(train_features, train_labels, best.weight_decay, init=best), val_accuracy


def _best_probe_on_validation(features, labels, fit_indices, val_indices, weight_decays):
    """``(probe, validation accuracies)``: a probe per L2 strength fitted on ``fit_indices`` (strong to
    weak, each warm-started from the last) and scored on ``val_indices``; the one returned has the
    highest validation accuracy, among equals the strongest regularisation."""
    val_accuracy, probes, probe = {}, {}, None
    for weight_decay in sorted(weight_decays, reverse=True):
        probe = fit_linear_probe(features[fit_indices], labels[fit_indices], weight_decay, init=probe)
        probes[weight_decay] = probe
        val_accuracy[weight_decay] = accuracy(probe.predict(features[val_indices]), labels[val_indices])
    best = max(val_accuracy, key=lambda wd: (round(val_accuracy[wd], 6), wd))
    return probes[best], val_accuracy


def low_label_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    fraction: float,
    seed: int,
    weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
) -> dict:
    """The frozen counterpart of ``fine_tune`` with the same labels: a linear probe fitted on the
    low-label subset ``fine_tune_subset(train_labels, fraction, seed)`` of frozen features, its L2
    strength chosen on the validation split (which the subset never overlaps).

    Returns ``{"labels", "weight_decay", "test_accuracy"}``.
    """
    subset = fine_tune_subset(train_labels, fraction, seed)
    _, val_indices = probe_validation_split(train_labels)
    best, _ = _best_probe_on_validation(train_features, train_labels, subset, val_indices, weight_decays)
    return {
        "labels": len(subset),
        "weight_decay": best.weight_decay,
        "test_accuracy": accuracy(best.predict(test_features), test_labels),
    }


TRANSFER_FOLDS = 5
TRANSFER_REPEATS = 3
TRANSFER_SEED = 0


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
        best, _ = _best_probe_on_validation(
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
    encoder: torch.nn.Module, device: str | torch.device = "cpu", repeats: int = TRANSFER_REPEATS
) -> dict:
    """``transfer_probe`` on the encoder's frozen features of ``data.load_digits_28``, the dataset named."""
    images, labels = load_digits_28()
    features = extract_features(encoder, images, device=device)
    measured = transfer_probe(features, labels, repeats=repeats)
    return {"dataset": "scikit-learn digits, 8x8 upsampled to 28x28", **measured}


def transfer_cifar100(
    encoder: torch.nn.Module, device: str | torch.device = "cpu", repeats: int = TRANSFER_REPEATS
) -> dict:
    """``transfer_probe`` on the frozen features of ``data.load_cifar100_transfer``: 10 CIFAR-100 classes
    (6,000 images, both splits), none of them a CIFAR-10 class, as the seed tutorials' downstream task."""
    images, labels, names = load_cifar100_transfer()
    features = extract_features(encoder, images, device=device)
    measured = transfer_probe(features, labels, repeats=repeats)
    return {"dataset": f"CIFAR-100, {len(names)} classes ({', '.join(names)})", **measured}


def transfer(
    encoder: torch.nn.Module,
    dataset: str = DEFAULT_DATASET,
    device: str | torch.device = "cpu",
    repeats: int = TRANSFER_REPEATS,
) -> dict:
    """The transfer task of an encoder pretrained on ``dataset``: the digits for the grey datasets
    (Fashion-MNIST, MNIST), 10 classes of CIFAR-100 for CIFAR-10."""
    if dataset_info(dataset).channels == 1:
        return transfer_digits(encoder, device, repeats)
    return transfer_cifar100(encoder, device, repeats)


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 500,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): cosine similarity, top-k neighbours vote with exp(sim / T)."""
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query), chunk_size):
        similarity = query[start : start + chunk_size] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(similarity), NUM_CLASSES)
        votes.scatter_add_(1, train_labels[top_index], torch.exp(top_similarity / temperature))
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).double().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``[C, C]`` counts: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy within each true class (the recall of each class), ``[C]``."""
    matrix = confusion_matrix(predictions, labels).double()
    return matrix.diag() / matrix.sum(dim=1).clamp(min=1)


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean over classes of F1 = 2·precision·recall / (precision + recall)."""
    matrix = confusion_matrix(predictions, labels).double()
    true_positive = matrix.diag()
    precision = true_positive / matrix.sum(dim=0).clamp(min=1)
    recall = true_positive / matrix.sum(dim=1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f1.mean().item()


def evaluate_features(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor
) -> tuple[LinearProbe, dict]:
    """The whole frozen-feature protocol: probe chosen on validation, test metrics, kNN.

    Returns the fitted probe (to ship) and a JSON-ready dict of results.
    """
    probe, validation_accuracy = select_and_fit_linear_probe(train_features, train_labels)
    predictions = probe.predict(test_features)
    knn = knn_predict(train_features, train_labels, test_features)
    results = {
        "feature_dim": int(train_features.shape[1]),
        "linear_probe": {
            "test_accuracy": round(accuracy(predictions, test_labels), 6),
            "macro_f1": round(macro_f1(predictions, test_labels), 6),
            "per_class_accuracy": [round(a, 6) for a in per_class_accuracy(predictions, test_labels).tolist()],
            "weight_decay": probe.weight_decay,
            "validation_accuracy": {f"{wd:g}": round(a, 6) for wd, a in validation_accuracy.items()},
        },
        "knn": {
            "test_accuracy": round(accuracy(knn, test_labels), 6),
            "k": KNN_K,
            "temperature": KNN_TEMPERATURE,
        },
    }
    return probe, results


def evaluate_shipped(
    name: str,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    device: str | torch.device = "cpu",
    directory=None,
    encoder: torch.nn.Module | None = None,
) -> dict:
    """Re-measure shipped weights: test accuracy of the shipped probe, macro-F1, and kNN.

    Only features are computed; the probe is the one fitted when the weights were published, so
    the accuracy reproduces the manifest's. ``encoder``: ``name``'s shipped encoder if the caller
    has already loaded it (loaded and verified here otherwise).
    """
    encoder = encoder if encoder is not None else load_pretrained(name, device, directory)
    probe = load_probe(name, directory)
    train_features = extract_features(encoder, train_data[0], device=device)
    test_features = extract_features(encoder, test_data[0], device=device)
    predictions = probe.predict(test_features)
    return {
        "linear_probe": accuracy(predictions, test_data[1]),
        "macro_f1": macro_f1(predictions, test_data[1]),
        "knn": accuracy(knn_predict(train_features, train_data[1], test_features), test_data[1]),
    }


# ----------------------------------------------------------------------------- geometry

GEOMETRY_ALPHA = 2.0
GEOMETRY_T = 2.0
GEOMETRY_IMAGES = 10_000  # the whole test set
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


def uniformity(features: torch.Tensor, t: float = GEOMETRY_T) -> float:
    """Uniformity (Wang and Isola 2020, Eq. 5): log E exp(-t ‖f(x) - f(y)‖₂²) over pairs of images.

    The mean runs over all N(N-1)/2 pairs of distinct rows, with features L2-normalised here.
    0 when every image maps to the same point (collapse); lower (more negative) means the
    features spread more evenly over the unit sphere, whose limit for large D is -t·2 = -4.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"uniformity expects [N, D] features with N >= 2, got {tuple(features.shape)}")
    f = F.normalize(features.double(), dim=1)
    squared_distances = torch.pdist(f).pow(2)
    return (torch.logsumexp(-t * squared_distances, dim=0) - math.log(len(squared_distances))).item()


@torch.no_grad()
def geometry(
    encoder: torch.nn.Module,
    images: torch.Tensor,
    augment_config: AugmentConfig | None = None,
    seed: int = GEOMETRY_SEED,
    device: str | torch.device = "cpu",
) -> dict:
    """Alignment and uniformity of an encoder's features (DESIGN.md §5, α = 2, t = 2).

    Two seeded views of each uint8 image (``[N, 28, 28]``, or ``[N, 3, 32, 32]``) are drawn with
    SimCLR's augmentations, with its colour jitter and grayscale for colour images, unless
    ``augment_config`` names others (the same views for every encoder); alignment compares the two
    views of each image, and uniformity, the mean of both views' values, spreads over all pairs.
    """
    augment_config = simclr_views(images) if augment_config is None else augment_config
    generator = torch.Generator(device=device).manual_seed(seed)
    encoder.eval().to(device)
    views = ([], [])
    for start in range(0, len(images), 1000):
        batch = to_float(images[start : start + 1000].to(device))
        for view in views:
            view.append(encoder(augment(batch, augment_config, generator)).float().cpu())
    f1, f2 = torch.cat(views[0]), torch.cat(views[1])
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
    """Collapse diagnostics of a joint-embedding method on uint8 images (no augmentation).

    For the embeddings the loss sees (``method.embed``) and for the encoder features: the
    standard deviation of every embedding dimension, the top-left ``block`` × ``block`` of the
    embeddings' covariance matrix, both singular-value spectra, and their effective ranks.
    """
    method.eval()
    device = next(method.parameters()).device
    batch = to_float(images.to(device))
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


# ----------------------------------------------------------------------------- an outside reference

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
    cache the first time). A clear ``WeightsError`` when they are neither cached nor downloadable."""
    from torchvision.models import ResNet18_Weights, resnet18

    from .weights import WeightsError

    try:
        network = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    except Exception as error:  # offline, blocked host, or a broken cache file
        raise WeightsError(
            f"torchvision's ImageNet weights of ResNet-18 are not in torch.hub's cache ({torch.hub.get_dir()}/"
            f"checkpoints) and could not be downloaded ({type(error).__name__}: {error}). They are an optional "
            "reference: run with network access (Colab), or copy resnet18-f37072fd.pth into that folder."
        ) from error
    return ImageNetResNet18(network, size).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- reproducing the manifest

REPRODUCTION_TOLERANCE = 0.002  # 0.2 points: features on another device or torch build differ in the last bits


def differences_from_manifest(
    name: str, measured: dict, directory=None, tolerance: float = REPRODUCTION_TOLERANCE
) -> list[str]:
    """The test accuracies of ``evaluate_shipped`` that differ from the manifest's by more than
    ``tolerance``, one sentence each; empty when the shipped weights reproduce their record."""
    recorded = manifest_entry(name, directory)["results"]
    return [
        f"{name}: {key} test accuracy {100 * measured[key]:.2f}% differs from the manifest's "
        f"{100 * recorded[key]['test_accuracy']:.2f}%"
        for key in ("linear_probe", "knn")
        if abs(measured[key] - recorded[key]["test_accuracy"]) > tolerance
    ]


def remeasure_shipped(
    name: str,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    device: str | torch.device = "cpu",
    directory=None,
    transfer_repeats: int = TRANSFER_REPEATS,
) -> dict:
    """Everything ``python -m sslkit results`` measures of one shipped encoder, loaded once.

    The shipped probe and kNN must reproduce the manifest (``ValueError`` otherwise: the weights and
    their record disagree); alignment/uniformity on ``test_data``'s images and the transfer task
    are measured afresh. Returns ``evaluate_shipped``'s dict plus ``"geometry"`` and ``"transfer"``.
    """
    encoder = load_pretrained(name, device, directory)
    dataset = trained_on(manifest_entry(name, directory))
    measured = evaluate_shipped(name, train_data, test_data, device, directory, encoder=encoder)
    differences = differences_from_manifest(name, measured, directory)
    if differences:
        raise ValueError(
            "; ".join(differences) + "; the weights and their record disagree (republish them with "
            f"`{manifest_entry(name, directory)['command']}`)"
        )
    return {
        **measured,
        "geometry": geometry(encoder, test_data[0], device=device),
        "transfer": transfer(encoder, dataset, device, repeats=transfer_repeats),
    }


# ----------------------------------------------------------------------------- label efficiency


@dataclass
class FineTuneConfig:
    """The fine-tuning recipe, identical for every method and for training from scratch.

    A fixed number of optimisation steps (not epochs), so 1% and 10% of the labels get the same
    compute: 1,000 steps of 128 images are about 213 passes over 600 images or 21 over 6,000.
    """

    steps: int = 1000
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    evaluations: int = 10  # validation accuracy this many times along the run: the learning curve

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fine_tune_subset(train_labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of ``fraction`` × N labelled training images, stratified and seeded, none of them in
    the validation split (which scores the learning curves). Identical for every method.

    ``fraction`` counts all training labels, so 0.01 of 60,000 is 600 images; 1.0 is every label
    outside the validation split (55,000), the same images for every seed."""
    fit_indices, _ = probe_validation_split(train_labels)
    count = min(len(fit_indices), max(NUM_CLASSES, round(fraction * len(train_labels))))
    return fit_indices[low_label_subset(train_labels[fit_indices], count / len(fit_indices), seed)]


def fine_tune(
    encoder: torch.nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    fraction: float,
    seed: int,
    config: FineTuneConfig | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Fine-tune a copy of ``encoder`` with a linear head on a low-label subset; report test accuracy.

    The encoder is trained end to end (nothing frozen) with the supervised baseline's recipe:
    cross-entropy, mild crops and flips, SGD with Nesterov momentum and a cosine schedule. Pass
    the randomly initialised encoder (``load_pretrained("random")``) to train from scratch.

    Returns:
        ``{"fraction", "seed", "labels", "test_accuracy", "curve"}``, where ``curve`` lists
        ``{"step", "loss", "validation_accuracy"}`` along the run.
    """
    from .methods import Supervised  # methods → models; imported here to keep evaluate light
    from .train import TrainConfig, train

    config = config or FineTuneConfig()
    images, labels = train_data
    subset = fine_tune_subset(labels, fraction, seed)
    _, val_indices = probe_validation_split(labels)
    batch_size = min(config.batch_size, len(subset))
    steps_per_epoch = len(subset) // batch_size
    epochs = max(1, round(config.steps / steps_per_epoch))
    evaluate_every = max(1, epochs // config.evaluations)

    method = Supervised(encoder_config=None)
    method.encoder = copy.deepcopy(encoder).requires_grad_(True)
    method.classifier = torch.nn.Linear(encoder.feature_dim, NUM_CLASSES)
    torch.manual_seed(seed)  # the head's initialisation
    method.classifier.reset_parameters()
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=round(config.warmup_fraction * epochs),
        seed=seed,
    )

    def predict(model, images_uint8):
        logits = [model.classifier(model.encoder(to_float(chunk.to(device)))) for chunk in images_uint8.split(1000)]
        return torch.cat(logits).argmax(1).cpu()

    @torch.no_grad()
    def validation_point(model, epoch):
        if epoch % evaluate_every and epoch != epochs:
            return {}
        return {"validation_accuracy": round(accuracy(predict(model, images[val_indices]), labels[val_indices]), 6)}

    history = train(
        method, images[subset], labels[subset], train_config, device, progress=False, on_epoch_end=validation_point
    )
    with torch.no_grad():
        test_accuracy = accuracy(predict(method, test_data[0]), test_data[1])
    curve = [
        {
            "step": record["epoch"] * steps_per_epoch,
            "loss": record["loss"],
            "validation_accuracy": record["validation_accuracy"],
        }
        for record in history
        if "validation_accuracy" in record
    ]
    return {
        "fraction": fraction,
        "seed": seed,
        "labels": len(subset),
        "test_accuracy": round(test_accuracy, 6),
        "curve": curve,
    }


def label_efficiency(
    encoder: torch.nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    fractions: tuple[float, ...] = FINE_TUNE_FRACTIONS,
    seeds: tuple[int, ...] = FINE_TUNE_SEEDS,
    config: FineTuneConfig | None = None,
    device: str | torch.device = "cpu",
    progress=None,
) -> dict:
    """``fine_tune`` for every fraction and seed, summarised as mean ± sample std over seeds.

    Returns a JSON-ready dict ``{"config": ..., "fractions": {"0.01": {"labels", "test_accuracy"
    (one per seed), "mean", "std", "curves"}, ...}}``, as stored in the manifest.
    """
    config = config or FineTuneConfig()
    summary = {"config": {**config.to_dict(), "seeds": list(seeds)}, "fractions": {}}
    for fraction in fractions:
        runs = []
        for seed in seeds:
            runs.append(fine_tune(encoder, train_data, test_data, fraction, seed, config, device))
            if progress:
                progress(runs[-1])
        accuracies = [run["test_accuracy"] for run in runs]
        summary["fractions"][f"{fraction:g}"] = {
            "labels": runs[0]["labels"],
            "test_accuracy": accuracies,
            "mean": round(statistics.mean(accuracies), 6),
            "std": round(statistics.stdev(accuracies), 6) if len(accuracies) > 1 else 0.0,
            "curves": [run["curve"] for run in runs],
        }
    return summary
