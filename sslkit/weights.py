"""Shipped weights: find, verify, load and publish them, with ``manifest.json`` as their record.

Each ``<name>.pth`` is a plain state dict of tensors (loaded with ``weights_only=True``, so nothing
is ever unpickled): the method's modules under their own prefixes (``encoder.``, ``projector.``,
...) and the fitted linear probe under ``probe.``. The manifest holds, per name, the file's sha256
and size, the model and training configuration, the command, device and wall time of the training
run, and every result measured on the weights. It is the single source of truth for numbers: the
README table and the notebooks read it.

Every function names weights the same way: ``(name, dataset, root)``. ``root`` is
``$SSLKIT_WEIGHTS`` or the repository's ``weights/`` unless given; Fashion-MNIST's weights live in
the root itself, those of another dataset in ``root/<dataset>/`` with a manifest of their own.
"""

from __future__ import annotations

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

from .data import DEFAULT_DATASET, dataset_info
from .files import save_torch_atomically, sha256_file, write_text_atomically
from .methods import SPECS, Method, method_from_config, spec
from .models import build_encoder
from .protocol import LinearProbe, chosen_validation_accuracy

MANIFEST_NAME = "manifest.json"


class WeightsError(ValueError):
    """Shipped weights are missing, corrupt, tampered with or do not fit the architecture."""


def weights_dir(dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> Path:
    """The folder of ``dataset``'s weights: ``root`` (default ``$SSLKIT_WEIGHTS``, else the repository's
    ``weights/``, found from the package, not the working directory), or its subfolder ``root/<dataset>/``
    for a dataset other than Fashion-MNIST."""
    dataset_info(dataset)  # a clear error for unknown names
    if root is None:
        root = os.environ.get("SSLKIT_WEIGHTS") or Path(__file__).resolve().parent.parent / "weights"
    return Path(root) if dataset == DEFAULT_DATASET else Path(root) / dataset


def load_manifest(dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> dict:
    """The manifest as a dict ``{"methods": {name: entry}}``; empty when there is none yet."""
    path = weights_dir(dataset, root) / MANIFEST_NAME
    if not path.exists():
        return {"methods": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path} is not valid JSON ({error}); restore it with `git checkout {path}`") from error


def save_manifest(manifest: dict, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> None:
    path = weights_dir(dataset, root) / MANIFEST_NAME
    write_text_atomically(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@contextmanager
def manifest_update(dataset: str = DEFAULT_DATASET, root: str | Path | None = None):
    """Read, change and write the manifest under an exclusive lock: runs that finish at the same time
    (a sweep recording a run while a training publishes) never lose each other's entries.

    Yields the manifest dict; it is saved when the ``with`` block ends without an error.
    """
    directory = weights_dir(dataset, root)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / (MANIFEST_NAME + ".lock"), "w") as lock:
        if fcntl is not None:  # POSIX; elsewhere concurrent runs must not write the same manifest
            fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(dataset, root)
        yield manifest
        save_manifest(manifest, dataset, root)


def manifest_entry(name: str, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> dict:
    """The manifest entry of ``name``'s weights for ``dataset``, with a clear error if there are none yet."""
    spec(name)  # a clear error for unknown names
    directory = weights_dir(dataset, root)
    entries = load_manifest(dataset, root)["methods"]
    if name not in entries:
        shipped = ", ".join(sorted(entries)) or "none"
        option = "" if dataset == DEFAULT_DATASET else f" --dataset {dataset}"
        raise WeightsError(
            f"no weights for {name!r} are in {directory} yet (there: {shipped}); "
            f"train them with `python -m sslkit pretrain {name}{option}`"
        )
    trained_on = entries[name].get("dataset")
    if trained_on is None:
        raise WeightsError(
            f"the manifest entry of {name!r} in {directory} does not say which dataset its weights were trained on; "
            f"republish them with `{entries[name].get('command', f'python -m sslkit pretrain {name}')}`"
        )
    if trained_on != dataset:
        raise WeightsError(
            f"the weights of {name!r} in {directory} were trained on {dataset_info(trained_on).title}, not on "
            f"{dataset_info(dataset).title}; move them to {weights_dir(trained_on, root)}"
        )
    return entries[name]


def shipped_names(dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> list[str]:
    """The names with weights for ``dataset``, in the registry's order (methods, then baselines)."""
    entries = load_manifest(dataset, root)["methods"]
    return [name for name in SPECS if name in entries]


def record_results(name: str, key: str, value, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> None:
    """Set ``results[key]`` in the manifest entry of ``name`` (measured later than training, e.g.
    label efficiency); the weights file and its hash are unchanged."""
    manifest_entry(name, dataset, root)  # a clear error when nothing is shipped under this name
    with manifest_update(dataset, root) as manifest:
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


def load_state(name: str, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The verified state dict of ``name``'s shipped weights (sha256 checked against the manifest)."""
    entry = manifest_entry(name, dataset, root)
    path = _verified_file(weights_dir(dataset, root) / entry["file"], entry["sha256"], "weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the sha matched, so this is a file written wrongly: say so
        raise WeightsError(f"{path} matches its sha256 but cannot be read as a state dict: {error}") from error


def load_history(name: str, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> list[dict]:
    """The per-epoch training history saved with the shipped weights (verified like the weights)."""
    entry = manifest_entry(name, dataset, root)
    if "history_file" not in entry:
        return []
    path = _verified_file(weights_dir(dataset, root) / entry["history_file"], entry["history_sha256"], "history file")
    return json.loads(path.read_text())


def load_probe(name: str, dataset: str = DEFAULT_DATASET, root: str | Path | None = None) -> LinearProbe:
    """The linear probe fitted on ``name``'s features and shipped with its weights."""
    return LinearProbe.from_state_dict(load_state(name, dataset, root))


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
    name: str, device: str | torch.device = "cpu", dataset: str = DEFAULT_DATASET, root: str | Path | None = None
) -> nn.Module:
    """The frozen, verified encoder of a method or baseline trained on ``dataset``, in eval mode.

    Input: float ``[N, C, H, W]`` in ``[0, 1]``: ``[N, 1, 28, 28]`` for Fashion-MNIST (the default) and
    MNIST, ``[N, 3, 32, 32]`` for CIFAR-10. Output: features ``[N, D]``: the globally pooled output of
    the encoder trunk, before any method head (MAE: the mean of its tokens; ``"pixels"``: the pixels).
    """
    entry = manifest_entry(name, dataset, root)
    state = submodule_state(load_state(name, dataset, root), "encoder.")
    encoder = build_encoder(entry["config"]["encoder_config"])
    load_into(encoder, state, f"{weights_dir(dataset, root) / entry['file']} (encoder.*)")
    return encoder.eval().requires_grad_(False).to(device)


def load_method(
    name: str, device: str | torch.device = "cpu", dataset: str = DEFAULT_DATASET, root: str | Path | None = None
) -> Method:
    """The whole trained method (encoder and heads, e.g. SimCLR's projector), verified, in eval mode."""
    entry = manifest_entry(name, dataset, root)
    method = method_from_config(name, entry["config"])
    state = {key: value for key, value in load_state(name, dataset, root).items() if not key.startswith("probe.")}
    load_into(method, state, str(weights_dir(dataset, root) / entry["file"]))
    return method.eval().requires_grad_(False).to(device)


def publish(
    name: str,
    state: dict[str, torch.Tensor],
    entry: dict,
    history: list[dict] | None = None,
    dataset: str = DEFAULT_DATASET,
    root: str | Path | None = None,
) -> dict:
    """Write ``<name>.pth`` (and its history), then record file hashes and ``entry`` in the manifest."""
    spec(name)
    directory = weights_dir(dataset, root)
    path = save_torch_atomically(
        {key: value.detach().cpu().contiguous() for key, value in state.items()}, directory / f"{name}.pth"
    )
    entry = {
        **entry,
        "dataset": dataset,
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
    }
    if history:
        history_file = write_text_atomically(directory / f"{name}.history.json", json.dumps(history, indent=1) + "\n")
        entry.update(history_file=history_file.name, history_sha256=sha256_file(history_file))
    with manifest_update(dataset, root) as manifest:
        methods = manifest.setdefault("methods", {})
        entry["results"] = carried_over(methods.get(name), entry.get("results", {}))
        methods[name] = entry
    return entry


def carried_over(replaced: dict | None, results: dict) -> dict:
    """``results`` of a newly published run, with what the entry it replaces recorded that is not a
    measurement of the replaced weights: the recipe search and the sweeps (short runs of their own; a
    sweep of the new run wins over one of the same name), and ``previous_run``, a summary of the replaced
    run, so that a new recipe can be compared with the one it replaced. The rest (probe, fine-tuning,
    replicates, costs, ...) described the replaced weights and goes with them."""
    if not replaced or "results" not in replaced:
        return results
    old = replaced["results"]
    kept = {key: old[key] for key in ("search",) if key in old}
    sweeps = {**old.get("sweeps", {}), **results.get("sweeps", {})}
    if sweeps:
        kept["sweeps"] = sweeps
    if "train" in replaced:  # a trained run, not a baseline
        probe = old["linear_probe"]
        kept["previous_run"] = {
            "sha256": replaced["sha256"],
            "config": replaced["config"],
            "train": replaced["train"],
            "linear_probe": probe["test_accuracy"],
            "validation_accuracy": chosen_validation_accuracy(probe),
            "knn": old["knn"]["test_accuracy"],
            "device": replaced.get("device"),
        }
    return {**results, **kept}
