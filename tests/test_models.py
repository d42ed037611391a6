import json

import pytest
import torch

from sslkit import methods
from sslkit.methods import TRAINABLE, build_method, initialize_linear, method_class
from sslkit.models import (
    ConvDecoder,
    ProjectionHead,
    build_encoder,
    convolution_weight_norm,
    count_parameters,
    encoder_config,
)


def test_encoder_shape_and_size():
    encoder = build_encoder(encoder_config())
    features = encoder(torch.rand(5, 1, 28, 28))
    assert features.shape == (5, 128)
    assert 250_000 < count_parameters(encoder) < 350_000  # the shared encoder is small: about 0.3M parameters


def test_encoder_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        build_encoder(encoder_config())(torch.rand(5, 28, 28))


def test_projector_shape():
    assert ProjectionHead(128, 64, 32)(torch.randn(4, 128)).shape == (4, 32)


def test_vicreg_expander_is_wide_with_two_hidden_layers():
    method = build_method("vicreg")
    linear_layers = [m for m in method.expander.net if isinstance(m, torch.nn.Linear)]
    assert [layer.out_features for layer in linear_layers] == [1024, 1024, 1024]
    assert method.embed(torch.rand(4, 1, 28, 28)).shape == (4, 1024)
    with pytest.raises(ValueError, match="non-negative"):
        build_method("vicreg", std_coeff=-1.0)


def test_dcl_differs_from_simclr_only_in_its_loss():
    simclr, dcl = build_method("simclr", seed=0), build_method("dcl", seed=0)
    assert dcl.config() == simclr.config()
    images = torch.rand(8, 1, 28, 28)
    simclr_out = simclr.training_step(images, None, torch.Generator().manual_seed(0))["loss"]
    dcl_out = dcl.training_step(images, None, torch.Generator().manual_seed(0))["loss"]
    assert dcl_out < simclr_out  # the same views and projections; DCL drops e^{pos/τ} from the denominator


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="simclr"):
        build_method("simclrr")


@pytest.mark.parametrize("in_dim", [128, 16])
def test_decoder_output_is_exactly_28_by_28(in_dim):
    assert ConvDecoder(in_dim)(torch.randn(3, in_dim)).shape == (3, 1, 28, 28)


def test_decoder_rejects_features_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"\[N, 128\]"):
        ConvDecoder(128)(torch.randn(3, 64))


def test_autoencoder_and_vae_draw_images_of_the_input_size():
    images = torch.rand(4, 1, 28, 28)
    autoencoder, vae = build_method("autoencoder").eval(), build_method("vae").eval()
    reconstruction = autoencoder.reconstruct(images)
    assert reconstruction.shape == images.shape and 0 <= reconstruction.min() and reconstruction.max() <= 1
    mean, log_variance = vae.encode(images)
    assert mean.shape == log_variance.shape == (4, vae.latent_dim)
    assert vae.decode(mean).shape == images.shape
    assert vae.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, 28, 28)


def test_rotation_head_has_four_outputs():
    assert build_method("rotation").rotation_logits(torch.rand(3, 1, 28, 28)).shape == (3, 4)


def test_denoising_input_is_noisy_but_in_range():
    autoencoder = build_method("autoencoder", noise_std=0.3)
    images = torch.rand(8, 1, 28, 28)
    noisy = autoencoder.corrupt(images, torch.Generator().manual_seed(0))
    assert not torch.equal(noisy, images) and noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(build_method("autoencoder", noise_std=0.0).corrupt(images), images)


@pytest.mark.parametrize("seed", [0, 7])
def test_initialize_linear_draws_pytorchs_default_initialisation_from_a_generator(seed):
    layer = torch.nn.Linear(128, 10)
    torch.manual_seed(seed)
    layer.reset_parameters()
    expected_weight, expected_bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    torch.manual_seed(seed + 1)  # the global generator elsewhere: initialize_linear must not read it
    initialize_linear(layer, torch.Generator().manual_seed(seed))
    assert torch.equal(layer.weight, expected_weight) and torch.equal(layer.bias, expected_bias)


@pytest.mark.parametrize("name", ["simclr", "mae", "supervised"])
def test_a_seeded_build_is_reproducible_and_leaves_the_global_generator_alone(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = build_method(name, seed=3), build_method(name, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    other = build_method(name, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_a_method_rebuilt_from_its_config_has_the_same_config_also_after_json(name, dataset):
    method = build_method(name, dataset, seed=0)
    config = method.config()
    assert method_class(name).from_config(config).config() == config
    stored = json.loads(json.dumps(config))  # as a checkpoint's identity or the manifest holds it
    rebuilt = methods.method_from_config(name, stored)
    assert type(rebuilt) is type(method) and rebuilt.config() == config


def test_convolution_weight_norm_counts_every_convolution_kernel_and_nothing_else():
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2),
        torch.nn.Conv2d(2, 1, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    with torch.no_grad():
        network[0].weight.fill_(1.0)  # 2 × 1 × 3 × 3 = 18 ones
        network[2].weight.fill_(-2.0)  # 1 × 2 × 1 × 1 = 2 values of -2
        network[4].weight.fill_(100.0)  # a linear layer: not a convolution
    assert convolution_weight_norm(network) == pytest.approx((18 * 1.0 + 2 * 4.0) ** 0.5)
    with torch.no_grad():
        network[0].weight.mul_(3.0)
    assert convolution_weight_norm(network) == pytest.approx((18 * 9.0 + 2 * 4.0) ** 0.5)
