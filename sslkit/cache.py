"""The notebooks' disk cache: frozen features, and the slow deterministic results computed from them
(probe selections, t-SNE maps), kept so that a notebook run again, or the next notebook on the same
encoder, reads them instead of computing them again.

Every file is named by a sha256 of everything its content depends on, so any change to an input
computes afresh and nothing is looked up by a name a person chose. ``$SSLKIT_CACHE`` chooses the
folder (default ``$XDG_CACHE_HOME/sslkit``, that is ``~/.cache/sslkit``); ``off`` turns the cache off.
A file that cannot be read is computed again and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn
import torch

from .files import save_torch_atomically, write_atomically
from .models import PixelFeatures
from .protocol import extract_features

PACKAGE = Path(__file__).resolve().parent
UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def cache_dir(kind: str = "features") -> Path | None:
    """The cache's folder for ``kind`` (``features`` or ``results``): under ``$SSLKIT_CACHE``, else
    ``$XDG_CACHE_HOME/sslkit`` (by default ``~/.cache/sslkit``); None when ``$SSLKIT_CACHE`` is ``off``."""
    chosen = os.environ.get("SSLKIT_CACHE")
    if chosen == "off":
        return None
    root = Path(chosen) if chosen else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sslkit"
    return root / kind


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _feature_key(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device) -> str:
    """sha256 of everything the features depend on: the encoder's class, config and weights, the images,
    the device type and the PyTorch version."""
    config = json.dumps(encoder.config(), sort_keys=True) if hasattr(encoder, "config") else ""
    digest = hashlib.sha256(f"{type(encoder).__qualname__} {config} {device.type} {torch.__version__}".encode())
    for name, tensor in [*encoder.state_dict().items(), ("images", images)]:
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _load(path: Path):
    """The file's content, or None when there is none or it cannot be read (a truncated or foreign file)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except UNREADABLE:
        return None


def frozen_features(encoder: torch.nn.Module, images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """``protocol.extract_features``, kept on disk.

    The file is named by a sha256 of the encoder's class and weights, the images, the device type and
    the PyTorch version. Raw pixels are not kept: they cost nothing to compute (HOG's descriptors are:
    about a minute for 70,000 images).
    """
    device = torch.device(device)
    folder = cache_dir("features")
    if folder is None or isinstance(encoder, PixelFeatures):
        return extract_features(encoder, images, device=device)
    path = folder / f"{_feature_key(encoder, images, device)}.pt"
    features = _load(path)
    if features is None:
        features = extract_features(encoder, images, device=device)
        save_torch_atomically(features, path)
    return features


@functools.cache
def source_digest() -> str:
    """sha256 of sslkit's source files: a cached result is computed again after any change to the code."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _hash_value(digest, name: str, value) -> None:
    """Add an argument of a remembered call to ``digest``: tensors and arrays by their bytes, plain
    values (numbers, strings, None) by their repr, tuples, lists and dicts element by element."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        _hash_tensor(digest, name, value)
    elif value is None or isinstance(value, bool | int | float | str):
        digest.update(f"{name} {type(value).__name__} {value!r}".encode())
    elif isinstance(value, tuple | list):
        digest.update(f"{name} {type(value).__name__} {len(value)}".encode())
        for index, item in enumerate(value):
            _hash_value(digest, f"{name}[{index}]", item)
    elif isinstance(value, dict):
        digest.update(f"{name} dict {len(value)}".encode())
        for key in sorted(value, key=repr):
            _hash_value(digest, f"{name}[{key!r}]", value[key])
    else:
        raise TypeError(
            f"remembered: cannot name a cache file by {name} of type {type(value).__name__}; pass tensors, "
            "arrays, numbers, strings, or tuples, lists and dicts of them"
        )


def _result_key(compute: Callable, inputs: tuple, settings: dict) -> str:
    versions = f"{torch.__version__} {np.__version__} {sklearn.__version__} {platform.python_version()}"
    digest = hashlib.sha256(f"{compute.__module__}.{compute.__qualname__} {source_digest()} {versions}".encode())
    _hash_value(digest, "inputs", inputs)
    _hash_value(digest, "settings", settings)
    return digest.hexdigest()


def remembered(compute: Callable, *inputs, **settings):
    """``compute(*inputs, **settings)``, kept on disk: the second call with the same arguments reads
    the result instead of computing it.

    ``compute`` must be a function of sslkit, so that the file's name (a sha256 of its name, sslkit's
    source, the library versions and every argument) covers everything the result depends on; and
    deterministic, so that reading the result gives what computing it would. The result must be a
    NumPy array or what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, and
    tuples, lists and dicts of them.
    """
    if not compute.__module__.startswith("sslkit.") or "<locals>" in compute.__qualname__:
        raise ValueError(
            f"remembered: {compute.__module__}.{compute.__qualname__} is not a module-level function of "
            "sslkit, so a change to its code would not name a new cache file; call it directly"
        )
    folder = cache_dir("results")
    if folder is None:
        return compute(*inputs, **settings)
    path = folder / f"{_result_key(compute, inputs, settings)}.pt"
    stored = _load(path)
    if not isinstance(stored, dict) or not stored.keys() & {"value", "array"}:
        result = compute(*inputs, **settings)
        stored = {"array": torch.from_numpy(result)} if isinstance(result, np.ndarray) else {"value": result}
        buffer = io.BytesIO()
        torch.save(stored, buffer)
        try:  # what could not be read back is never written
            torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        except pickle.UnpicklingError as error:
            raise TypeError(
                f"remembered: {compute.__qualname__} returned a {type(result).__name__} that cannot be kept: "
                "return an array, tensors, numbers, strings, or tuples, lists and dicts of them"
            ) from error
        write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))  # the bytes checked above
    return stored["array"].numpy() if "array" in stored else stored["value"]
