"""The recipe search (docs/design.md §13): a coordinate search over each method's settings, by a
protocol fixed before any run.

Every run trains for ``EPOCHS`` epochs (warm-up ``WARMUP_EPOCHS``) and is scored by the linear probe
on the validation split. The shipped recipe first runs with ``NOISE_SEEDS``: the standard deviation
σ of those runs is the seed noise. Then each setting of ``GRIDS[method]``, in order, runs once per
value (seed 0) with the values kept so far; its best value replaces the kept one only if it leads it
by more than ``2·√2·σ``. Runs are stored in the manifest's ``results.search`` as each ends and are
never run twice (a run is named by its settings and seed), so the search resumes where it stopped.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DEFAULT_DATASET
from .methods import build_method, method_class
from .pipeline import (
    SWEEPABLE_TRAIN_SETTINGS,
    load_splits,
    method_settings_of,
    short_run,
    short_run_checkpoint,
    spell_settings,
)
from .protocol import chosen_validation_accuracy
from .train import TrainConfig, delete_checkpoint
from .weights import manifest_entry, manifest_update

EPOCHS = 20
WARMUP_EPOCHS = 1
NOISE_SEEDS = (0, 1, 2)
SEED = 0  # every run of a setting's grid
LEAD_IN_NOISE_UNITS = 2 * math.sqrt(2)  # a value must lead the kept one by this many σ to replace it

DECAY = ("decay_every_parameter", (1, 0))
# What a setting's values mean, where its name does not say it.
GLOSSES = {
    "decay_every_parameter": "1: weight decay on every parameter; "
    "0: none on biases, normalisation layers or mask tokens",
}
CONTRASTIVE = (
    DECAY,
    ("temperature", (0.1, 0.2, 0.3, 0.5)),
    ("crop_min_area", (0.08, 0.25, 0.4)),
    ("jitter_strength", (0.2, 0.4, 0.6)),
    ("projector_hidden_dim", (128, 512)),
    ("projector_out_dim", (32, 64, 128)),
)
# Each method's settings in the order they are searched, each with its grid (the shipped value among them).
GRIDS: dict[str, tuple[tuple[str, tuple], ...]] = {
    "simclr": CONTRASTIVE,
    "dcl": CONTRASTIVE,
    "vicreg": (
        DECAY,
        ("lr", (1e-3, 3e-3, 1e-2)),
        ("sim_coeff", (10.0, 25.0, 50.0)),
        ("std_coeff", (10.0, 25.0, 50.0)),
        ("cov_coeff", (0.5, 1.0, 2.0)),
    ),
    "autoencoder": (
        DECAY,
        ("noise_std", (0.0, 0.1, 0.2, 0.4)),
        ("decoder_widths", ((32, 16, 8), (64, 32, 16), (128, 64, 32))),
    ),
    "vae": (DECAY, ("beta", (0.5, 1.0, 2.0, 4.0)), ("latent_dim", (16, 32, 64))),
    "rotation": (DECAY, ("crop_min_area", (0.25, 0.6, 1.0)), ("head_hidden_dim", (128, 256, 512))),
    "barlow_twins": (
        DECAY,
        ("lr", (1e-3, 3e-3, 1e-2)),
        ("redundancy_weight", (2.5e-3, 5e-3, 1e-2)),
        ("projector_dim", (512, 1024, 2048)),
    ),
    "byol": (
        DECAY,
        ("lr", (0.05, 0.1, 0.2)),
        ("base_momentum", (0.98, 0.99, 0.996)),
        ("predictor_hidden_dim", (128, 512)),
    ),
    "simsiam": (
        DECAY,
        ("lr", (0.025, 0.05, 0.1)),
        ("weight_decay", (1e-4, 5e-4)),
        ("predictor_hidden_dim", (32, 128, 512)),
    ),
    "dino": (
        DECAY,
        ("lr", (3e-4, 1e-3, 3e-3)),
        ("teacher_temperature", (0.02, 0.04, 0.07)),
        ("prototypes", (256, 1024, 4096)),
    ),
    "mae": (
        DECAY,
        ("mask_ratio", (0.5, 0.65, 0.75, 0.85)),
        ("decoder_dim", (64, 128)),
        ("decoder_depth", (1, 2, 4)),
        ("lr", (2.5e-4, 5e-4, 1e-3)),
        ("weight_decay", (0.01, 0.05, 0.1)),
    ),
}


def shipped_value(method: str, setting: str, dataset: str = DEFAULT_DATASET):
    """The value ``setting`` has in ``method``'s shipped recipe."""
    if setting in SWEEPABLE_TRAIN_SETTINGS:
        return {**TrainConfig().to_dict(), **method_class(method).recipe}[setting]
    if setting == "crop_min_area":
        return build_method(method, dataset).augment_config.crop_scale[0]
    if setting == "jitter_strength":
        return build_method(method, dataset).augment_config.brightness
    parameter = inspect.signature(method_class(method)).parameters.get(setting)
    if parameter is None:
        raise ValueError(f"{method} has no setting {setting!r}")
    return parameter.default


def recorded_value(run: dict, setting: str):
    """The value ``setting`` had in a recorded run (a manifest entry, or its ``previous_run``): from its
    training config, its views or its constructor arguments."""
    if setting in SWEEPABLE_TRAIN_SETTINGS:
        return {**TrainConfig().to_dict(), **run["train"]}[setting]
    if setting == "crop_min_area":
        return run["config"]["augment_config"]["crop_scale"][0]
    if setting == "jitter_strength":
        return run["config"]["augment_config"]["brightness"]
    return run["config"][setting]


def same(a, b) -> bool:
    """Values equal as the manifest stores them (tuples become lists, booleans numbers)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)
    return a == b


def as_stored(value):
    """A value as the manifest's JSON stores it: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


def changed(method: str, settings: dict, dataset: str = DEFAULT_DATASET, start: dict | None = None) -> dict:
    """``settings`` without those at their value in ``start`` (default: the shipped recipe): the name of a
    run, whatever order it was reached in."""
    return {
        key: as_stored(value)
        for key, value in sorted(settings.items())
        if not same(value, start[key] if start is not None else shipped_value(method, key, dataset))
    }


def starting_recipe(method: str, dataset: str = DEFAULT_DATASET) -> dict:
    """The value of every searched setting in today's shipped recipe: where a new search starts."""
    return {setting: as_stored(shipped_value(method, setting, dataset)) for setting, _ in GRIDS[method]}


def train_config(settings: dict, seed: int, recipe: dict, steps_per_epoch: int | None = None) -> TrainConfig:
    train_settings = {key: value for key, value in settings.items() if key in SWEEPABLE_TRAIN_SETTINGS}
    return TrainConfig(
        **{**recipe, "warmup_epochs": WARMUP_EPOCHS, **train_settings},
        epochs=EPOCHS,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
    )


@dataclass
class Step:
    """What the search does next: the runs it still needs, or the decision they allow."""

    setting: str | None  # None: the noise runs of the shipped recipe
    runs: list[tuple[dict, int]]  # (changed settings, seed) still to train
    values: tuple = ()


@dataclass
class RecipeSearch:
    method: str
    dataset: str = DEFAULT_DATASET
    root: Path | None = None
    limit: int | None = None  # smoke runs and tests
    steps_per_epoch: int | None = None  # smoke runs and tests
    command: str = ""
    checkpoints: Path = Path("checkpoints") / "search"  # a run in progress saves here every epoch

    def __post_init__(self):
        if self.method not in GRIDS:
            raise ValueError(f"the recipe search covers {', '.join(GRIDS)}; {self.method!r} is not one of them")
        manifest_entry(self.method, self.dataset, self.root)  # results are recorded beside the shipped weights

    # ------------------------------------------------------------------ reading the record

    def record(self) -> dict:
        record = manifest_entry(self.method, self.dataset, self.root).get("results", {}).get("search", {})
        protocol = self.protocol()
        if record and record.get("protocol") != protocol:
            raise ValueError(
                f"{self.method}'s recorded search used {record.get('protocol')}, not {protocol}: "
                "runs of two protocols cannot be compared; remove results.search from its manifest entry "
                "to start again"
            )
        return record

    def start(self) -> dict:
        """The recipe the search started from, as recorded (the shipped one at the time), so that a run's
        name keeps its meaning after the chosen recipe becomes the shipped one; today's shipped recipe
        before the first run."""
        return self.record().get("start") or starting_recipe(self.method, self.dataset)

    def protocol(self) -> dict:
        protocol = {"epochs": EPOCHS, "warmup_epochs": WARMUP_EPOCHS, "noise_seeds": list(NOISE_SEEDS)}
        if self.limit or self.steps_per_epoch:
            protocol["smoke"] = {"limit": self.limit, "steps_per_epoch": self.steps_per_epoch}
        return protocol

    def recorded_run(self, settings: dict, seed: int) -> dict | None:
        """The recorded run with these changed settings and seed, if any."""
        name = changed(self.method, settings, start=self.start())  # once, not for every recorded run
        for run in self.record().get("runs", []):
            if run["seed"] == seed and run["settings"] == name:
                return run
        return None

    def score(self, settings: dict, seed: int) -> float | None:
        """The validation accuracy of the recorded run with these changed settings and seed, if any."""
        run = self.recorded_run(settings, seed)
        return None if run is None else run["validation_accuracy"]

    def kept(self) -> dict:
        """The changed settings kept by the decisions so far."""
        kept = {}
        for decision in self.record().get("decisions", []):
            kept[decision["setting"]] = decision["kept"]
        return changed(self.method, kept, start=self.start())

    def noise(self) -> float | None:
        """σ: the standard deviation of the shipped recipe's validation accuracy over ``NOISE_SEEDS``."""
        scores = [self.score({}, seed) for seed in NOISE_SEEDS]
        if None in scores:
            return None
        return float(torch.tensor(scores, dtype=torch.float64).std())

    def next_step(self) -> Step | None:
        """The noise runs first, then each setting in order; None when every setting is decided."""
        missing = [({}, seed) for seed in NOISE_SEEDS if self.score({}, seed) is None]
        if missing:
            return Step(None, missing)
        decided = {decision["setting"] for decision in self.record().get("decisions", [])}
        for setting, values in GRIDS[self.method]:
            if setting in decided:
                continue
            kept = self.kept()
            runs = [
                (changed(self.method, {**kept, setting: value}, start=self.start()), SEED)
                for value in values
                if self.score({**kept, setting: value}, SEED) is None
            ]
            return Step(setting, runs, values)
        return None

    # ------------------------------------------------------------------ running it

    def decide(self, setting: str, values: tuple) -> dict:
        """Keep the best value only if it leads the kept one by more than 2·√2·σ."""
        kept = self.kept()
        current = kept.get(setting, self.start()[setting])
        current = next((value for value in values if same(value, current)), current)  # True → 1
        scores = [self.score({**kept, setting: value}, SEED) for value in values]
        best = max(range(len(values)), key=lambda i: (scores[i], same(values[i], current)))  # a tie keeps current
        current_score = self.score({**kept, setting: current}, SEED)
        threshold = LEAD_IN_NOISE_UNITS * self.noise()
        lead = scores[best] - current_score
        replaces = not same(values[best], current) and lead > threshold
        new = values[best] if replaces else current
        compared = [({}, seed) for seed in NOISE_SEEDS] + [({**kept, setting: value}, SEED) for value in values]
        devices = sorted({self.recorded_run(*run).get("device", "not recorded") for run in compared})
        return {
            "setting": setting,
            "values": [as_stored(value) for value in values],
            "validation_accuracy": scores,
            "current": as_stored(current),
            "best": as_stored(values[best]),
            "lead": round(lead, 6),
            "threshold": round(threshold, 6),
            "kept": as_stored(new),
            "devices": devices,  # of the runs it rests on, the noise runs included (design §13, Machines)
        }

    def checkpoint_path(self, settings: dict, seed: int) -> Path:
        """Where the run with these changed settings and seed saves every epoch until it is recorded."""
        smoke = bool(self.limit or self.steps_per_epoch)
        name = spell_settings(settings) or "start"
        return short_run_checkpoint(self.checkpoints, self.method, self.dataset, smoke, name, seed)

    def train_one(self, settings: dict, seed: int, images, labels, device: torch.device) -> dict:
        """Train one run, resuming from its checkpoint if an interrupted search left one; its record."""
        config = train_config(settings, seed, method_class(self.method).recipe, self.steps_per_epoch)
        checkpoint = self.checkpoint_path(settings, seed)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        run = short_run(
            self.method, method_settings_of(settings), config, images, labels, device, self.dataset,
            checkpoint_path=checkpoint,
        )  # fmt: skip
        return {"settings": settings, "seed": seed, **run, "command": self.command}

    def forget_checkpoint(self, settings: dict, seed: int) -> None:
        """Delete a recorded run's checkpoint and history: the manifest holds what it measured."""
        delete_checkpoint(self.checkpoint_path(settings, seed))

    def save(self, run: dict | None = None, decision: dict | None = None) -> None:
        """Add a run or a decision to ``results.search``, under the manifest's lock."""
        with manifest_update(self.dataset, self.root) as manifest:
            results = manifest["methods"][self.method].setdefault("results", {})
            search = results.setdefault(
                "search", {"protocol": self.protocol(), "start": self.start(), "runs": [], "decisions": []}
            )
            if run is not None:
                search["runs"].append(run)
            if decision is not None:
                search["decisions"].append(decision)

    def run(self, device: torch.device, max_runs: int | None = None, report=print) -> bool:
        """Train runs and take decisions until the search ends (True) or ``max_runs`` runs are done."""
        (images, labels), _ = load_splits(self.dataset, self.limit)
        done = 0
        while (step := self.next_step()) is not None:
            for settings, seed in step.runs:
                if max_runs is not None and done == max_runs:
                    return False
                run = self.train_one(settings, seed, images, labels, device)
                self.save(run=run)
                self.forget_checkpoint(settings, seed)
                done += 1
                report(
                    f"{self.method} {settings or 'starting recipe'} seed {seed}: validation probe accuracy "
                    f"{100 * run['validation_accuracy']:.2f}% ({run['seconds']:.0f} s)"
                )
            if step.setting is None:
                report(f"{self.method}: seed noise σ = {100 * self.noise():.2f} points")
                continue
            decision = self.decide(step.setting, step.values)
            self.save(decision=decision)
            report(describe_decision(decision))
        return True


def describe_decision(decision: dict) -> str:
    """A decision in a few lines: the score of each value (and what the values mean, where the
    setting's name does not say it), what it kept and why, and the devices where its runs mix them."""
    scores = ", ".join(
        f"{value}: {100 * score:.2f}%"
        for value, score in zip(decision["values"], decision["validation_accuracy"], strict=True)
    )
    lead, threshold = f"{100 * decision['lead']:.2f}", f"{100 * decision['threshold']:.2f}"
    if not same(decision["kept"], decision["current"]):
        verdict = f"{decision['kept']} replaces {decision['current']}: it leads by {lead} points, beyond {threshold}"
    elif same(decision["best"], decision["current"]):
        verdict = f"{decision['current']} stays: it scores best"
    else:
        verdict = (
            f"{decision['current']} stays: the best, {decision['best']}, leads by {lead} points, within {threshold}"
        )
    lines = [f"{decision['setting']}: {scores}", f"    {verdict}"]
    if decision["setting"] in GLOSSES:
        lines.insert(1, f"    ({GLOSSES[decision['setting']]})")
    devices = decision.get("devices", [])
    if len(devices) > 1:
        lines.append(f"    the runs compared trained on {len(devices)} devices: {'; '.join(devices)}")
    return "\n".join(lines)


def describe_search(method: str, dataset: str = DEFAULT_DATASET, root: Path | None = None) -> str:
    """``method``'s recorded search as text: the seed noise, then every decision in the order taken."""
    search = RecipeSearch(method, dataset, root)
    record = search.record()
    if not record:
        raise ValueError(f"{method} has no recorded search: run python -m sslkit search {method}")
    noise_scores = [search.score({}, seed) for seed in NOISE_SEEDS]
    runs = len(record["runs"])
    lines = [f"{method}: {runs} run{'s' * (runs != 1)} of {EPOCHS} epochs, scored by the probe on the validation split"]
    if None in noise_scores:
        lines.append(f"seed noise: not yet measured (python -m sslkit search {method} goes on with it)")
    else:
        sigma = search.noise()
        threshold = 100 * LEAD_IN_NOISE_UNITS * sigma
        seeds, scores = ", ".join(map(str, NOISE_SEEDS)), ", ".join(f"{100 * score:.2f}%" for score in noise_scores)
        lines += [
            f"seed noise: the starting recipe (shipped when the search began) with seeds {seeds}: {scores};",
            f"    σ = {100 * sigma:.2f} points, so a value must lead the kept one by more than 2·√2·σ = "
            f"{threshold:.2f} points",
        ]
    lines += [describe_decision(decision) for decision in record.get("decisions", [])]
    lines += ranking_at_full_length(method, search, dataset, root)
    decided = len(record.get("decisions", []))
    lines.append(
        f"settings kept: {search.kept() or 'those of the starting recipe'}"
        + ("" if decided == len(GRIDS[method]) else f" ({decided} of {len(GRIDS[method])} settings decided)")
    )
    return "\n".join(lines)


def ranking_at_full_length(method: str, search: RecipeSearch, dataset: str, root: Path | None) -> list[str]:
    """Whether the 100-epoch runs rank the chosen and the starting recipe as the 20-epoch runs did: a line
    once the chosen recipe is shipped and the run it replaced (``previous_run``) was the starting recipe."""
    entry = manifest_entry(method, dataset, root)
    previous = entry["results"].get("previous_run")
    start, kept = search.start(), search.kept()
    chosen = {**start, **kept}
    if not kept or previous is None:
        return []
    if not all(same(recorded_value(previous, key), start[key]) for key in start) or not all(
        same(recorded_value(entry, key), chosen[key]) for key in chosen
    ):
        return []
    probe = entry["results"]["linear_probe"]
    new, old = chosen_validation_accuracy(probe), previous["validation_accuracy"]
    verdict = "holds" if new > old else "does not hold"
    return [
        f"at {entry['epochs']} epochs (the shipped runs): the chosen recipe scores {100 * new:.2f}% on the validation "
        f"probe, the starting one {100 * old:.2f}%:",
        f"    the ranking of the {EPOCHS}-epoch runs {verdict}",
    ]
