"""The notebooks' disk cache (sslkit.cache): features and remembered results are computed once, read
back equal, named by everything they depend on, replaced when damaged, and never kept when the cache
is off."""

import numpy as np
import pytest
import torch

import sslkit.cache
from sslkit.cache import cache_dir, frozen_features, remembered
from sslkit.methods import build_untrained_encoder
from sslkit.plots import embed_2d
from sslkit.protocol import extract_features, validation_accuracies


def test_frozen_features_are_computed_once_per_encoder_and_images(feature_cache, train_data):
    images = train_data[0][:300]
    encoder = build_untrained_encoder("random", seed=0).eval()
    calls = []
    encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    first = frozen_features(encoder, images)
    assert calls == [300] and len(list(feature_cache.glob("*.pt"))) == 1
    again = frozen_features(encoder, images)
    assert calls == [300] and torch.equal(again, first)  # read back, not computed
    assert torch.equal(first, extract_features(encoder, images))  # what the protocol computes
    frozen_features(encoder, images[:200])  # other images: computed
    with torch.no_grad():
        next(encoder.parameters()).add_(0.01)  # other weights (a fine-tuned encoder): computed
    changed = frozen_features(encoder, images)
    # computed: the first call, extract_features itself, the other images, the other weights
    assert calls == [300, 300, 200, 300] and not torch.equal(changed, first)
    assert len(list(feature_cache.glob("*.pt"))) == 3


def test_a_damaged_cache_file_is_computed_again_and_pixels_are_never_kept(feature_cache, train_data):
    images = train_data[0][:100]
    encoder = build_untrained_encoder("random", seed=1).eval()
    expected = frozen_features(encoder, images)
    (path,) = feature_cache.glob("*.pt")
    path.write_bytes(path.read_bytes()[:50])  # truncated
    assert torch.equal(frozen_features(encoder, images), expected)
    assert torch.equal(torch.load(path, weights_only=True), expected)  # replaced by a whole file
    frozen_features(build_untrained_encoder("pixels"), images)
    assert len(list(feature_cache.glob("*.pt"))) == 1


def test_the_feature_cache_can_be_turned_off(monkeypatch, tmp_path, train_data):
    monkeypatch.setenv("SSLKIT_CACHE", "off")
    assert cache_dir("features") is None
    frozen_features(build_untrained_encoder("random", seed=0).eval(), train_data[0][:50])
    monkeypatch.setenv("SSLKIT_CACHE", str(tmp_path))
    assert cache_dir("features") == tmp_path / "features" and not tmp_path.joinpath("features").exists()
    monkeypatch.delenv("SSLKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("features") == tmp_path / "xdg" / "sslkit" / "features"


def test_a_remembered_result_is_computed_once_per_arguments_and_read_back_equal(feature_cache, monkeypatch):
    calls = []
    real = validation_accuracies

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    counting.__module__, counting.__qualname__ = real.__module__, real.__qualname__
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(400, 8, generator=generator), torch.randint(0, 3, (400,), generator=generator)
    first = remembered(counting, features, labels, (1e-2, 1e-4))
    assert first == real(features, labels, (1e-2, 1e-4)) and set(first) == {1e-2, 1e-4}
    assert remembered(counting, features, labels, (1e-2, 1e-4)) == first and calls == [400]  # read back
    remembered(counting, features[:300], labels[:300], (1e-2, 1e-4))  # other inputs: computed
    remembered(counting, features, labels, (1e-2,))  # another setting: computed
    assert calls == [400, 300, 400]
    assert len(list(cache_dir("results").glob("*.pt"))) == 3
    monkeypatch.setattr(sslkit.cache, "source_digest", lambda: "another version of sslkit")
    remembered(counting, features, labels, (1e-2, 1e-4))  # changed code: computed
    assert calls == [400, 300, 400, 400]


def test_arrays_come_back_as_arrays_and_a_damaged_file_is_computed_again(feature_cache):
    features = torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    points = remembered(embed_2d, features, method="pca")
    assert isinstance(points, np.ndarray) and np.array_equal(points, embed_2d(features, method="pca"))
    (path,) = cache_dir("results").glob("*.pt")
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert np.array_equal(remembered(embed_2d, features, method="pca"), points)
    assert torch.equal(torch.load(path, weights_only=True)["array"], torch.from_numpy(points))  # replaced


def test_remembered_refuses_what_it_cannot_name_or_keep(monkeypatch, feature_cache):
    def local(x):
        return x

    with pytest.raises(ValueError, match="not a module-level function of sslkit"):
        remembered(local, 1)
    with pytest.raises(TypeError, match="cannot name a cache file by inputs\\[0\\] of type Linear"):
        remembered(validation_accuracies, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="returned a ResNetEncoder that cannot be kept"):
        remembered(build_untrained_encoder, "random", seed=0)
    monkeypatch.setenv("SSLKIT_CACHE", "off")
    assert cache_dir("results") is None
