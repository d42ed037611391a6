"""How much one training run varies: the shipped recipe trained again with another seed.

``python -m sslkit replicate METHOD --seed 1`` rebuilds METHOD from its manifest entry (the shipped
run's settings and training config, so the recipe cannot drift from the shipped one), trains it with
another seed, scores it with the protocol's linear probe and kNN, and records the result under
``results.replicates`` of the entry. The weights are not published: the shipped run stays the one
the notebooks load, and the replicate is its noise (docs/design.md §13).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import DEFAULT_DATASET
from .methods import SPECS, method_from_config, seeded
from .pipeline import load_splits
from .protocol import chosen_validation_accuracy, evaluate_features, extract_features
from .train import TrainConfig, devices_of_run, train
from .weights import manifest_entry, manifest_update


def replicate_config(
    method: str,
    seed: int,
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
    steps_per_epoch: int | None = None,
) -> TrainConfig:
    """The shipped run's training config with ``seed``; refuses what has no shipped run to replicate."""
    entry = manifest_entry(method, dataset, root)
    if SPECS[method].method_class is None or "train" not in entry:
        raise ValueError(f"{method} has no training run to replicate (a baseline is only evaluated)")
    shipped = entry["train"]["seed"]
    if seed == shipped:
        raise ValueError(f"the shipped {method} weights are seed {shipped}'s; replicate it with another --seed")
    return TrainConfig(**{**entry["train"], "seed": seed, "steps_per_epoch": steps_per_epoch})


def replicate(
    method: str,
    seed: int,
    device: torch.device,
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
    checkpoint: Path | None = None,
    command: str = "",
    progress: bool = True,
    limit: int | None = None,
    steps_per_epoch: int | None = None,
) -> dict:
    """Train ``method``'s shipped recipe with ``seed``, evaluate it, and record it; returns the record."""
    config = replicate_config(method, seed, dataset, root, steps_per_epoch)
    shipped = manifest_entry(method, dataset, root)
    with seeded(seed):  # what build_method(..., seed=seed) does for a new recipe
        model = method_from_config(method, shipped["config"])
    checkpoint = checkpoint or Path("checkpoints") / f"{method}.seed{seed}.ckpt"
    (train_images, train_labels), (test_images, test_labels) = load_splits(dataset, limit)
    history = train(model, train_images, train_labels, config, device, checkpoint, progress=progress, dataset=dataset)
    _, results = evaluate_features(
        extract_features(model.encoder, train_images, device=device),
        train_labels,
        extract_features(model.encoder, test_images, device=device),
        test_labels,
    )
    probe = results["linear_probe"]
    record = {
        "seed": seed,
        "linear_probe": probe["test_accuracy"],
        "validation_accuracy": chosen_validation_accuracy(probe),
        "macro_f1": probe["macro_f1"],
        "knn": results["knn"]["test_accuracy"],
        "epochs": config.epochs,
        "device": devices_of_run(checkpoint),
        "wall_time_seconds": round(sum(epoch["seconds"] for epoch in history), 1),
        "command": command,
        "replicates_sha256": shipped["sha256"],  # the shipped run it repeats
        **({"limit": limit, "steps_per_epoch": steps_per_epoch} if limit or steps_per_epoch else {}),
    }
    with manifest_update(dataset, root) as manifest:
        if manifest["methods"][method]["sha256"] != shipped["sha256"]:
            raise ValueError(
                f"{method}'s shipped weights were replaced while this replicate trained, so it no longer repeats "
                f"their recipe; nothing was recorded (run replicate again to repeat the new recipe)"
            )
        results = manifest["methods"][method].setdefault("results", {})
        others = [run for run in results.get("replicates", []) if run["seed"] != seed]
        results["replicates"] = sorted([*others, record], key=lambda run: run["seed"])
    return record
