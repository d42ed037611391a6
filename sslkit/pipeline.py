"""What the command line and the notebooks run end to end: pretrain → evaluate → publish, re-measure
shipped weights against their record, and record fine-tuning, sweeps and training costs.

Every result lands in the manifest of the weights it was measured on (``weights.py``), named
``(name, dataset, root)`` as everywhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .augment import VIEW_ABLATIONS, VIEW_SETTINGS, vary_views
from .data import DEFAULT_DATASET, dataset_info, load_dataset, locate
from .devices import describe_device
from .geometry import alignment_and_uniformity, effective_rank, embedding_diagnostics, singular_values
from .methods import (
    SPECS,
    TRAINABLE,
    JointEmbedding,
    build_method,
    build_untrained_encoder,
    method_class,
    method_settings,
)
from .models import HOGFeatures, build_encoder, count_parameters, encoder_config
from .protocol import (
    PROBE_WEIGHT_DECAYS,
    accuracy,
    best_probe_on_validation,
    encode_images,
    evaluate_features,
    evaluate_frozen_features,
    extract_features,
    knn_predict,
    probe_validation_split,
    select_and_fit_linear_probe,
)
from .train import TrainConfig, delete_checkpoint, devices_of_run, train
from .transfer import TRANSFER_REPEATS, transfer
from .version import __version__
from .weights import load_pretrained, load_probe, manifest_entry, manifest_update, publish

REPRODUCTION_TOLERANCE = 0.002  # 0.2 points: features on another device or torch build differ in the last bits
Split = tuple[torch.Tensor, torch.Tensor]


def load_splits(dataset: str = DEFAULT_DATASET, limit: int | None = None) -> tuple[Split, Split]:
    """``(train_images, train_labels), (test_images, test_labels)``, each cut to ``limit`` images if given."""
    splits = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if limit:
        splits = tuple((images[:limit], labels[:limit]) for images, labels in splits)
    return splits


# ----------------------------------------------------------------------------- pretrain


@dataclass
class PretrainRun:
    """One ``python -m sslkit pretrain`` run: what to train, on what, and where to publish it."""

    method: str
    dataset: str = DEFAULT_DATASET
    epochs: int = 100
    batch_size: int = 256
    seed: int = 0
    recipe: dict | None = None  # overrides of the method's recipe: lr, weight_decay, optimizer, warmup_epochs
    settings: dict | None = None  # overrides of the method's settings or views, e.g. {"temperature": 0.5}
    amp: bool = True
    amp_dtype: str | None = None  # None: the device's choice; "float16" or "bfloat16" to force one
    steps_per_epoch: int | None = None  # smoke runs
    limit: int | None = None  # only the first N training and test images (smoke runs)
    checkpoint: Path | None = None  # default: checkpoints/METHOD.ckpt
    root: Path | None = None  # of the weights (default: $SSLKIT_WEIGHTS or weights/)
    command: str = ""  # what reproduces the run, recorded in the manifest
    progress: bool = True
    compile_model: bool = False

    def train_config(self) -> TrainConfig:
        recipe = {**method_class(self.method).recipe, **(self.recipe or {})}
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
            steps_per_epoch=self.steps_per_epoch,
            **recipe,
        )

    def checkpoint_path(self) -> Path:
        return self.checkpoint or Path("checkpoints") / f"{self.method}.ckpt"


def pretrain(run: PretrainRun, device: torch.device) -> dict | None:
    """Train (in every process under torchrun), then evaluate and publish (in the main process).

    Returns the published manifest entry (None in the other processes)."""
    (train_images, train_labels), (test_images, test_labels) = load_splits(run.dataset, run.limit)
    if dataset_info(run.dataset).channels == 3:  # the transfer task's files: missing, they stop the run early
        for split in ("train", "test"):
            locate("cifar100", split)
    entry = {
        "command": run.command,
        "torch_version": torch.__version__,
        "sslkit_version": __version__,
        "kind": "method" if SPECS[run.method].self_supervised else "baseline",
    }
    history: list[dict] = []
    hog_search = None
    if SPECS[run.method].method_class is None:
        if run.method == "hog":  # the one baseline with settings to choose, on the validation split
            encoder, hog_search = choose_hog_settings(train_images, train_labels, run.dataset, device)
            hog_search["command"] = run.command
        else:
            encoder = build_untrained_encoder(run.method, run.dataset, seed=run.seed)
        state = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
        entry.update(config={"encoder_config": encoder.config()}, epochs=0)
    else:
        method, history = train_method(run, train_images, train_labels, device)
        if not distributed.is_main_process():
            return None
        encoder, state = method.encoder, method.state_dict()
        entry.update(fields_of_run(run, method, history))
    print(f"evaluating {run.method} with the linear-probe protocol ...", flush=True)
    started = time.perf_counter()
    probe, entry["results"] = evaluate_new_encoder(
        encoder, (train_images, train_labels), (test_images, test_labels), run.dataset, device, run.limit
    )
    if hog_search:
        entry["results"]["sweeps"] = {"hog": hog_search}
    written = publish(run.method, {**state, **probe.state_dict()}, entry, history, run.dataset, run.root)
    results = entry["results"]
    print(
        f"{run.method}: linear probe {100 * results['linear_probe']['test_accuracy']:.2f}%, "
        f"kNN {100 * results['knn']['test_accuracy']:.2f}% (evaluated in {time.perf_counter() - started:.0f} s); "
        f"wrote {written['file']} and its manifest entry"
    )
    return written


HOG_CELL_SIZES, HOG_ORIENTATIONS = (4, 7), (6, 9, 12)  # the candidates of `pretrain hog`


def choose_hog_settings(images: torch.Tensor, labels: torch.Tensor, dataset: str, device) -> tuple[HOGFeatures, dict]:
    """``(encoder, search)``: the HOG descriptor whose cell size and number of orientations the linear
    probe scores best on the validation split (the test set is never used; ties go to the smaller
    descriptor), and the record of every candidate, stored as ``results.sweeps.hog``."""
    fit, validation = probe_validation_split(labels)
    encoders, runs = [], []
    for cell_size in HOG_CELL_SIZES:
        for orientations in HOG_ORIENTATIONS:
            config = {**encoder_config(dataset, "hog"), "cell_size": cell_size, "orientations": orientations}
            encoder = build_encoder(config)
            features = extract_features(encoder, images, device=device)
            _, accuracies = best_probe_on_validation(features, labels, fit, validation, PROBE_WEIGHT_DECAYS)
            run = {
                "value": f"{cell_size}x{cell_size} cells, {orientations} orientations",
                "cell_size": cell_size,
                "orientations": orientations,
                "feature_dim": encoder.feature_dim,
                "validation_accuracy": round(max(accuracies.values()), 6),
            }
            print(f"hog: {run['value']} ({run['feature_dim']}-d): validation {100 * run['validation_accuracy']:.2f}%")
            encoders.append(encoder)
            runs.append(run)
    chosen = max(range(len(runs)), key=lambda i: (runs[i]["validation_accuracy"], -runs[i]["feature_dim"]))
    return encoders[chosen], {"epochs": 0, "scored_by": "linear probe, validation split", "runs": runs}


def train_method(run: PretrainRun, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """``(method, history)``: the training half of ``pretrain`` (every process under torchrun)."""
    known = method_settings(run.method) + (VIEW_SETTINGS if method_class(run.method).default_views else ())
    unknown = set(run.settings or {}) - set(known)
    if unknown:
        raise ValueError(
            f"{', '.join(sorted(unknown))} does not apply to {run.method}; its settings are {', '.join(known)}"
        )
    method = build_varied_method(run.method, run.settings or {}, run.dataset, seed=run.seed)
    history = train(
        method,
        images,
        labels,
        run.train_config(),
        device,
        run.checkpoint_path(),
        progress=run.progress,
        compile_model=run.compile_model,
        dataset=run.dataset,
    )
    return method, history


def fields_of_run(run: PretrainRun, method, history: list[dict]) -> dict:
    """The manifest fields of a finished training run. Main process only: it reads the checkpoint that
    the main process wrote (where each epoch ran)."""
    config = run.train_config()
    processes = distributed.world_size()
    seconds = sum(record["seconds"] for record in history)
    return {
        "config": method.config(),
        "train": config.to_dict(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "device": devices_of_run(run.checkpoint_path()) + (f" × {processes} processes" if processes > 1 else ""),
        "wall_time_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 2),
    }


def evaluate_new_encoder(encoder, train_data: Split, test_data: Split, dataset: str, device, limit=None):
    """``(probe, results)``: the whole protocol on a new encoder, as recorded in the manifest."""
    train_features = extract_features(encoder, train_data[0], device=device)
    test_features = extract_features(encoder, test_data[0], device=device)
    probe, results = evaluate_features(train_features, train_data[1], test_features, test_data[1])
    results["encoder_parameters"] = count_parameters(encoder)
    results["geometry"] = alignment_and_uniformity(encoder, test_data[0], device=device)
    results["transfer"] = transfer(encoder, dataset, device, repeats=1 if limit else TRANSFER_REPEATS, limit=limit)
    if limit:
        results["limit"] = limit
    return probe, results


# ----------------------------------------------------------------------------- shipped weights


def evaluate_shipped(
    name: str,
    train_data: Split,
    test_data: Split,
    device: str | torch.device = "cpu",
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
    encoder: torch.nn.Module | None = None,
) -> dict:
    """Re-measure shipped weights: test accuracy of the shipped probe, its macro-F1, and kNN.

    Only features are computed; the probe is the one fitted when the weights were published, so
    the accuracy reproduces the manifest's. ``encoder``: ``name``'s shipped encoder if the caller
    has already loaded it (loaded and verified here otherwise).
    """
    encoder = encoder if encoder is not None else load_pretrained(name, device, dataset, root)
    evaluation = evaluate_frozen_features(
        extract_features(encoder, train_data[0], device=device),
        train_data[1],
        extract_features(encoder, test_data[0], device=device),
        test_data[1],
        probe=load_probe(name, dataset, root),
    )
    return {"linear_probe": evaluation.probe_accuracy, "macro_f1": evaluation.macro_f1, "knn": evaluation.knn_accuracy}


def differences_from_manifest(
    name: str,
    measured: dict,
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
    tolerance: float = REPRODUCTION_TOLERANCE,
) -> list[str]:
    """The test accuracies of ``evaluate_shipped`` that differ from the manifest's by more than
    ``tolerance``, one sentence each; empty when the shipped weights reproduce their record."""
    recorded = manifest_entry(name, dataset, root)["results"]
    return [
        f"{name}: {key} test accuracy {100 * measured[key]:.2f}% differs from the manifest's "
        f"{100 * recorded[key]['test_accuracy']:.2f}%"
        for key in ("linear_probe", "knn")
        if abs(measured[key] - recorded[key]["test_accuracy"]) > tolerance
    ]


def remeasure_shipped(
    name: str,
    train_data: Split,
    test_data: Split,
    device: str | torch.device = "cpu",
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
    transfer_repeats: int = TRANSFER_REPEATS,
    transfer_limit: int | None = None,
) -> dict:
    """Everything ``python -m sslkit results`` measures of one shipped encoder, loaded once.

    The shipped probe and kNN must reproduce the manifest (``ValueError`` otherwise: the weights and
    their record disagree); alignment/uniformity on ``test_data``'s images and the transfer task
    are measured afresh. Returns ``evaluate_shipped``'s dict plus ``"geometry"`` and ``"transfer"``.
    """
    encoder = load_pretrained(name, device, dataset, root)
    measured = evaluate_shipped(name, train_data, test_data, device, dataset, root, encoder=encoder)
    differences = differences_from_manifest(name, measured, dataset, root)
    if differences:
        raise ValueError(
            "; ".join(differences) + "; the weights and their record disagree (republish them with "
            f"`{manifest_entry(name, dataset, root)['command']}`)"
        )
    return {
        **measured,
        "geometry": alignment_and_uniformity(encoder, test_data[0], device=device),
        "transfer": transfer(encoder, dataset, device, repeats=transfer_repeats, limit=transfer_limit),
    }


# ----------------------------------------------------------------------------- fine-tuning records


def record_fine_tune(name: str, summary: dict, dataset: str = DEFAULT_DATASET, root: Path | None = None) -> dict:
    """Store a ``finetune.label_efficiency`` summary under ``results.fine_tune`` of ``name``, merged with
    the fractions recorded before (``merged_fine_tune``), inside one manifest lock. Returns what was stored."""
    manifest_entry(name, dataset, root)  # a clear error when nothing is shipped under this name
    with manifest_update(dataset, root) as manifest:
        results = manifest["methods"][name].setdefault("results", {})
        results["fine_tune"] = merged_fine_tune(results, summary)
    return results["fine_tune"]


def merged_fine_tune(recorded: dict, summary: dict) -> dict:
    """``summary`` with the fractions an earlier ``finetune`` run of the same recipe, seeds and limit
    recorded and this run did not measure (e.g. ``--fractions 1`` after the default 0.01 0.1).

    Every fraction entry says on which device it ran; ``seconds`` is the total of both runs. An
    earlier record of another recipe is replaced, never mixed in."""
    previous = recorded.get("fine_tune")
    for result in summary["fractions"].values():
        result["device"] = summary["device"]
    if not previous or (previous["config"], previous.get("limit")) != (summary["config"], summary.get("limit")):
        return summary
    kept = {
        fraction: {"device": previous["device"], **result}
        for fraction, result in previous["fractions"].items()
        if fraction not in summary["fractions"]
    }
    if not kept:
        return summary
    devices = {result["device"] for result in (*kept.values(), *summary["fractions"].values())}
    return {
        **summary,
        "fractions": dict(sorted({**kept, **summary["fractions"]}.items(), key=lambda f: float(f[0]))),
        "seconds": round(previous["seconds"] + summary["seconds"], 1),
        "device": " and ".join(sorted(devices)),
    }


# ----------------------------------------------------------------------------- sweeps


SWEEPABLE_TRAIN_SETTINGS = tuple(
    f.name for f in fields(TrainConfig) if f.name not in ("epochs", "steps_per_epoch", "amp", "amp_dtype", "seed")
)


def method_settings_of(settings: dict) -> dict:
    """The settings a method is built with (the others are training settings); lists back to tuples."""
    return {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in settings.items()
        if key not in SWEEPABLE_TRAIN_SETTINGS
    }


MONITOR_BANK = 10_000  # training images whose features the monitoring kNN searches
MONITOR_QUERIES = 2_048  # validation images it classifies, and whose embeddings it measures
MONITORED = ("knn_validation_accuracy", "embedding_std", "embedding_effective_rank")


@torch.no_grad()
def monitor(method, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """How a run is doing, measured cheaply enough to do every few epochs: a kNN classifier's accuracy
    on part of the validation split (the test set is never used) and, for methods with embeddings
    (``embed``: the joint-embedding methods and DINO), the label-free collapse signals of the
    embeddings the loss sees: the mean per-dimension standard deviation of the L2-normalised
    embeddings (0 when they collapse to a point, about 1/√D when they spread over the sphere;
    SimSiam, Chen and He 2021, Section 4.1 and Fig. 2) and their effective rank."""
    fit_indices, validation_indices = probe_validation_split(labels)
    bank, queries = fit_indices[:MONITOR_BANK], validation_indices[:MONITOR_QUERIES]
    bank_features = extract_features(method.encoder, images[bank], device=device)
    query_features = extract_features(method.encoder, images[queries], device=device)
    predictions = knn_predict(bank_features, labels[bank], query_features)
    record = {MONITORED[0]: accuracy(predictions, labels[queries])}
    if hasattr(method, "embed"):  # the joint-embedding methods and DINO
        embeddings = encode_images(method.embed, images[queries], device).double()
        record[MONITORED[1]] = F.normalize(embeddings, dim=1).std(dim=0).mean().item()
        record[MONITORED[2]] = effective_rank(singular_values(embeddings))
    return record


def build_varied_method(name: str, settings: dict, dataset: str = DEFAULT_DATASET, seed: int = 0):
    """``name``'s method with some of its settings changed: constructor arguments (``temperature``, ...),
    or ``views`` (a view set by name) or one of ``VIEW_SETTINGS`` (the method's own views, one changed)."""
    arguments = {key: value for key, value in settings.items() if key != "views" and key not in VIEW_SETTINGS}
    if "views" in settings or any(key in settings for key in VIEW_SETTINGS):
        default_views = build_method(name, dataset).augment_config
        views = VIEW_ABLATIONS[settings["views"]] if "views" in settings else default_views
        for key in VIEW_SETTINGS:
            if key in settings:
                views = vary_views(views, key, settings[key])
        if views is not None and views != default_views:
            arguments["augment_config"] = views
    return build_method(name, dataset, seed=seed, **arguments)


def spell_settings(settings: dict) -> str:
    """Changed settings as a file name's part: ``crop_min_area=0.08-decoder_widths=32x16x8``."""
    spelled = {key: "x".join(map(str, value)) if isinstance(value, list) else value for key, value in settings.items()}
    return "-".join(f"{key}={value}" for key, value in spelled.items())


def short_run_checkpoint(folder: Path, method: str, dataset: str, smoke: bool, name: str, seed: int) -> Path:
    """Where a sweep's or a recipe search's run saves every epoch until it is recorded:
    ``FOLDER/METHOD.DATASET.[smoke.]NAME.seedS.ckpt``."""
    return folder / f"{method}.{dataset}.{'smoke.' if smoke else ''}{name}.seed{seed}.ckpt"


def short_run(
    name: str,
    settings: dict,
    config: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    dataset: str = DEFAULT_DATASET,
    monitor_every: int = 0,
    diagnostics: bool = False,
    checkpoint_path: Path | None = None,
) -> dict:
    """Train ``name`` with ``settings`` changed (see ``build_varied_method``) under ``config``, fit the
    linear probe on the training split and score it on the validation split (never the test split).
    With ``checkpoint_path`` the training saves every epoch and resumes from it, as ``train`` does.

    Returns the last epoch's training metrics, ``validation_accuracy``, ``seconds`` (the epochs'
    wall time, summed over interruptions when resumed, plus the probe's) and ``device`` (where it trained:
    every device of a resumed run); with ``monitor_every`` also the monitored ``history`` (per monitored
    epoch, the step's metrics and the monitor's), with ``diagnostics`` the embeddings' diagnostics."""
    method = build_varied_method(name, settings, dataset, seed=config.seed)
    on_epoch_end = None
    if monitor_every:

        def on_epoch_end(method, epoch):
            if epoch % monitor_every and epoch != config.epochs:
                return {}
            return monitor(method, images, labels, device)

    history = train(
        method, images, labels, config, device, checkpoint_path, progress=False, on_epoch_end=on_epoch_end,
        dataset=dataset,
    )  # fmt: skip
    started = time.perf_counter()
    _, validation = select_and_fit_linear_probe(extract_features(method.encoder, images, device=device), labels)
    probe_seconds = time.perf_counter() - started
    last = {key: value for key, value in history[-1].items() if key not in ("epoch", "lr", "seconds", *MONITORED)}
    run = {
        **last,
        "validation_accuracy": round(max(validation.values()), 6),
        "seconds": round(sum(epoch["seconds"] for epoch in history) + probe_seconds, 1),
        "device": devices_of_run(checkpoint_path) if checkpoint_path else describe_device(device),
    }
    if monitor_every:
        run["history"] = [
            {key: round(value, 6) for key, value in record.items() if key not in ("lr", "seconds")}
            for record in history
            if MONITORED[0] in record
        ]
    if diagnostics:
        _, validation_indices = probe_validation_split(labels)
        run["diagnostics"] = embedding_diagnostics(method, images[validation_indices[:2048]])
    return run


@dataclass
class Sweep:
    """Short runs of one method over the values of one setting, scored by the linear probe on the
    validation split (the test set is never used), each recorded in the manifest as soon as it ends.

    ``fixed`` holds other settings at a value of their own in every run (e.g. BYOL's momentum held
    constant while ``base_momentum`` varies); such a sweep is stored under ``"PARAM, NAME=VALUE"``,
    beside the sweep of PARAM alone. ``param == "epochs"`` sweeps the budget: each value is a run's
    length (and ``epochs`` is unused), its cosine schedule ending at zero at that length."""

    method: str
    param: str  # a method setting (beta, temperature, ...) or a training one (lr, batch_size, ...)
    values: list
    fixed: dict = field(default_factory=dict)  # other settings, one value for every run
    seeds: tuple[int, ...] = (0,)
    epochs: int = 5
    warmup_epochs: int | None = None  # default: the method's recipe
    lr_scaling: str = "none"  # with param batch_size: "linear" or "sqrt" scaling of the recipe's lr
    diagnostics: bool = False  # collapse diagnostics of each run's embeddings
    dataset: str = DEFAULT_DATASET
    root: Path | None = None
    monitor_every: int = 0  # every N epochs, label-free health and a kNN on the validation split (0: never)
    limit: int | None = None  # smoke runs
    steps_per_epoch: int | None = None  # smoke runs
    command: str = ""
    checkpoints: Path = Path("checkpoints") / "sweep"  # a run in progress saves here every epoch

    def check(self) -> None:
        """A clear error for a setting the method does not have, or options that do not fit it."""
        settings = set(method_settings(self.method)) | set(SWEEPABLE_TRAIN_SETTINGS) | {"epochs"}
        if issubclass(method_class(self.method), JointEmbedding):
            settings.add("views")
        if method_class(self.method).default_views is not None:
            settings.update(VIEW_SETTINGS)
        for name in (self.param, *self.fixed):
            if name not in settings:
                choices = ", ".join(sorted(settings))
                raise ValueError(f"{self.method} has no setting {name!r}; choose one of {choices}")
        if self.param in self.fixed:
            raise ValueError(f"{self.param} is the setting the sweep varies; it cannot also be held fixed")
        for name, value in self.fixed.items():
            if name == "epochs":
                raise ValueError("the length of every run is --epochs, not --set epochs=N")
            if name == "views" or name in VIEW_SETTINGS or not isinstance(value, (int, float)):
                raise ValueError(f"a fixed setting takes a number and is not a view setting, got {name}={value!r}")
        if self.param == "views":
            unknown = [value for value in self.values if value not in VIEW_ABLATIONS]
            if unknown:
                raise ValueError(f"unknown views {unknown}; choose among {', '.join(VIEW_ABLATIONS)}")
            if dataset_info(self.dataset).channels != 1:
                raise ValueError(f"the view ablation is defined for greyscale images, not {self.dataset}'s colour ones")
        elif any(isinstance(value, str) for value in self.values):
            raise ValueError(f"{self.param} takes numbers, got {self.values}")
        elif self.param == "epochs" and not all(isinstance(value, int) and value > 0 for value in self.values):
            raise ValueError(f"epochs takes whole numbers of at least 1, got {self.values}")
        elif self.param in VIEW_SETTINGS:  # the values must make views, before any run starts
            views = build_method(self.method, self.dataset).augment_config
            for value in self.values:
                vary_views(views, self.param, value)
        if self.monitor_every < 0:
            raise ValueError(f"--monitor-every must be 0 (off) or a number of epochs, got {self.monitor_every}")
        if self.lr_scaling != "none" and self.param != "batch_size":
            raise ValueError(f"--lr-scaling {self.lr_scaling} applies only when sweeping batch_size, not {self.param}")
        if self.diagnostics and not hasattr(method_class(self.method), "embed"):
            embedding = ", ".join(name for name in TRAINABLE if hasattr(method_class(name), "embed"))
            raise ValueError(f"--diagnostics needs a method with embeddings ({embedding}), not {self.method}")
        manifest_entry(self.method, self.dataset, self.root)  # results are recorded beside the shipped weights

    def settings(self) -> dict:
        """What every run of the sweep shares; a recorded sweep with other settings is not resumed."""
        recipe = method_class(self.method).recipe
        warmup = recipe["warmup_epochs"] if self.warmup_epochs is None else self.warmup_epochs
        settings = {"warmup_epochs": warmup, "lr_scaling": self.lr_scaling}
        if self.param != "epochs":  # a budget sweep's runs have their value as their length
            settings = {"epochs": self.epochs, **settings}
        if self.fixed:
            settings["fixed"] = dict(sorted(self.fixed.items()))
        if self.monitor_every:
            settings["monitor_every"] = self.monitor_every
        if self.limit or self.steps_per_epoch:
            settings["smoke"] = {"limit": self.limit, "steps_per_epoch": self.steps_per_epoch}
        return settings

    @property
    def key(self) -> str:
        """Where the sweep is stored under ``results.sweeps``: PARAM, then any fixed settings."""
        return "".join([self.param, *(f", {name}={value}" for name, value in sorted(self.fixed.items()))])

    def recorded_runs(self) -> dict[tuple, dict]:
        """Runs an interrupted sweep with the same settings recorded, by ``(value, seed)``; a run recorded
        before runs named their device gets the one its sweep's record gave."""
        sweeps = manifest_entry(self.method, self.dataset, self.root).get("results", {}).get("sweeps", {})
        previous = sweeps.get(self.key, {})
        if any(previous.get(key) != value for key, value in self.settings().items()):
            return {}
        return {
            (run["value"], run.get("seed", 0)): run if "device" in run else {**run, "device": previous["device"]}
            for run in previous.get("runs", [])
            if ("diagnostics" in run or not self.diagnostics) and ("history" in run or not self.monitor_every)
        }

    def varied(self, value) -> dict:
        """What one run changes from the shipped recipe: the fixed settings and PARAM=value (a budget
        sweep's value is the run's length, which ``train_config`` sets)."""
        return {**({} if self.param == "epochs" else {self.param: value}), **self.fixed}

    def run_epochs(self, value) -> int:
        """The length of the run of ``value``: the value itself in a budget sweep, else ``epochs``."""
        return value if self.param == "epochs" else self.epochs

    def train_config(self, value, seed: int) -> TrainConfig:
        recipe = {**method_class(self.method).recipe, "warmup_epochs": self.settings()["warmup_epochs"]}
        recipe.update({name: v for name, v in self.varied(value).items() if name in SWEEPABLE_TRAIN_SETTINGS})
        if self.lr_scaling != "none":
            ratio = value / TrainConfig.batch_size
            recipe["lr"] *= ratio if self.lr_scaling == "linear" else ratio**0.5
        return TrainConfig(epochs=self.run_epochs(value), seed=seed, steps_per_epoch=self.steps_per_epoch, **recipe)

    def checkpoint_path(self, value, seed: int) -> Path:
        """Where the run of ``value`` and ``seed`` saves every epoch until it is recorded, named by what it
        changes from the shipped recipe and by its length."""
        name = f"sweep.{spell_settings(self.varied(value)) or 'shipped'}.epochs{self.run_epochs(value)}"
        smoke = bool(self.limit or self.steps_per_epoch)
        return short_run_checkpoint(self.checkpoints, self.method, self.dataset, smoke, name, seed)

    def run_one(self, value, seed: int, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
        """Train one run, resuming from its checkpoint if an interrupted sweep left one, and score it on
        the validation split; its record."""
        config = self.train_config(value, seed)
        checkpoint = self.checkpoint_path(value, seed)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        run = short_run(
            self.method,
            method_settings_of(self.varied(value)),
            config,
            images,
            labels,
            device,
            self.dataset,
            monitor_every=self.monitor_every,
            diagnostics=self.diagnostics,
            checkpoint_path=checkpoint,
        )
        return {"value": value, "seed": seed, "lr": config.lr, **run}

    def record(self, runs: list[dict]) -> None:
        """Store the runs under ``results.sweeps[self.key]``, read and written under one manifest lock, so
        that sweeps of other settings finishing at the same time keep theirs; the sweep's ``device`` lists
        those of its runs."""
        devices = "; ".join(dict.fromkeys(run["device"] for run in runs))
        record = {**self.settings(), "command": self.command, "device": devices, "runs": runs}
        with manifest_update(self.dataset, self.root) as manifest:
            results = manifest["methods"][self.method].setdefault("results", {})
            results.setdefault("sweeps", {})[self.key] = record

    def run(self, device: torch.device, report=print) -> list[dict]:
        """Every value and seed, skipping runs an interrupted sweep recorded; returns the records."""
        self.check()
        (images, labels), _ = load_splits(self.dataset, self.limit)
        done, runs = self.recorded_runs(), []
        for value in self.values:
            for seed in self.seeds:
                if (value, seed) in done:
                    runs.append(done[(value, seed)])
                    report(
                        f"{self.method} {self.param}={value} seed {seed}: recorded by an earlier, interrupted "
                        f"sweep (validation probe accuracy {100 * runs[-1]['validation_accuracy']:.2f}%)"
                    )
                    continue
                runs.append(self.run_one(value, seed, images, labels, device))
                metrics = {
                    k: v
                    for k, v in runs[-1].items()
                    if k not in ("value", "seed", "lr", "diagnostics", "history", "device")
                }
                report(
                    f"{self.method} {self.param}={value} seed {seed} (lr {runs[-1]['lr']:.4g}): "
                    + ", ".join(
                        f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("validation_accuracy", "seconds")
                    )
                    + f", validation probe accuracy {100 * runs[-1]['validation_accuracy']:.2f}% "
                    f"({runs[-1]['seconds']:.0f} s)"
                )
                self.record(runs + [r for r in done.values() if r not in runs])  # keeps runs still to come
                delete_checkpoint(self.checkpoint_path(value, seed))  # the manifest holds what it measured
        self.record(runs + [r for r in done.values() if r not in runs])  # and those of other values
        return runs


# ----------------------------------------------------------------------------- training costs


def record_costs(
    training: dict,
    device: str,
    batch_size: int,
    steps: int,
    rounds: int,
    command: str,
    dataset: str = DEFAULT_DATASET,
    root: Path | None = None,
) -> tuple[list[str], list[str]]:
    """Store one bench run's training cost in the manifest entry of every shipped method it timed:
    its median round, with every round's images/s (``training`` as ``bench.bench_training`` returns it).

    All methods of one run share the device, the batch size and the command, so the costs in the
    README are comparable with each other (never with a run on another machine). Costs an earlier
    run recorded for methods this run did not time are removed, so the table never mixes runs.
    Returns ``(recorded, removed)`` names."""
    with manifest_update(dataset, root) as manifest:
        shipped = manifest.get("methods", {})
        recorded = [name for name in training if name in shipped]
        removed = [name for name in shipped if name not in training and "cost" in shipped[name].get("results", {})]
        for name in removed:
            del shipped[name]["results"]["cost"]
        for name in recorded:
            result = training[name]
            shipped[name].setdefault("results", {})["cost"] = {
                "images_per_second": round(result["images_per_second"], 1),
                "seconds_per_epoch": round(result["seconds_per_epoch"], 1),
                "peak_memory_mib": round(result["peak_memory_mib"], 1),
                "device": device,
                "round_images_per_second": [round(rate, 1) for rate in result["round_images_per_second"]],
                "batch_size": batch_size,
                "steps": steps,
                "rounds": rounds,
                "command": command,
            }
    return recorded, removed
