"""Fashion-MNIST as uint8 tensors, the validation split and the low-label subsets.

The whole dataset is 47 MB as uint8, so it lives on the training device as one tensor and batches
are indexed from it (see ``train.py``); no ``DataLoader`` sits in the hot path.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
VALIDATION_SIZE = 5_000
SPLIT_SEED = 0

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataNotFoundError(FileNotFoundError):
    """Fashion-MNIST is neither on disk nor downloadable."""


def candidate_dirs() -> list[Path]:
    """The folders searched for the IDX files, in order (DESIGN.md §2)."""
    dirs = []
    if os.environ.get("SSLKIT_DATA"):
        dirs.append(Path(os.environ["SSLKIT_DATA"]))
    dirs += [Path.cwd() / "data", REPO_DATA_DIR, DEBIAN_DATA_DIR]
    unique = []
    for d in dirs:
        for folder in (d, d / "FashionMNIST" / "raw"):  # the second is torchvision's layout
            if folder.resolve() not in [u.resolve() for u in unique]:
                unique.append(folder)
    return unique


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the format of the original MNIST distribution), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file; delete it and fetch it again")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {data.size} bytes of data but its header says {shape}: "
            "the file is truncated; delete it and fetch it again"
        )
    return data.reshape(shape)


def _download(split: str) -> tuple[Path, Path] | None:
    """Let torchvision download the dataset into the repository's data/ folder; None if offline."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(REPO_DATA_DIR), train=split == "train", download=True)
    except Exception:  # no network, blocked host, or torchvision missing: report below
        return None
    folder = REPO_DATA_DIR / "FashionMNIST" / "raw"
    files = [_find_file(folder, stem) for stem in _FILE_STEMS[split]]
    return (files[0], files[1]) if all(files) else None


def load_fashion_mnist(split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        download: when the files are in none of the searched folders, let torchvision download
            them into the repository's ``data/`` folder (what Colab users get).

    Returns:
        ``(images, labels)``: uint8 tensor ``[N, 28, 28]`` and int64 tensor ``[N]``.
    """
    if split not in _FILE_STEMS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    searched = candidate_dirs()
    found = None
    for folder in searched:
        files = [_find_file(folder, stem) for stem in _FILE_STEMS[split]]
        if all(files):
            found = files
            break
    if found is None and download:
        found = _download(split)
    if found is None:
        places = "\n".join(f"  - {folder}" for folder in searched)
        raise DataNotFoundError(
            f"Fashion-MNIST ({split}) was not found. Searched:\n{places}\n"
            + ("and torchvision could not download it (offline?).\n" if download else "")
            + "Get it in one of two ways:\n"
            "  1. Debian/Ubuntu, offline-friendly: sudo apt-get install dataset-fashion-mnist\n"
            "     (installs the IDX files into /usr/share/datasets/fashion-mnist), or copy the four\n"
            "     *-ubyte.gz files into ./data or a folder named by $SSLKIT_DATA;\n"
            "  2. online: run again with network access and torchvision downloads it into data/."
        )
    images = torch.from_numpy(_read_idx(found[0]).copy())
    labels = torch.from_numpy(_read_idx(found[1]).astype(np.int64))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(
            f"{found[0]} and {found[1]} do not hold 28x28 images with one label each "
            f"(images {tuple(images.shape)}, labels {tuple(labels.shape)})"
        )
    return images, labels


def _stratified_choice(labels: torch.Tensor, per_class: dict[int, int], seed: int) -> torch.Tensor:
    """Pick ``per_class[c]`` indices of every class ``c`` at random, seeded; sorted result."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, count in sorted(per_class.items()):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:count]])
    return torch.cat(chosen).sort().values


def validation_split(
    labels: torch.Tensor, size: int = VALIDATION_SIZE, seed: int = SPLIT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split training indices into ``(train_indices, validation_indices)``, stratified and seeded.

    The validation part has ``size`` images with the class proportions of ``labels``. Every
    choice in the series (probe regularisation, learning rates, temperatures, checkpoints) is
    made on it; the test set only reports.
    """
    if not 0 < size < len(labels):
        raise ValueError(f"validation size must be between 1 and {len(labels) - 1}, got {size}")
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = _proportional_quotas(counts, size)
    val = _stratified_choice(labels, dict(zip(classes.tolist(), quotas, strict=True)), seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def low_label_subset(labels: torch.Tensor, fraction: float, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Indices of a stratified, seeded ``fraction`` of ``labels`` (e.g. 0.01 or 0.1).

    The same ``(labels, fraction, seed)`` always gives the same subset, so every method is
    fine-tuned on identical images.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = _proportional_quotas(counts, max(len(classes), round(fraction * len(labels))))
    return _stratified_choice(labels, dict(zip(classes.tolist(), quotas, strict=True)), seed)


def _proportional_quotas(counts: torch.Tensor, total: int) -> list[int]:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainders), at least 1 each."""
    exact = counts.double() * total / counts.sum()
    quotas = exact.floor().long().clamp(min=1)
    remainder = total - int(quotas.sum())
    if remainder > 0:
        order = torch.argsort(exact - exact.floor(), descending=True)
        quotas[order[:remainder]] += 1
    return quotas.tolist()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` → float ``[N, 1, 28, 28]`` in ``[0, 1]``, on the same device."""
    return images.unsqueeze(1).float().div_(255.0)


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits, the transfer task (DESIGN.md §5), as Fashion-MNIST looks.

    The 8×8 images ship with scikit-learn (no download). Their 17 grey levels (0 to 16, ink high)
    are scaled to [0, 1] and upsampled bilinearly to 28×28, then stored as uint8 like Fashion-MNIST:
    bright ink on a dark background.

    Returns:
        ``(images, labels)``: uint8 ``[1797, 28, 28]`` and int64 ``[1797]`` with digits 0 to 9.
    """
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    return images.squeeze(1).mul(255).round().clamp(0, 255).to(torch.uint8), torch.from_numpy(digits.target).long()
