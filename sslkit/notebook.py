"""What every technique notebook does the same way: the setup cell, the frozen-feature evaluation
with its checks against the manifest, and the label-efficiency table."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats

from .cache import frozen_features, remembered
from .data import DEFAULT_DATASET, dataset_info
from .devices import describe_device, resolve_device
from .finetune import FINE_TUNE_FRACTIONS, FINE_TUNE_SEEDS, FineTuneConfig, low_label_linear_probe
from .plots import plot_confusion_matrix, plot_per_class_accuracy
from .protocol import FrozenEvaluation, confusion_matrix, evaluate_frozen_features, per_class_accuracy
from .version import __version__
from .weights import load_probe, manifest_entry

FEW_LABELS = tuple(f"{fraction:g}" for fraction in FINE_TUNE_FRACTIONS)  # the manifest's keys: "0.01", "0.1"


SMOKE_EPOCHS, SMOKE_STEPS_PER_EPOCH, SMOKE_FINE_TUNE_STEPS = 2, 3, 4
SMOKE_IMAGES = {"train": 10_000, "test": 2_000}  # the smoke configuration's slices of the data


@dataclass
class RunMode:
    """How this notebook runs: on the shipped weights, or training again (``PRETRAIN``), perhaps in the
    smoke configuration (``SSLKIT_SMOKE=1``: a few steps of everything, to test the training path)."""

    pretrain: bool = False
    smoke: bool = False


RUN = RunMode()


def _switch(variable: str) -> bool | None:
    value = os.environ.get(variable)
    if value not in (None, "", "0", "1"):
        raise ValueError(f"{variable} must be 0 or 1, got {value!r}")
    return None if value in (None, "") else value == "1"


def setup(seed: int = 0, pretrain_default: bool = False) -> tuple[torch.device, bool]:
    """Seed everything, pick the device and read the ``PRETRAIN`` switch.

    ``PRETRAIN`` is ``pretrain_default`` (False: load the shipped, verified weights) unless the
    environment variable ``SSLKIT_PRETRAIN`` is set to 1 (train for real) or 0. ``SSLKIT_SMOKE=1``
    (with ``SSLKIT_PRETRAIN=1``) shrinks every training run of the notebook to a few steps
    (``training_budget``, ``fine_tune_config``): a test of the training path, not a result.

    Returns:
        ``(device, PRETRAIN)``.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    switch = _switch("SSLKIT_PRETRAIN")
    pretrain = pretrain_default if switch is None else switch
    smoke = bool(_switch("SSLKIT_SMOKE"))
    if smoke and not pretrain:
        raise ValueError("SSLKIT_SMOKE=1 shrinks training runs, so it needs SSLKIT_PRETRAIN=1 as well")
    RUN.pretrain, RUN.smoke = pretrain, smoke
    device = resolve_device("auto")
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "axes.spines.top": False, "axes.spines.right": False})
    mode = "PRETRAIN=True: training from scratch" if pretrain else "PRETRAIN=False: loading the shipped weights"
    if smoke:
        mode += f" (smoke: {SMOKE_EPOCHS} epochs of {SMOKE_STEPS_PER_EPOCH} steps, not a result)"
    package = Path(__file__).resolve().parent
    print(f"sslkit {__version__} from {package}, torch {torch.__version__}\ndevice: {describe_device(device)}; {mode}")
    return device, pretrain


def training_budget(entry: dict) -> dict:
    """``TrainConfig`` arguments of the shipped run (its epochs and batch size, from its manifest
    ``entry``), or of the smoke configuration."""
    if RUN.smoke:
        return {"epochs": SMOKE_EPOCHS, "batch_size": entry["batch_size"], "steps_per_epoch": SMOKE_STEPS_PER_EPOCH}
    return {"epochs": entry["epochs"], "batch_size": entry["batch_size"]}


def smoke_slice(split: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of ``split`` as given, or their first ``SMOKE_IMAGES[split]`` in the smoke
    configuration, so that its evaluation (features, probe selection, t-SNE) takes seconds."""
    if not RUN.smoke:
        return images, labels
    size = SMOKE_IMAGES[split]
    return images[:size], labels[:size]


def fine_tune_config() -> FineTuneConfig:
    """The series' fine-tuning recipe, or a few steps of it in the smoke configuration."""
    return FineTuneConfig(steps=SMOKE_FINE_TUNE_STEPS, evaluations=1) if RUN.smoke else FineTuneConfig()


class StaleClaimError(AssertionError):
    """A sentence of a notebook that the shipped results no longer support."""


def claim(holds, sentence: str) -> None:
    """Guard a sentence of the notebook's prose with the measurement behind it.

    With the shipped weights a sentence that does not hold is an error (``StaleClaimError``), so a
    test run catches prose that a new result made stale. On the reader's own run (``PRETRAIN``) it
    is a note instead: the sentence describes the shipped run, and another run may differ."""
    if bool(holds):
        return
    if RUN.pretrain:
        print(f"Note: the text says that {sentence}; this does not hold for your run (it describes the shipped one).")
        return
    raise StaleClaimError(f"the text says that {sentence}, but the shipped results do not support it: update the text")


def accuracy_noise(*accuracies: float, images: int | None = None) -> float:
    """Standard error of a test accuracy measured on ``images`` test images (default: the series'
    test set), or of the difference of two measured on separate test draws:
    √(Σ p(1 − p) / n). It is the noise of sampling the test set only; another training seed adds
    its own (the fine-tuning results record that one, as a standard deviation over seeds)."""
    n = images or dataset_info(DEFAULT_DATASET).sizes["test"]
    return float(np.sqrt(sum(p * (1 - p) for p in accuracies) / n))


def seed_noise(name: str, param: str, dataset: str = DEFAULT_DATASET) -> float:
    """How much one short run's validation accuracy varies with the seed alone: the pooled standard
    deviation over seeds of a recorded sweep of ``name`` over ``param`` that ran several seeds per value
    (the manifest's ``results.sweeps.<param>``)."""
    runs = manifest_entry(name, dataset)["results"]["sweeps"][param]["runs"]
    by_value: dict = {}
    for run in runs:
        by_value.setdefault(run["value"], []).append(run["validation_accuracy"])
    groups = [values for values in by_value.values() if len(values) > 1]
    if not groups:
        raise ValueError(f"the {param} sweep of {name} has one seed per value: it does not measure the seed noise")
    squares = sum(float(np.var(values, ddof=1)) * (len(values) - 1) for values in groups)
    return float(np.sqrt(squares / sum(len(values) - 1 for values in groups)))


@dataclass
class FrozenEvaluationReport(FrozenEvaluation):
    """``protocol.FrozenEvaluation`` with the class names, and the views of it a notebook shows."""

    class_names: tuple[str, ...] = ()

    def per_class(self, labels: torch.Tensor, title: str) -> dict[str, torch.Tensor]:
        """Per-class test accuracy of the linear probe and of kNN: printed, drawn, and returned."""
        per_class = {
            "linear probe": per_class_accuracy(self.predictions, labels),
            "kNN": per_class_accuracy(self.knn_predictions, labels),
        }
        rows = zip(self.class_names, per_class["linear probe"], per_class["kNN"], strict=True)
        for name, probe_value, knn_value in rows:
            print(f"  {name:<12} probe {100 * probe_value:5.1f}%   kNN {100 * knn_value:5.1f}%")
        plot_per_class_accuracy(per_class, self.class_names, title=title)
        return per_class

    def summary(self, labels: torch.Tensor, title: str, top: int = 3) -> tuple[dict[str, torch.Tensor], list]:
        """The compact view every technique notebook shows: one figure with the per-class test accuracy
        (probe and kNN) beside the probe's confusion matrix, the hardest class and the ``top`` largest
        confusions printed. (Notebook 09 shows each view in full for every method.)

        Returns:
            ``(per_class, pairs)``: per-class accuracies by classifier, and the ``(true, predicted)``
            class pairs of the largest confusions, largest first.
        """
        per_class = {
            "linear probe": per_class_accuracy(self.predictions, labels),
            "kNN": per_class_accuracy(self.knn_predictions, labels),
        }
        classes = len(self.class_names)
        matrix = confusion_matrix(self.predictions, labels, classes)
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
        plot_per_class_accuracy(per_class, self.class_names, title="per-class test accuracy", ax=left)
        plot_confusion_matrix(matrix, self.class_names, title="linear probe: confusions (% of true class)", ax=right)
        fig.suptitle(title)
        fig.tight_layout()
        hardest = int(per_class["linear probe"].argmin())
        print(
            f"hardest class: {self.class_names[hardest]} (probe {100 * per_class['linear probe'][hardest]:.1f}%, "
            f"kNN {100 * per_class['kNN'][hardest]:.1f}%)"
        )
        pairs = self._largest_confusions(matrix, top)
        return per_class, pairs

    def _largest_confusions(self, matrix: torch.Tensor, top: int) -> list[tuple[int, int]]:
        """The ``top`` largest off-diagonal cells of ``matrix`` as ``(true, predicted)``, printed."""
        classes = len(self.class_names)
        off_diagonal = matrix.clone().fill_diagonal_(0)
        pairs = [divmod(index, classes) for index in torch.topk(off_diagonal.flatten(), top).indices.tolist()]
        for true, predicted in pairs:
            count = off_diagonal[true, predicted].item()
            print(f"{self.class_names[true]} taken for {self.class_names[predicted]}: {count} test images")
        return pairs

    def confusions(self, labels: torch.Tensor, title: str, top: int = 3) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The linear probe's confusion matrix, drawn, and its ``top`` largest mistakes, printed.

        Returns:
            ``(matrix, pairs)``: the matrix (rows: true class, columns: predicted) and the
            ``(true, predicted)`` class pairs of the largest off-diagonal counts, largest first.
        """
        matrix = confusion_matrix(self.predictions, labels, len(self.class_names))
        plot_confusion_matrix(matrix, self.class_names, title=title)
        return matrix, self._largest_confusions(matrix, top)


def evaluate_frozen(
    name: str,
    encoder: torch.nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    pretrain: bool,
    device: str | torch.device = "cpu",
    dataset: str = DEFAULT_DATASET,
) -> FrozenEvaluationReport:
    """The frozen-feature protocol as every technique notebook runs it, with its checks.

    Features of the training and test images (``frozen_features``: computed once per machine); the
    linear probe (the shipped one in skip mode, a new one chosen on the validation split after
    training); kNN. Prints what it measured beside the manifest's figures; the notebook asserts that
    they agree in skip mode.
    """
    train_features = frozen_features(encoder, train_data[0], device)
    test_features = frozen_features(encoder, test_data[0], device)
    shipped_probe = None if pretrain else load_probe(name, dataset)
    measured = evaluate_frozen_features(train_features, train_data[1], test_features, test_data[1], shipped_probe)
    evaluation = FrozenEvaluationReport(**vars(measured), class_names=dataset_info(dataset).class_names)
    probe = evaluation.probe
    recorded = manifest_entry(name, dataset)["results"]
    print(
        f"linear probe: test accuracy {100 * evaluation.probe_accuracy:.2f}% "
        f"(manifest {100 * recorded['linear_probe']['test_accuracy']:.2f}%), "
        f"macro-F1 {evaluation.macro_f1:.4f}\n"
        f"    L2 strength {probe.weight_decay:g}, chosen on the validation split"
    )
    print(
        f"kNN (k = 200): test accuracy {100 * evaluation.knn_accuracy:.2f}% "
        f"(manifest {100 * recorded['knn']['test_accuracy']:.2f}%)"
    )
    return evaluation


def print_label_efficiency(
    names: list[str] | tuple[str, ...], fractions: tuple[str, ...] = FEW_LABELS
) -> dict[str, dict]:
    """Print the manifest's fine-tuning results (mean ± std over seeds) of ``names`` at ``fractions``
    (the manifest's keys; by default the few-label ones, 1% and 10%); return them, restricted to
    those fractions."""
    results = {}
    for name in names:
        recorded = manifest_entry(name)["results"]["fine_tune"]
        missing = [fraction for fraction in fractions if fraction not in recorded["fractions"]]
        if missing:
            raise ValueError(
                f"{name}: no fine-tuning result for the label fractions {', '.join(missing)}; run "
                f"`python -m sslkit finetune {name} --fractions {' '.join(missing)}`"
            )
        results[name] = {**recorded, "fractions": {fraction: recorded["fractions"][fraction] for fraction in fractions}}
    header = "".join(f"{f'{float(f):.0%} labels':>18}" for f in fractions)
    print(f"{'encoder':<24}{header}")
    for name, result in results.items():
        cells = "".join(
            f"{100 * result['fractions'][f]['mean']:>11.2f} ± {100 * result['fractions'][f]['std']:4.2f}"
            for f in fractions
        )
        label = f"from scratch ({name})" if name in ("random", "random_vit") else name
        print(f"{label:<24}{cells}")
    return results


def gain_over_scratch(results: dict[str, dict], name: str, scratch: str = "random") -> dict[str, dict[str, float]]:
    """For each label fraction: how much starting from ``name``'s encoder helps fine-tuning.

    ``results`` holds the label-efficiency results of ``name`` and of ``scratch``, the same network
    with random weights (``"random"``, or ``"random_vit"`` for MAE) (as returned by
    ``print_label_efficiency`` or ``finetune.label_efficiency``). With three seeds a difference of
    means says little on its own, so each fraction also gets the standard error of the difference
    and Welch's t-test over the seeds, and the difference of the mean validation accuracies at the
    first and at the last point of the learning curves: a head start that training from scratch
    catches up with shows there and not in the end point.

    Returns:
        ``{fraction: {"gain", "standard_error", "p_value", "first_gap", "last_gap", "labels",
        "first_step", "last_step"}}``, accuracies as fractions.
    """
    comparison = {}
    for fraction, result in results[name]["fractions"].items():
        reference = results[scratch]["fractions"][fraction]
        ours, theirs = np.array(result["test_accuracy"]), np.array(reference["test_accuracy"])
        curves = [
            np.array([[p["validation_accuracy"] for p in curve] for curve in r["curves"]]).mean(axis=0)
            for r in (result, reference)
        ]
        steps = [point["step"] for point in result["curves"][0]]
        comparison[fraction] = {
            "gain": float(ours.mean() - theirs.mean()),
            "standard_error": float(np.sqrt(ours.var(ddof=1) / len(ours) + theirs.var(ddof=1) / len(theirs))),
            "p_value": float(stats.ttest_ind(ours, theirs, equal_var=False).pvalue),
            "first_gap": float(curves[0][0] - curves[1][0]),
            "last_gap": float(curves[0][-1] - curves[1][-1]),
            "labels": result["labels"],
            "first_step": steps[0],
            "last_step": steps[-1],
            "mean": float(ours.mean()),
            "scratch_mean": float(theirs.mean()),
            "seeds": (len(ours), len(theirs)),
        }
    return comparison


def p_value_text(p_value: float) -> str:
    """``p < 0.001`` or ``p = 0.034``."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def print_gain_over_scratch(
    results: dict[str, dict], name: str, scratch: str = "random"
) -> dict[str, dict[str, float]]:
    """``gain_over_scratch``, printed: per fraction, the difference of the mean test accuracies with
    its standard error, Welch's t-test, and the gaps at the first and last point of the learning
    curves. Returns what ``gain_over_scratch`` returns."""
    comparison = gain_over_scratch(results, name, scratch)
    for fraction, result in comparison.items():
        verdict = "significant" if result["p_value"] < 0.05 else "not significant"
        print(
            f"{float(fraction):.0%} of the labels ({result['labels']:,} images): "
            f"test {name} {100 * result['mean']:.2f}% − from scratch {100 * result['scratch_mean']:.2f}% = "
            f"{100 * result['gain']:+.2f} ± {100 * result['standard_error']:.2f} points"
        )
        print(
            f"    Welch's t-test over {result['seeds'][0]} + {result['seeds'][1]} seeds: "
            f"{p_value_text(result['p_value'])}, {verdict} at 5%\n"
            f"    validation accuracy, mean over seeds: {100 * result['first_gap']:+.1f} points at step "
            f"{result['first_step']}, {100 * result['last_gap']:+.1f} at step {result['last_step']}"
        )
    return comparison


def print_frozen_against_fine_tuned(
    evaluation: FrozenEvaluation,
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    fine_tune: dict[str, dict],
    name: str,
    label: str,
    scratch: str = "random",
    scratch_label: str = "from scratch",
) -> dict[str, torch.Tensor]:
    """The frozen encoder against fine-tuning, with the same labels.

    For each fraction and seed of ``fine_tune[name]`` (label-efficiency results), a linear probe
    on the frozen features of exactly that fine-tuning subset (``finetune.low_label_linear_probe``,
    L2 strength chosen on the validation split); printed beside the fine-tuned encoder and the same
    network from scratch (``fine_tune[scratch]``), and the shipped probe on all labels.

    Returns:
        ``{fraction: test accuracies of the frozen probe, one per seed}``.
    """
    frozen = {}
    for fraction in fine_tune[name]["fractions"]:
        frozen[fraction] = torch.tensor(
            [
                remembered(  # kept on disk (sslkit.cache): nine probe selections, a minute the first time
                    low_label_linear_probe,
                    evaluation.train_features,
                    train_labels,
                    evaluation.test_features,
                    test_labels,
                    float(fraction),
                    seed,
                )["test_accuracy"]
                for seed in FINE_TUNE_SEEDS
            ]
        )
    headers = [f"{label}, frozen + linear probe", f"{label}, fine-tuned", scratch_label]
    print(f"{'labels':>7} " + " ".join(f"{header:>{len(header) + 1}}" for header in headers))
    for fraction, runs in frozen.items():
        tuned, reference = fine_tune[name]["fractions"][fraction], fine_tune[scratch]["fractions"][fraction]
        cells = [
            (runs.mean().item(), runs.std().item()),
            (tuned["mean"], tuned["std"]),
            (reference["mean"], reference["std"]),
        ]
        print(
            f"{float(fraction):>7.0%} "
            + " ".join(
                f"{100 * mean:>{len(header) - 6}.2f} ± {100 * std:4.2f}"
                for header, (mean, std) in zip(headers, cells, strict=True)
            )
        )
    print(f"{'100%':>7} {100 * evaluation.probe_accuracy:>{len(headers[0]) - 6}.2f} (the shipped probe)")
    return frozen
