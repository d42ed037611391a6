"""MNIST and CIFAR-10 (``--dataset``), offline: the test writes fake datasets in torchvision's own
on-disk formats (IDX files under ``MNIST/raw``, pickled batches under ``cifar-10-batches-py`` and
``cifar-100-python``), and they go through the same loaders, models and commands as Fashion-MNIST.
Nothing is downloaded: every test runs with torchvision's download replaced by a failure."""

import gzip
import json
import pickle
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit import data, load_pretrained
from sslkit.augment import SIMCLR_AUGMENT, SUPERVISED_AUGMENT
from sslkit.cli import main
from sslkit.data import DataNotFoundError, load_cifar100_transfer, load_dataset, to_float
from sslkit.methods import TRAINABLE, build_method
from sslkit.models import RESNET_CONFIG, VIT_CONFIG, ResNetEncoder, build_encoder, encoder_config
from sslkit.transfer import ImageNetResNet18, ReferenceWeightsError, load_imagenet_resnet18
from sslkit.weights import WeightsError

MNIST_SIZES = {"train": 300, "t10k": 100}
CIFAR10_BATCH = 40  # images per batch file: 5 training batches and one test batch
CIFAR100_PER_CLASS = {"train": 10, "test": 2}


def mnist_pixel(index: int) -> int:
    return (7 * index) % 256


def cifar_pixel(index: int, channel: int) -> int:
    return (3 * index + 50 * channel) % 256


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def cifar_batch(first: int, count: int, labels: list[int], label_key: str) -> dict:
    """A batch as CIFAR's python version stores it: rows of 3072 bytes, the R plane, then G, then B."""
    rows = np.stack(
        [
            np.concatenate([np.full(1024, cifar_pixel(i, c), np.uint8) for c in range(3)])
            for i in range(first, first + count)
        ]
    )
    rows[:, 1] = np.random.default_rng(first).integers(0, 256, count)  # some texture, so the views differ
    return {"batch_label": f"fake batch from {first}", label_key: labels, "data": rows}


def write_fake_datasets(root) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in MNIST_SIZES.items():
        images = np.stack([np.full((28, 28), mnist_pixel(i)) for i in range(n)])
        images[:, 5:20, 5:20] = rng.integers(0, 256, (n, 15, 15))
        suffix = "" if stem == "train" else ".gz"  # torchvision keeps both forms; the loader reads either
        write_idx(raw / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{stem}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        first = b * CIFAR10_BATCH
        labels = [(first + i) % 10 for i in range(CIFAR10_BATCH)]
        with open(folder / name, "wb") as f:
            pickle.dump(cifar_batch(first, CIFAR10_BATCH, labels, "labels"), f, protocol=2)
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, per_class in CIFAR100_PER_CLASS.items():
        n = 100 * per_class
        batch = cifar_batch(0, n, [i % 100 for i in range(n)], "fine_labels")
        batch["coarse_labels"] = [i % 20 for i in range(n)]
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f)  # Python 3's protocol; the CIFAR-10 batches use protocol 2, like the originals


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_fake_datasets(root)
    return root


def no_download(info, split):
    raise AssertionError(f"a test tried to download {info.title}")


@pytest.fixture(autouse=True)
def offline(fake_root, tmp_path, monkeypatch):
    """The fake datasets in $SSLKIT_DATA, the repository's data/ out of reach, no download."""
    monkeypatch.setenv("SSLKIT_DATA", str(fake_root))
    monkeypatch.setenv("SSLKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_download", no_download)


# ------------------------------------------------------------------------------------------- loaders


def test_mnist_loads_from_torchvisions_folder_plain_or_gzipped():
    for split, stem in (("train", "train"), ("test", "t10k")):
        images, labels = load_dataset("mnist", split)
        n = MNIST_SIZES[stem]
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(n)]
        assert [int(images[i, 0, 0]) for i in range(n)] == [mnist_pixel(i) for i in range(n)]
    assert to_float(images).shape == (100, 1, 28, 28)


def test_cifar10_batches_are_concatenated_in_order_with_channels_first():
    images, labels = load_dataset("cifar10", "train")
    n = 5 * CIFAR10_BATCH
    assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(n)]
    for i in (0, CIFAR10_BATCH + 1, n - 1):  # first batch, second batch, last batch
        for c in range(3):
            assert int(images[i, c, 31, 31]) == cifar_pixel(i, c)  # the R, G and B planes, in that order
    test_images, _ = load_dataset("cifar10", "test")
    assert int(test_images[0, 2, 5, 5]) == cifar_pixel(n, 2)  # the test batch follows the five
    floats = to_float(test_images)
    assert floats.shape == (CIFAR10_BATCH, 3, 32, 32) and 0 <= floats.min() and floats.max() <= 1


def test_the_cifar100_transfer_task_is_ten_classes_of_both_splits_relabelled():
    images, labels, names = load_cifar100_transfer()
    per_class = sum(CIFAR100_PER_CLASS.values())
    assert names == ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle")
    assert images.shape == (10 * per_class, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [per_class] * 10
    fine_images, fine_labels = load_dataset("cifar100", "train")
    first_bee = int(torch.nonzero(fine_labels == 6)[0])
    assert torch.equal(images[torch.nonzero(labels == 6)[0, 0]], fine_images[first_bee])
    assert len(data.CIFAR100_CLASS_NAMES) == 100


@pytest.mark.parametrize(
    "dataset,folder,torchvision_class", [("mnist", "MNIST/raw", "MNIST"), ("cifar10", "cifar-10-batches-py", "CIFAR10")]
)
def test_a_dataset_neither_on_disk_nor_downloadable_gets_one_clear_error(
    tmp_path, monkeypatch, dataset, folder, torchvision_class
):
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "_download", lambda info, split: None)  # offline
    with pytest.raises(DataNotFoundError) as error:
        load_dataset(dataset, "train")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / folder) in message and "could not download it (offline?)" in message
    assert f"torchvision.datasets.{torchvision_class}" in message and f"copy torchvision's folder {folder}/" in message


def test_fashion_mnist_files_in_a_data_root_are_not_taken_for_mnist(tmp_path, monkeypatch):
    flat = tmp_path / "flat"
    flat.mkdir()
    for stem, n in MNIST_SIZES.items():
        write_idx(flat / f"{stem}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(flat / f"{stem}-labels-idx1-ubyte.gz", np.zeros(n))
    monkeypatch.setenv("SSLKIT_DATA", str(flat))
    monkeypatch.setattr(data, "_download", lambda info, split: None)
    assert load_dataset("fashion-mnist", "test")[0].shape == (100, 28, 28)  # flat IDX files are Fashion-MNIST's
    with pytest.raises(DataNotFoundError, match="MNIST/raw"):
        load_dataset("mnist", "test")


def test_unknown_dataset_and_split_names_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of fashion-mnist, mnist, cifar10"):
        load_dataset("cifar", "train")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("cifar10", "validation")


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_a_cifar_pickle_that_names_other_code_is_refused_before_running_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "evil" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": RunsCode(), "labels": [0]}, f, protocol=2)
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "evil"))
    with pytest.raises(ValueError, match="refusing to load (__builtin__|builtins).print"):
        load_dataset("cifar10", "test")
    assert "this ran" not in capsys.readouterr().out


def test_a_cifar_batch_of_the_wrong_size_is_reported(tmp_path, monkeypatch):
    folder = tmp_path / "short" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3000), np.uint8), "labels": [0, 1, 2, 3]}, f, protocol=2)
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "short"))
    with pytest.raises(ValueError, match="does not hold 3072 bytes per image"):
        load_dataset("cifar10", "test")


# ------------------------------------------------------------------------------------------- models


def test_the_fashion_mnist_configs_are_the_shipped_ones_and_others_take_the_datasets_shape():
    shipped = json.loads((Path(__file__).resolve().parent.parent / "weights" / "manifest.json").read_text())["methods"]
    resnet, vit = encoder_config(), encoder_config("fashion-mnist", "vit")
    assert resnet == shipped["simclr"]["config"]["encoder_config"] and vit == shipped["mae"]["config"]["encoder_config"]
    fashion = {"in_channels": 1, "image_size": 28, "mean": [0.286], "std": [0.353]}
    assert resnet == {**RESNET_CONFIG, **fashion} and vit == {**VIT_CONFIG, **fashion}
    cifar = encoder_config("cifar10")
    assert cifar["in_channels"] == 3 and cifar["image_size"] == 32 and len(cifar["mean"]) == 3
    assert (
        encoder_config("cifar10", "vit")["image_size"] == 32
        and build_encoder(encoder_config("cifar10", "vit")).num_patches == 64
    )
    assert encoder_config("mnist")["in_channels"] == 1 and encoder_config("mnist")["mean"] == [0.1307]
    assert build_encoder(cifar).config() == cifar  # the config round-trips through the manifest


def test_the_encoder_normalises_each_channel_with_the_datasets_statistics():
    torch.manual_seed(0)
    encoder = build_encoder(encoder_config("cifar10")).eval()
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(data.DATASETS["cifar10"].mean).view(1, 3, 1, 1)
    std = torch.tensor(data.DATASETS["cifar10"].std).view(1, 3, 1, 1)
    by_hand = encoder.stages(encoder.stem((x - mean) / std)).mean(dim=(2, 3))
    torch.testing.assert_close(encoder(x), by_hand)
    with pytest.raises(ValueError, match=r"expects images \[N, 3, 32, 32\]"):
        encoder(torch.rand(4, 3, 28, 28))
    with pytest.raises(ValueError, match="one mean and one std per input channel"):
        ResNetEncoder([32, 64, 128], in_channels=3, image_size=32, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_every_method_trains_a_step_on_the_datasets_images(dataset, name):
    method = build_method(name, dataset, seed=0)
    info = data.DATASETS[dataset]
    images = torch.rand(8, *info.shape)
    out = method.training_step(images, torch.arange(8) % 10, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    method.eval()
    assert method.encoder(images).shape == (8, 128)
    if name in ("autoencoder", "mae"):
        redrawn = method.reconstruct(images) if name == "autoencoder" else method.reconstruct(images)[1]
        assert redrawn.shape == images.shape
    if name == "vae":
        assert method.sample(3).shape == (3, *info.shape)


def test_colour_images_get_simclrs_colour_jitter_and_grayscale_and_grey_ones_do_not():
    assert build_method("simclr").augment_config == SIMCLR_AUGMENT
    assert build_method("simclr", "mnist").augment_config == SIMCLR_AUGMENT
    for name in ("simclr", "dcl", "vicreg"):
        views = build_method(name, "cifar10").augment_config
        assert (views.saturation, views.hue, views.grayscale_prob) == (0.4, 0.1, 0.2)
    assert build_method("rotation", "cifar10").augment_config == SUPERVISED_AUGMENT  # label-preserving stays so
    assert build_method("vae", "cifar10").augment_config is None


def test_the_imagenet_reference_takes_grey_and_colour_images():
    from torchvision.models import resnet18

    reference = ImageNetResNet18(resnet18(weights=None), size=64).eval()  # a random network: no download
    assert reference(torch.rand(2, 1, 28, 28)).shape == (2, 512)
    assert reference(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    grey = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(reference(grey), reference(grey.expand(-1, 3, -1, -1)))  # grey = three equal channels


@pytest.fixture
def imagenet_offline(monkeypatch):
    """torchvision's ResNet-18 constructor as it behaves offline: fetching the ImageNet weights fails."""
    import torchvision.models

    def offline_resnet18(weights=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline_resnet18)


def test_the_imagenet_reference_offline_is_a_clear_error(imagenet_offline):
    with pytest.raises(ReferenceWeightsError, match="could not be downloaded .*optional reference"):
        load_imagenet_resnet18()


# ------------------------------------------------------------------------------------------- commands


def pretrain(name, dataset, *extra):
    return main(
        [
            "pretrain",
            name,
            "--dataset",
            dataset,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "32",
            "--limit",
            "120",
            "--no-progress",
            "--checkpoint",
            f"{name}-{dataset}.ckpt",
            *extra,
        ]
    )


# One method per kind of encoder on both datasets (the ResNet and MAE's ViT), and on CIFAR-10 the four
# baselines too (their pixels, HOG descriptors and random networks take the dataset's shape). Publishing
# does not depend on the method otherwise; every method's training step on every dataset is tested above.
PUBLISHED = {"mnist": ["simclr", "mae"], "cifar10": ["simclr", "mae", "random", "random_vit", "pixels", "hog"]}


@pytest.fixture(scope="module")
def published(fake_root, tmp_path_factory):
    """The weights of a two-step ``pretrain --dataset`` of every name in ``PUBLISHED``, made once."""
    root = tmp_path_factory.mktemp("published")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSLKIT_DATA", str(fake_root))
        patch.setenv("SSLKIT_WEIGHTS", str(root / "weights"))
        patch.setattr(data, "_download", no_download)
        patch.chdir(root)
        for dataset, names in PUBLISHED.items():
            for name in names:
                assert pretrain(name, dataset) == 0
    return root / "weights"


@pytest.fixture
def weights(published, tmp_path):
    """A copy of the published weights in this test's $SSLKIT_WEIGHTS, free to change."""
    shutil.copytree(published, tmp_path / "weights")
    return tmp_path / "weights"


@pytest.mark.parametrize("dataset", PUBLISHED)
def test_a_two_step_pretrain_on_each_dataset_publishes_weights_that_load_and_reproduce(weights, capsys, dataset):
    info = data.DATASETS[dataset]
    names = PUBLISHED[dataset]
    entries = json.loads((weights / dataset / "manifest.json").read_text())["methods"]
    assert sorted(entries) == sorted(names)  # another dataset's weights: their own folder and manifest
    assert not (weights / "manifest.json").exists()
    for name in names:
        entry = entries[name]
        assert entry["dataset"] == dataset and entry["command"].startswith(
            f"python -m sslkit pretrain {name} --dataset {dataset}"
        )
        expected_task = "digits" if dataset == "mnist" else "CIFAR-100, 10 classes"
        assert expected_task in entry["results"]["transfer"]["dataset"]
        encoder = load_pretrained(name, dataset=dataset)
        assert encoder(torch.rand(2, *info.shape)).shape == (2, entry["results"]["feature_dim"])
        assert entry["config"]["encoder_config"]["in_channels"] == info.channels
        assert entry["config"]["encoder_config"]["image_size"] == info.image_size
    if dataset == "cifar10":
        assert entries["pixels"]["results"]["feature_dim"] == 3 * 32 * 32
        hog = entries["hog"]["config"]["encoder_config"]  # chosen on the validation split of the 120 images
        blocks = 32 // hog["cell_size"] - 1
        assert entries["hog"]["results"]["feature_dim"] == blocks * blocks * 4 * hog["orientations"]
        assert len(entries["hog"]["results"]["sweeps"]["hog"]["runs"]) == 6
        assert entries["mae"]["config"]["encoder_config"]["image_size"] == 32
    assert main(["evaluate", "all", "--dataset", dataset, "--limit", "120"]) == 0  # reproduces the manifest
    table = capsys.readouterr().out
    assert all(name in table for name in names)


def test_weights_of_one_dataset_are_not_loaded_as_anothers(weights, tmp_path, capsys):
    with pytest.raises(WeightsError, match="no weights for 'pixels' are in .*mnist yet.*pixels --dataset mnist"):
        load_pretrained("pixels", dataset="mnist")
    misplaced = tmp_path / "misplaced"  # a root whose mnist/ folder holds CIFAR-10's weights
    shutil.copytree(weights / "cifar10", misplaced / "mnist")
    with pytest.raises(WeightsError, match="trained on CIFAR-10, not on MNIST"):
        load_pretrained("simclr", dataset="mnist", root=misplaced)
    # The root is the folder of Fashion-MNIST's weights: naming a dataset's own folder as the root is refused.
    with pytest.raises(WeightsError, match="trained on MNIST, not on Fashion-MNIST"):
        load_pretrained("simclr", dataset="fashion-mnist", root=weights / "mnist")
    assert load_pretrained("simclr", dataset="cifar10", root=weights).config()["in_channels"] == 3
    capsys.readouterr()
    assert main(["evaluate", "simclr", "--dataset", "mnist", "--weights", str(misplaced)]) == 2
    assert "trained on CIFAR-10, not on MNIST" in capsys.readouterr().err
    assert main(["evaluate", "simclr", "--weights", str(weights / "mnist")]) == 2
    assert "trained on MNIST, not on Fashion-MNIST" in capsys.readouterr().err
    # --weights names the root; MNIST's weights are found in ROOT/mnist/ and reproduce their record.
    assert main(["evaluate", "simclr", "--dataset", "mnist", "--weights", str(weights), "--limit", "120"]) == 0


def test_the_other_commands_take_the_dataset_too(weights, capsys, imagenet_offline):
    assert main(["geometry", "simclr", "--dataset", "cifar10", "--limit", "120"]) == 0
    assert main(["transfer", "random", "--dataset", "cifar10", "--repeats", "1"]) == 0
    assert (
        main(
            [
                "finetune",
                "random",
                "--dataset",
                "cifar10",
                "--limit",
                "120",
                "--steps",
                "2",
                "--seeds",
                "0",
                "--fractions",
                "0.5",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sweep",
                "simclr",
                "batch_size",
                "32",
                "--dataset",
                "cifar10",
                "--limit",
                "120",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
            ]
        )
        == 0
    )
    entries = json.loads((weights / "cifar10" / "manifest.json").read_text())["methods"]
    assert entries["simclr"]["results"]["geometry"]["images"] == CIFAR10_BATCH  # the fake test split
    assert entries["random"]["results"]["transfer"]["repeats"] == 1
    assert entries["random"]["results"]["fine_tune"]["fractions"]["0.5"]["labels"] == 60
    assert entries["simclr"]["results"]["sweeps"]["batch_size"]["runs"][0]["value"] == 32
    capsys.readouterr()
    assert main(["transfer", "simclr", "--dataset", "cifar10", "--imagenet-reference"]) == 2
    assert "ImageNet weights of ResNet-18" in capsys.readouterr().err


def test_pretraining_on_cifar10_stops_before_training_when_its_transfer_task_is_missing(
    tmp_path, monkeypatch, fake_root, capsys
):
    only_cifar10 = tmp_path / "only-cifar10"
    only_cifar10.mkdir()
    (only_cifar10 / "cifar-10-batches-py").symlink_to(fake_root / "cifar-10-batches-py")
    monkeypatch.setenv("SSLKIT_DATA", str(only_cifar10))
    monkeypatch.setattr(data, "_download", lambda info, split: None)
    assert pretrain("simclr", "cifar10") == 2
    assert "CIFAR-100 (train) was not found" in capsys.readouterr().err
    assert not (tmp_path / "simclr-cifar10.ckpt").exists()


def test_the_cost_of_a_datasets_epoch_is_measured_on_random_images_of_its_shape_and_number():
    from sslkit.bench import train_throughput

    cost = train_throughput("simclr", "cpu", batch_size=16, steps=1, dataset="cifar10", synthetic=True)
    assert cost["images_per_second"] > 0
    # An epoch is the 50,000 CIFAR-10 training images (3,125 steps of 16), none of which is on this machine.
    assert cost["seconds_per_epoch"] == pytest.approx(3125 * 16 / cost["images_per_second"])


def test_the_augmentation_benchmark_runs_all_three_pipelines_on_colour_images():
    from sslkit.bench import bench_augmentation

    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    rates = bench_augmentation(images, torch.device("cpu"), batch_size=16, batches=2)
    assert len(rates) == 3 and all(rate > 0 for rate in rates.values())
