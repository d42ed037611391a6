import pytest
import torch

from sslkit.methods import build_method
from sslkit.models import ProjectionHead, build_encoder, count_parameters


def test_encoder_shape_and_size():
    encoder = build_encoder()
    features = encoder(torch.rand(5, 1, 28, 28))
    assert features.shape == (5, 128)
    assert 250_000 < count_parameters(encoder) < 350_000  # DESIGN.md §4: ~0.3M parameters


def test_encoder_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        build_encoder()(torch.rand(5, 28, 28))


def test_projector_shape():
    assert ProjectionHead(128, 64, 32)(torch.randn(4, 128)).shape == (4, 32)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="simclr"):
        build_method("simclrr")
