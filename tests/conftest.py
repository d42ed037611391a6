"""Shared fixtures: small slices of the real data, and a temporary weights folder."""

import pytest
import torch

from sslkit.data import load_fashion_mnist

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def train_data():
    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def test_data():
    return load_fashion_mnist("test")


@pytest.fixture(scope="session")
def small_batch(train_data):
    """64 real training images as float [64, 1, 28, 28] in [0, 1], with labels."""
    images, labels = train_data
    return images[:64].unsqueeze(1).float() / 255, labels[:64]


@pytest.fixture(autouse=True)
def feature_cache(tmp_path_factory, monkeypatch):
    """The notebooks' feature cache (``sslkit.notebook.frozen_features``) in a new folder for each test,
    never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv("SSLKIT_CACHE", str(folder))
    return folder / "features"
