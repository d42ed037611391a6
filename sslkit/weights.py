"""Shipped weights: save, verify and load them, with ``weights/manifest.json`` as the record.

Each ``weights/<name>.pth`` is a plain state dict of tensors (loaded with ``weights_only=True``,
so nothing is ever unpickled): the method's modules under their own prefixes (``encoder.``,
``projector.``, ...) and the fitted linear probe under ``probe.``. The manifest holds, per name,
the file's sha256 and size, the model and training configuration, the command, device and wall
time of the training run, and every result measured on the weights. It is the single source of
truth for numbers: the README table and the notebooks read it.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
from torch import nn

from .augment import AugmentConfig
from .data import DEFAULT_DATASET, dataset_info
from .models import PixelFeatures, build_encoder

METHODS = ("autoencoder", "vae", "rotation", "simclr", "dcl", "vicreg", "mae")
BASELINES = ("supervised", "random", "random_vit", "pixels")
MANIFEST_NAME = "manifest.json"


class WeightsError(ValueError):
    """Shipped weights are missing, corrupt, tampered with or do not fit the architecture."""


def weights_dir(dataset: str = DEFAULT_DATASET) -> Path:
    """``$SSLKIT_WEIGHTS`` if set, else the repository's ``weights/`` (found from the package, not the cwd);
    for a dataset other than Fashion-MNIST, its subfolder (``weights/cifar10/``), with its own manifest."""
    dataset_info(dataset)  # a clear error for unknown names
    root = (
        Path(os.environ["SSLKIT_WEIGHTS"])
        if os.environ.get("SSLKIT_WEIGHTS")
        else (Path(__file__).resolve().parent.parent / "weights")
    )
    return root if dataset == DEFAULT_DATASET else root / dataset


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory: str | Path | None = None) -> dict:
    """The manifest as a dict ``{"methods": {name: entry}}``; empty when there is none yet."""
    path = Path(directory or weights_dir()) / MANIFEST_NAME
    if not path.exists():
        return {"methods": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path} is not valid JSON ({error}); restore it with `git checkout {path}`") from error


def save_manifest(manifest: dict, directory: str | Path | None = None) -> None:
    path = Path(directory or weights_dir()) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextmanager
def manifest_update(directory: str | Path | None = None):
    """Read, change and write the manifest under an exclusive lock: runs that finish at the same time
    (a sweep recording a run while a training publishes) never lose each other's entries.

    Yields the manifest dict; it is saved when the ``with`` block ends without an error.
    """
    directory = Path(directory or weights_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / (MANIFEST_NAME + ".lock"), "w") as lock:
        if fcntl is not None:  # POSIX; elsewhere concurrent runs must not write the same manifest
            fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(directory)
        yield manifest
        save_manifest(manifest, directory)


def check_name(name: str) -> None:
    if name not in METHODS + BASELINES:
        raise ValueError(
            f"unknown method {name!r}; methods are {', '.join(METHODS)}; baselines are {', '.join(BASELINES)}"
        )


def trained_on(entry: dict) -> str:
    """The dataset a manifest entry's weights were trained on (entries from before ``--dataset``: Fashion-MNIST)."""
    return entry.get("dataset", DEFAULT_DATASET)


def manifest_entry(name: str, directory: str | Path | None = None, dataset: str | None = None) -> dict:
    """The manifest entry of ``name`` in ``directory`` (default: ``weights_dir(dataset)``), with a clear
    error if it has no weights there yet or, when ``dataset`` is given, if they were trained on another."""
    check_name(name)
    directory = Path(directory or weights_dir(dataset or DEFAULT_DATASET))
    entries = load_manifest(directory)["methods"]
    if name not in entries:
        shipped = ", ".join(sorted(entries)) or "none"
        option = "" if dataset in (None, DEFAULT_DATASET) else f" --dataset {dataset}"
        raise WeightsError(
            f"no weights for {name!r} are in {directory} yet (there: {shipped}); "
            f"train them with `python -m sslkit pretrain {name}{option}`"
        )
    if dataset is not None and trained_on(entries[name]) != dataset:
        actual = trained_on(entries[name])
        raise WeightsError(
            f"the weights of {name!r} in {directory} were trained on {dataset_info(actual).title}, not on "
            f"{dataset_info(dataset).title}: pass dataset={actual!r} (--dataset {actual}), or the folder of the "
            f"{dataset!r} weights, {weights_dir(dataset)}"
        )
    return entries[name]


def record_results(name: str, key: str, value, directory: str | Path | None = None) -> None:
    """Set ``results[key]`` in the manifest entry of ``name`` (measured later than training, e.g.
    label efficiency); the weights file and its hash are unchanged."""
    manifest_entry(name, directory)  # clear error when nothing is shipped under this name
    with manifest_update(directory) as manifest:
        manifest["methods"][name].setdefault("results", {})[key] = value


def _verified_file(path: Path, expected_sha256: str, what: str) -> Path:
    if not path.is_file():
        raise WeightsError(
            f"{what} {path} is missing; restore it with `git checkout -- {path.name}` inside {path.parent} "
            "or retrain it (see the manifest's command)"
        )
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}… differs from the manifest's {expected_sha256[:16]}…; the file may be "
            "corrupt, truncated or tampered with. Restore it with `git checkout` or retrain it."
        )
    return path


def load_state(name: str, directory: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The verified state dict of ``name``'s shipped weights (sha256 checked against the manifest)."""
    directory = Path(directory or weights_dir())
    entry = manifest_entry(name, directory)
    path = _verified_file(directory / entry["file"], entry["sha256"], "weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the sha matched, so this is a file written wrongly: say so
        raise WeightsError(f"{path} matches its sha256 but cannot be read as a state dict: {error}") from error


def load_history(name: str, directory: str | Path | None = None) -> list[dict]:
    """The per-epoch training history saved with the shipped weights (verified like the weights)."""
    directory = Path(directory or weights_dir())
    entry = manifest_entry(name, directory)
    if "history_file" not in entry:
        return []
    path = _verified_file(directory / entry["history_file"], entry["history_sha256"], "history file")
    return json.loads(path.read_text())


def load_probe(name: str, directory: str | Path | None = None):
    """The ``evaluate.LinearProbe`` fitted on ``name``'s features and shipped with its weights."""
    from .evaluate import LinearProbe  # evaluate.py imports this module

    return LinearProbe.from_state_dict(load_state(name, directory))


def submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``"encoder."``), with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``module.load_state_dict(state)`` with an error that names the source and the mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first_lines = "\n".join(str(error).splitlines()[:4])
        raise WeightsError(
            f"{source} does not fit {type(module).__name__} as configured in the manifest (wrong architecture "
            f"or an incompatible file):\n{first_lines}"
        ) from error
    return module


def load_pretrained(
    name: str, device: str | torch.device = "cpu", directory: str | Path | None = None, dataset: str | None = None
) -> nn.Module:
    """The frozen, verified encoder of a method or baseline, in eval mode.

    Input: float ``[N, C, H, W]`` in ``[0, 1]``: ``[N, 1, 28, 28]`` for Fashion-MNIST (the default) and
    MNIST, ``[N, 3, 32, 32]`` for CIFAR-10. Output: features ``[N, D]``: the globally pooled output of
    the encoder trunk, before any method head (raw pixels for ``"pixels"``). ``dataset`` names the
    dataset the weights were trained on: they are looked up in its folder, ``weights_dir(dataset)``,
    and loading fails if they were trained on another. Without it, the weights in ``directory``
    (default: Fashion-MNIST's ``weights/``) are loaded, whichever dataset they were trained on.
    """
    directory = Path(directory or weights_dir(dataset or DEFAULT_DATASET))
    entry = manifest_entry(name, directory, dataset)
    state = load_state(name, directory)
    if entry["config"].get("encoder") is None:
        info = dataset_info(trained_on(entry))
        encoder: nn.Module = PixelFeatures(info.channels, info.image_size)
    else:
        encoder = build_encoder(entry["config"]["encoder"])
        load_into(encoder, submodule_state(state, "encoder."), f"{directory / entry['file']} (encoder.*)")
    encoder.eval().requires_grad_(False)
    return encoder.to(device)


def load_method(
    name: str, device: str | torch.device = "cpu", directory: str | Path | None = None, dataset: str | None = None
) -> nn.Module:
    """The whole trained method (encoder and heads, e.g. SimCLR's projector), verified, in eval mode."""
    from .methods import METHOD_CLASSES, build_method

    if name not in METHOD_CLASSES:
        raise ValueError(f"{name!r} has no trainable method class; methods with heads: {', '.join(METHOD_CLASSES)}")
    directory = Path(directory or weights_dir(dataset or DEFAULT_DATASET))
    entry = manifest_entry(name, directory, dataset)
    config = dict(entry["config"])
    if "augment" in config:
        augment = config.pop("augment")
        config["augment_config"] = None if augment is None else AugmentConfig.from_dict(augment)
    method = build_method(name, trained_on(entry), encoder_config=config.pop("encoder"), **config)
    state = {key: value for key, value in load_state(name, directory).items() if not key.startswith("probe.")}
    load_into(method, state, str(directory / entry["file"]))
    return method.eval().requires_grad_(False).to(device)


def publish(
    name: str,
    state: dict[str, torch.Tensor],
    entry: dict,
    history: list[dict] | None = None,
    directory: str | Path | None = None,
) -> dict:
    """Write ``<name>.pth`` (and its history), then record file hashes and ``entry`` in the manifest."""
    check_name(name)
    directory = Path(directory or weights_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pth"
    tmp = path.with_name(path.name + ".tmp")
    torch.save({key: value.detach().cpu().contiguous() for key, value in state.items()}, tmp)
    os.replace(tmp, path)
    entry = {**entry, "file": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    if history:
        history_file = directory / f"{name}.history.json"
        history_file.write_text(json.dumps(history, indent=1) + "\n")
        entry.update(history_file=history_file.name, history_sha256=sha256_file(history_file))
    with manifest_update(directory) as manifest:
        manifest.setdefault("methods", {})[name] = entry
    return entry
