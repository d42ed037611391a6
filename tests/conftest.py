"""Shared fixtures: small slices of the real data, and a temporary weights folder."""

import pytest
import torch

import sslkit.train
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
    """The notebooks' disk cache (``sslkit.cache``: features and remembered results) in a new folder
    for each test, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv("SSLKIT_CACHE", str(folder))
    return folder / "features"


@pytest.fixture
def train_until_the_first_checkpoint(monkeypatch):
    """``train(...)`` as a run that dies right after its first checkpoint is written (a killed process)."""

    def interrupted(*args, **kwargs):
        original_write = sslkit.train.write_text_atomically

        def write_then_die(path, text):
            original_write(path, text)
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(sslkit.train, "write_text_atomically", write_then_die)
            with pytest.raises(KeyboardInterrupt):
                sslkit.train.train(*args, **kwargs)

    return interrupted
