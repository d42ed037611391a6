"""Label efficiency: the encoder fine-tuned end to end with a few labels, against training from scratch.

``fine_tune`` trains the encoder and a linear head on a stratified, seeded 1% or 10% of the
training labels (the same images for every method), and the same network from its random
initialisation on the same labels is the from-scratch reference. ``low_label_linear_probe`` is the
frozen counterpart on the same labels.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

import torch

from .data import low_label_subset
from .methods import Supervised, initialize_linear, seeded
from .protocol import (
    PROBE_WEIGHT_DECAYS,
    accuracy,
    best_probe_on_validation,
    encode_images,
    probe_validation_split,
)
from .train import TrainConfig, train

FINE_TUNE_FRACTIONS = (0.01, 0.1)
FINE_TUNE_SEEDS = (0, 1, 2)


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
    classes = len(train_labels.unique())
    count = min(len(fit_indices), max(classes, round(fraction * len(train_labels))))
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
    config = config or FineTuneConfig()
    images, labels = train_data
    subset = fine_tune_subset(labels, fraction, seed)
    _, val_indices = probe_validation_split(labels)
    batch_size = min(config.batch_size, len(subset))
    steps_per_epoch = len(subset) // batch_size
    epochs = max(1, round(config.steps / steps_per_epoch))
    evaluate_every = max(1, epochs // config.evaluations)

    with seeded(seed):  # the caller's global generator is left as it was
        model = Supervised(encoder.config(), num_classes=int(labels.max()) + 1)
    model.encoder = copy.deepcopy(encoder).requires_grad_(True)
    initialize_linear(model.classifier, torch.Generator().manual_seed(seed))  # the head, seeded
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=round(config.warmup_fraction * epochs),
        seed=seed,
    )

    def predict(model, images_uint8):
        return encode_images(model.logits, images_uint8, device).argmax(1)

    @torch.no_grad()
    def validation_point(model, epoch):
        if epoch % evaluate_every and epoch != epochs:
            return {}
        return {"validation_accuracy": round(accuracy(predict(model, images[val_indices]), labels[val_indices]), 6)}

    history = train(
        model, images[subset], labels[subset], train_config, device, progress=False, on_epoch_end=validation_point
    )
    with torch.no_grad():
        test_accuracy = accuracy(predict(model, test_data[0]), test_data[1])
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
    best, _ = best_probe_on_validation(train_features, train_labels, subset, val_indices, weight_decays)
    return {
        "labels": len(subset),
        "weight_decay": best.weight_decay,
        "test_accuracy": accuracy(best.predict(test_features), test_labels),
    }
