import gzip

import pytest
import torch

from sslkit import data
from sslkit.data import DataNotFoundError, load_digits_28, load_fashion_mnist, low_label_subset, validation_split


def test_splits_have_the_documented_shapes(train_data, test_data):
    images, labels = train_data
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert test_data[0].shape == (10_000, 28, 28)
    assert torch.bincount(labels).tolist() == [6_000] * 10  # Fashion-MNIST is balanced


def test_validation_split_is_stratified_disjoint_and_seeded(train_data):
    _, labels = train_data
    train_indices, val_indices = validation_split(labels)
    assert len(val_indices) == 5_000 and len(train_indices) == 55_000
    assert len(set(train_indices.tolist()) | set(val_indices.tolist())) == 60_000
    assert torch.bincount(labels[val_indices]).tolist() == [500] * 10
    assert torch.equal(val_indices, validation_split(labels)[1])
    assert not torch.equal(val_indices, validation_split(labels, seed=1)[1])


@pytest.mark.parametrize("fraction,per_class", [(0.01, 60), (0.1, 600)])
def test_low_label_subsets_are_stratified_and_identical_across_calls(train_data, fraction, per_class):
    _, labels = train_data
    subset = low_label_subset(labels, fraction)
    assert torch.bincount(labels[subset]).tolist() == [per_class] * 10
    assert torch.equal(subset, low_label_subset(labels, fraction))
    assert len(subset.unique()) == len(subset)


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("validation")
    with pytest.raises(ValueError, match="fraction"):
        low_label_subset(torch.zeros(10, dtype=torch.long), 0.0)


def test_missing_data_offline_names_places_and_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLKIT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repo-data")
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "debian")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_download", lambda info, split: None)  # offline
    with pytest.raises(DataNotFoundError) as error:
        load_fashion_mnist("train")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "torchvision" in message


def test_sslkit_data_takes_precedence_and_truncated_files_are_reported(tmp_path, monkeypatch):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(28 * 28 * 9))  # one image short
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10))
    monkeypatch.setenv("SSLKIT_DATA", str(folder))
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test")


def test_the_transfer_digits_look_like_fashion_mnist():
    from sklearn.datasets import load_digits

    images, labels = load_digits_28()
    assert images.shape == (1797, 28, 28) and images.dtype == torch.uint8
    assert (
        labels.dtype == torch.int64
        and labels.bincount().tolist() == torch.bincount(torch.from_numpy(load_digits().target)).tolist()
    )
    # Ink is bright on a dark background, as in Fashion-MNIST: the corners are background.
    assert images[:, 0, 0].float().mean() < 10 and images[:, 10:18, 10:18].float().mean() > 50
    assert images.max() == 255
