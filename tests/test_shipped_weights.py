"""The weights in weights/ against their manifest: integrity, the accuracy bar, reproducibility."""

import pytest
import torch

import sslkit
from sslkit.evaluate import accuracy, extract_features
from sslkit.weights import load_manifest, load_pretrained, load_probe, sha256_file, weights_dir

MANIFEST = load_manifest()["methods"]
SHIPPED = sorted(MANIFEST)


def test_the_foundation_weights_are_shipped():
    assert {"simclr", "supervised", "random", "pixels"} <= set(SHIPPED)
    total = sum((weights_dir() / MANIFEST[name]["file"]).stat().st_size for name in SHIPPED)
    assert total < 30 * 2**20  # DESIGN.md §6: all weights together under ~30 MB


@pytest.mark.parametrize("name", SHIPPED)
def test_file_hashes_match_the_manifest(name):
    entry = MANIFEST[name]
    assert sha256_file(weights_dir() / entry["file"]) == entry["sha256"]
    assert (weights_dir() / entry["file"]).stat().st_size == entry["size_bytes"]
    assert "limit" not in entry["results"], "shipped weights must be evaluated on the full splits"
    assert entry["command"].startswith(f"python -m sslkit pretrain {name}")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_probe_reproduces_the_manifest_accuracy(name, test_data):
    images, labels = test_data
    encoder = load_pretrained(name)
    features = extract_features(encoder, images)
    assert features.shape == (10_000, MANIFEST[name]["results"]["feature_dim"])
    measured = accuracy(load_probe(name).predict(features), labels)
    assert measured == pytest.approx(MANIFEST[name]["results"]["linear_probe"]["test_accuracy"], abs=0.002)


def test_simclr_meets_the_accuracy_bar_and_beats_the_floor():
    results = {name: MANIFEST[name]["results"]["linear_probe"]["test_accuracy"] for name in SHIPPED}
    assert results["simclr"] >= 0.885
    assert results["simclr"] > max(results["pixels"], results["random"])
    assert results["supervised"] > results["simclr"]


def test_public_api_returns_pooled_features():
    assert sslkit.METHODS == ("autoencoder", "vae", "rotation", "simclr", "dcl", "vicreg", "mae")
    assert "supervised" in sslkit.BASELINES
    encoder = sslkit.load_pretrained("simclr")
    with torch.no_grad():
        assert encoder(torch.rand(3, 1, 28, 28)).shape == (3, 128)
