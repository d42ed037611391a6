"""The evaluation protocol: frozen features, the linear probe, kNN and the metrics around them.

Features come from the frozen encoder. The linear probe standardises them with training
statistics and fits a multinomial logistic regression by full-batch L-BFGS; its L2 strength is
chosen on the validation split, then it is refitted on all training images and reported once on
the test set. The fitted probe (weights and standardisation statistics) is a few KB and is shipped
with the encoder, so the test accuracy can be reproduced from test features alone. kNN: cosine
similarity, k = 200, votes weighted by exp(similarity / 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import VALIDATION_SIZE, to_float, validation_split

PROBE_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
KNN_K = 200
KNN_TEMPERATURE = 0.1


def encode_images(
    encode, images: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 1000
) -> torch.Tensor:
    """``encode`` applied to uint8 images in chunks: each chunk moved to ``device``, turned into floats in
    [0, 1] (``data.to_float``) and encoded; the float32 outputs concatenated on the CPU.

    The one loop behind features, augmented views' features and fine-tuned predictions alike.
    """
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start : start + batch_size].to(device))
        outputs.append(encode(batch).float().cpu())
    return torch.cat(outputs)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Features of uint8 images (``[N, 28, 28]`` grey or ``[N, 3, 32, 32]`` colour) from a frozen encoder →
    float32 ``[N, D]`` on the CPU."""
    encoder.eval().to(device)
    return encode_images(encoder, images, device, batch_size)


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

    The classes are ``0 .. labels.max()``, so any labelled task fits (10 classes or 20).

    Full-batch L-BFGS with a strong-Wolfe line search, in float64: deterministic on the CPU. The
    objective is strictly convex, so ``init`` (a nearby solution, e.g. for a neighbouring
    ``weight_decay``) changes only how many iterations it takes, not where it ends.
    """
    features = features.double()
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp(min=1e-6)  # constant features (dead units, black pixels) stay 0
    x = (features - mean) / std
    if init is None:
        num_classes = int(labels.max()) + 1
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        bias = torch.zeros(num_classes, dtype=torch.float64)
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
    best, val_accuracy = best_probe_on_validation(train_features, train_labels, fit_indices, val_indices, weight_decays)
    return fit_linear_probe(train_features, train_labels, best.weight_decay, init=best), val_accuracy


def best_probe_on_validation(features, labels, fit_indices, val_indices, weight_decays):
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


def validation_accuracies(
    features: torch.Tensor, labels: torch.Tensor, weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS
) -> dict[float, float]:
    """The validation accuracy of a probe per L2 strength on the series' split of ``labels``
    (``probe_validation_split``): the scores by which ``select_and_fit_linear_probe`` chooses."""
    fit_indices, val_indices = probe_validation_split(labels)
    return best_probe_on_validation(features, labels, fit_indices, val_indices, weight_decays)[1]


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 500,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): cosine similarity, top-k neighbours vote with exp(sim / T).

    The classes are ``0 .. train_labels.max()``."""
    num_classes = int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query), chunk_size):
        similarity = query[start : start + chunk_size] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(similarity), num_classes)
        votes.scatter_add_(1, train_labels[top_index], torch.exp(top_similarity / temperature))
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).double().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """``[C, C]`` counts: row = true class, column = predicted class; C is ``num_classes``, or else the
    largest class seen plus one."""
    if num_classes is None:
        num_classes = int(max(labels.max(), predictions.max())) + 1
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


@dataclass
class FrozenEvaluation:
    """The linear probe and kNN on frozen features: what they predict on the test set, and how well."""

    train_features: torch.Tensor
    test_features: torch.Tensor
    probe: LinearProbe
    predictions: torch.Tensor  # the linear probe's, on the test set
    knn_predictions: torch.Tensor
    probe_accuracy: float
    knn_accuracy: float
    macro_f1: float  # of the linear probe
    validation_accuracy: dict[float, float] | None = None  # per L2 strength, when the probe was fitted here


def evaluate_frozen_features(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    probe: LinearProbe | None = None,
) -> FrozenEvaluation:
    """The frozen-feature protocol on features: the given (shipped) probe, or one chosen on the
    validation split and refitted on all training features; kNN; their test predictions and accuracy."""
    validation_accuracy = None
    if probe is None:
        probe, validation_accuracy = select_and_fit_linear_probe(train_features, train_labels)
    predictions = probe.predict(test_features)
    knn_predictions = knn_predict(train_features, train_labels, test_features)
    return FrozenEvaluation(
        train_features,
        test_features,
        probe,
        predictions,
        knn_predictions,
        accuracy(predictions, test_labels),
        accuracy(knn_predictions, test_labels),
        macro_f1(predictions, test_labels),
        validation_accuracy,
    )


def evaluate_features(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor
) -> tuple[LinearProbe, dict]:
    """The whole frozen-feature protocol, as recorded in the manifest: probe chosen on validation,
    test metrics, kNN. Returns the fitted probe (to ship) and a JSON-ready dict of results."""
    evaluation = evaluate_frozen_features(train_features, train_labels, test_features, test_labels)
    per_class = per_class_accuracy(evaluation.predictions, test_labels)
    results = {
        "feature_dim": int(train_features.shape[1]),
        "linear_probe": {
            "test_accuracy": round(evaluation.probe_accuracy, 6),
            "macro_f1": round(evaluation.macro_f1, 6),
            "per_class_accuracy": [round(a, 6) for a in per_class.tolist()],
            "weight_decay": evaluation.probe.weight_decay,
            "validation_accuracy": {f"{wd:g}": round(a, 6) for wd, a in evaluation.validation_accuracy.items()},
        },
        "knn": {"test_accuracy": round(evaluation.knn_accuracy, 6), "k": KNN_K, "temperature": KNN_TEMPERATURE},
    }
    return evaluation.probe, results


def chosen_validation_accuracy(probe: dict) -> float:
    """The validation accuracy of the L2 strength a recorded probe (``results.linear_probe``) chose."""
    return probe["validation_accuracy"][f"{probe['weight_decay']:g}"]
