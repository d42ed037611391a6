"""The datasets as uint8 tensors, the validation split and the low-label subsets.

Fashion-MNIST is the series' dataset; MNIST and CIFAR-10 (with 10 classes of CIFAR-100 as its
transfer task) are there for readers who want to try the same methods elsewhere (``--dataset``).
A whole dataset is at most 150 MB as uint8 (CIFAR-10), so it lives on the training device as one
tensor and batches are indexed from it (see ``train.py``); no ``DataLoader`` sits in the hot path.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VALIDATION_SIZE = 5_000
SPLIT_SEED = 0

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What the code needs to know about a dataset: where torchvision keeps it, its image shape and
    pixel statistics (the encoders normalise with them), and its class names."""

    name: str  # the value of --dataset
    title: str
    torchvision_class: str  # the class in torchvision.datasets that downloads it
    folder: str  # torchvision's folder under a data root, holding the files of ``files``
    files: dict  # split -> the file names of that split in ``folder``
    channels: int
    image_size: int
    sizes: dict  # split -> number of images
    mean: tuple[float, ...]  # per channel, of the training pixels in [0, 1]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the encoders see it."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of one uint8 image as ``load_dataset`` returns it: ``(H, W)`` grey, ``(C, H, W)`` colour."""
        return self.shape[1:] if self.channels == 1 else self.shape


CIFAR100_CLASS_NAMES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)  # fine labels, in the order of the dataset's label numbers

DATASETS = {
    info.name: info
    for info in (
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST",
            "FashionMNIST",
            "FashionMNIST/raw",
            _IDX_FILES,
            1,
            28,
            {"train": 60_000, "test": 10_000},
            (0.2860,),
            (0.3530,),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ),
        DatasetInfo(
            "mnist",
            "MNIST",
            "MNIST",
            "MNIST/raw",
            _IDX_FILES,
            1,
            28,
            {"train": 60_000, "test": 10_000},
            (0.1307,),
            (0.3081,),
            tuple(str(digit) for digit in range(10)),
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10",
            "CIFAR10",
            "cifar-10-batches-py",
            {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
            3,
            32,
            {"train": 50_000, "test": 10_000},
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100",
            "CIFAR100",
            "cifar-100-python",
            {"train": ("train",), "test": ("test",)},
            3,
            32,
            {"train": 50_000, "test": 10_000},
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            CIFAR100_CLASS_NAMES,
        ),
    )
}
DEFAULT_DATASET = "fashion-mnist"
# The datasets a method can be pretrained on (--dataset); CIFAR-100 is CIFAR-10's transfer task only.
PRETRAIN_DATASETS = ("fashion-mnist", "mnist", "cifar10")
FASHION_MNIST = DATASETS[DEFAULT_DATASET]  # what the notebooks show: class names, shape, pixel statistics


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable."""


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name`` (``"fashion-mnist"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``)."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(PRETRAIN_DATASETS)} "
            "(and cifar100, the transfer task of cifar10)"
        )
    return DATASETS[name]


def candidate_dirs(dataset: str = DEFAULT_DATASET) -> list[Path]:
    """The folders searched for a dataset's files, in order.

    Each data root (``$SSLKIT_DATA``, ``./data``, the repository's ``data/``) is searched in
    torchvision's own layout (``MNIST/raw``, ``cifar-10-batches-py``, ...). Fashion-MNIST's IDX
    files may also lie directly in a root, and the Debian package puts them in
    ``/usr/share/datasets/fashion-mnist``.
    """
    info = dataset_info(dataset)
    roots = [Path(os.environ["SSLKIT_DATA"])] if os.environ.get("SSLKIT_DATA") else []
    roots += [Path.cwd() / "data", REPO_DATA_DIR]
    folders = []
    for root in roots:
        folders += [root, root / info.folder] if dataset == DEFAULT_DATASET else [root / info.folder]
    if dataset == DEFAULT_DATASET:
        folders.append(DEBIAN_DATA_DIR)
    unique = []
    for folder in folders:
        if folder.resolve() not in [u.resolve() for u in unique]:
            unique.append(folder)
    return unique


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_split(info: DatasetInfo, split: str, folders: list[Path]) -> list[Path] | None:
    for folder in folders:
        files = [_find_file(folder, name) for name in info.files[split]]
        if all(files):
            return files
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


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing to decode bytes stored with the codec {encoding!r}")
    return text.encode("latin1")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and refuses everything else.

    CIFAR's "python version" is a set of pickled dicts. A pickle can name any importable callable
    and run it while loading, so a file that names anything but numpy's array constructors is
    refused instead of trusted.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes: text encoded as latin-1
            return _latin1_encode
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists and numpy arrays"
        )


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch → uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} is not a CIFAR batch in torchvision's format ({error!r}); delete the folder and fetch it again"
        ) from error
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
        raise ValueError(
            f"{path} does not hold 3072 bytes per image with one label each "
            f"(data {images.shape}, labels {labels.shape}); delete the folder and fetch it again"
        )
    return images.reshape(-1, 3, 32, 32), labels


def _download(info: DatasetInfo, split: str) -> list[Path] | None:
    """Let torchvision download the dataset into the repository's data/ folder (it checks each file's
    md5); raises what torchvision raised when that fails."""
    import torchvision.datasets

    getattr(torchvision.datasets, info.torchvision_class)(str(REPO_DATA_DIR), train=split == "train", download=True)
    return _find_split(info, split, [REPO_DATA_DIR / info.folder])


def _not_found_message(info: DatasetInfo, split: str, searched: list[Path], download_failure: str | None) -> str:
    places = "\n".join(f"  - {folder}" for folder in searched)
    tried = f"and torchvision could not download it ({download_failure}).\n" if download_failure else ""
    online = (
        f"run again with network access (on Colab it just works) and torchvision.datasets."
        f"{info.torchvision_class} downloads it into {REPO_DATA_DIR}"
    )
    if info.name == DEFAULT_DATASET:
        ways = (
            "  1. Debian/Ubuntu, offline-friendly: sudo apt-get install dataset-fashion-mnist\n"
            "     (installs the IDX files into /usr/share/datasets/fashion-mnist), or copy the four\n"
            "     *-ubyte.gz files into ./data or a folder named by $SSLKIT_DATA;\n"
            f"  2. online: {online}."
        )
    else:
        ways = (
            f"  1. online: {online};\n"
            f"  2. offline: copy torchvision's folder {info.folder}/ (from a machine where "
            f"torchvision.datasets.{info.torchvision_class}(root, download=True) ran) into ./data\n"
            "     or into a folder named by $SSLKIT_DATA."
        )
    return f"{info.title} ({split}) was not found. Searched:\n{places}\n{tried}Get it in one of two ways:\n{ways}"


def locate(dataset: str, split: str, download: bool = True) -> list[Path]:
    """The files of one split of ``dataset``, found in ``candidate_dirs`` or downloaded by torchvision
    (when ``download``); ``DataNotFoundError`` naming the places searched when neither works."""
    info = dataset_info(dataset)
    if split not in info.files:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    searched = candidate_dirs(dataset)
    found, download_failure = _find_split(info, split, searched), None
    if found is None and download:
        try:
            found = _download(info, split)
        except Exception as error:  # no network, a blocked host, a corrupted file, no torchvision
            download_failure = f"{type(error).__name__}: {error}"
        if found is None and download_failure is None:
            download_failure = "offline?"
    if found is None:
        raise DataNotFoundError(_not_found_message(info, split, searched, download_failure))
    return found


def load_dataset(
    dataset: str = DEFAULT_DATASET, split: str = "train", download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset from disk, or let torchvision download it.

    Args:
        dataset: ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"`` (see ``DATASETS``).
        split: ``"train"`` or ``"test"``.
        download: when the files are in none of the folders of ``candidate_dirs``, let torchvision
            download them into the repository's ``data/`` folder (what Colab users get).

    Returns:
        ``(images, labels)``: uint8 images, ``[N, 28, 28]`` for the grey datasets and
        ``[N, 3, 32, 32]`` for CIFAR, and int64 labels ``[N]`` (CIFAR-100: its 100 fine labels).
    """
    info = dataset_info(dataset)
    found = locate(dataset, split, download)
    if info.channels == 1:
        images, labels = _read_idx(found[0]), _read_idx(found[1]).astype(np.int64)
    else:
        label_key = "fine_labels" if dataset == "cifar100" else "labels"
        batches = [_read_cifar_batch(path, label_key) for path in found]
        images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    expected = info.stored_shape
    if images.shape[1:] != expected or len(images) != len(labels):
        raise ValueError(
            f"{found[0].parent} does not hold {info.title} images of shape {expected} with one label "
            f"each (images {images.shape}, labels {labels.shape})"
        )
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(info.class_names):
        raise ValueError(f"{found[-1]} has labels outside 0..{len(info.class_names) - 1}; delete it and fetch it again")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def load_fashion_mnist(split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``load_dataset("fashion-mnist", split)``: uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``."""
    return load_dataset(DEFAULT_DATASET, split, download)


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
    """uint8 ``[N, H, W]`` (grey) or ``[N, C, H, W]`` → float ``[N, C, H, W]`` in ``[0, 1]``, on the same device."""
    if images.ndim not in (3, 4):
        raise ValueError(f"to_float expects uint8 images [N, H, W] or [N, C, H, W], got {tuple(images.shape)}")
    return (images.unsqueeze(1) if images.ndim == 3 else images).float().div_(255.0)


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits, the transfer task of the grey datasets, drawn as
    Fashion-MNIST is.

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


# The transfer task of CIFAR-10 (the grey datasets use the digits): the first ten
# fine classes of CIFAR-100, none of which is a CIFAR-10 class.
CIFAR100_TRANSFER_CLASSES = tuple(range(10))


def load_cifar100_transfer(
    classes: tuple[int, ...] = CIFAR100_TRANSFER_CLASSES, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The images of ``classes`` from both splits of CIFAR-100 (600 per class), relabelled 0, 1, ...

    Returns:
        ``(images, labels, names)``: uint8 ``[N, 3, 32, 32]``, int64 ``[N]`` in ``0..len(classes)-1``
        (in the order of ``classes``), and the classes' names.
    """
    parts = [load_dataset("cifar100", split, download) for split in ("train", "test")]
    images, fine_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    chosen = torch.tensor(classes)
    keep = torch.isin(fine_labels, chosen)
    relabel = torch.full((len(CIFAR100_CLASS_NAMES),), -1, dtype=torch.long)
    relabel[chosen] = torch.arange(len(classes))
    return images[keep], relabel[fine_labels[keep]], tuple(CIFAR100_CLASS_NAMES[c] for c in classes)
