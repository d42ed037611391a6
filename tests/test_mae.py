"""MAE's pieces: patches, masking, the ViT, the decoder and the loss, each against a second computation."""

import math

import pytest
import torch

from sslkit.losses import mae_loss, normalized_patches
from sslkit.methods import build_method
from sslkit.models import (
    VIT_CONFIG,
    Attention,
    ViTEncoder,
    attend,
    build_encoder,
    count_parameters,
    encoder_config,
    patchify,
    random_masking,
    sincos_position_embedding,
    unpatchify,
)


@pytest.mark.parametrize("channels,size,patch", [(1, 28, 4), (3, 32, 4), (2, 8, 2)])
def test_patchify_unpatchify_round_trip_is_exact(channels, size, patch):
    images = torch.rand(3, channels, size, size)
    patches = patchify(images, patch)
    assert patches.shape == (3, (size // patch) ** 2, patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, channels), images)


def test_patches_are_read_row_by_row_with_channels_last():
    images = torch.arange(2 * 2 * 8 * 8, dtype=torch.float32).reshape(2, 2, 8, 8)
    patches = patchify(images, 4)
    # Patch 1 is the top row's second patch: rows 0-3, columns 4-7; its values run over pixels, then channels.
    expected = images[1, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[1, 1], expected)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.rand(1, 1, 30, 30), 4)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_exactly_len_keep_patches_and_restore_undoes_the_shuffle(ratio):
    n, length = 16, 49
    keep, restore, mask = random_masking(n, length, ratio, generator=torch.Generator().manual_seed(0))
    len_keep = int(length * (1 - ratio))
    assert keep.shape == (n, len_keep) and restore.shape == (n, length) and mask.shape == (n, length)
    assert (mask.sum(1) == length - len_keep).all()
    for row in range(n):  # the kept patches are distinct and exactly the unmasked ones
        assert sorted(keep[row].tolist()) == torch.nonzero(mask[row] == 0).flatten().tolist()
    # Visible tokens followed by placeholders, gathered with restore, are back in image order.
    tokens = torch.arange(length).expand(n, length)
    shuffled = torch.cat([torch.gather(tokens, 1, keep), torch.full((n, length - len_keep), -1)], dim=1)
    restored = torch.gather(shuffled, 1, restore)
    assert torch.equal(restored[mask == 0], tokens[mask == 0])
    assert (restored[mask == 1] == -1).all()


def test_masking_differs_per_sample_and_follows_the_generator():
    first = random_masking(8, 49, 0.75, generator=torch.Generator().manual_seed(1))
    again = random_masking(8, 49, 0.75, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    masks = first[2]
    assert len({tuple(row.tolist()) for row in masks}) == 8
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 49, 1.0)


def test_normalized_patches_have_zero_mean_and_unit_variance():
    patches = 3 * torch.rand(4, 49, 16) + 1
    normalized = normalized_patches(patches)
    assert torch.allclose(normalized.mean(-1), torch.zeros(4, 49), atol=1e-5)
    assert torch.allclose(normalized.var(-1), torch.ones(4, 49), atol=1e-4)


def explicit_mae_loss(predictions, patches, mask, normalize_target):
    total, count = 0.0, 0
    for i in range(patches.shape[0]):
        for j in range(patches.shape[1]):
            if mask[i, j] == 0:
                continue
            target = patches[i, j]
            if normalize_target:
                mean = sum(target.tolist()) / len(target)
                variance = sum((v - mean) ** 2 for v in target.tolist()) / (len(target) - 1)
                target = (target - mean) / math.sqrt(variance + 1e-6)
            pairs = zip(predictions[i, j].tolist(), target.tolist(), strict=True)
            total += sum((p - t) ** 2 for p, t in pairs) / len(target)
            count += 1
    return total / count


@pytest.mark.parametrize("normalize_target", [True, False])
def test_mae_loss_against_explicit_loops(normalize_target):
    generator = torch.Generator().manual_seed(0)
    predictions, patches = torch.randn(3, 9, 4, generator=generator), torch.rand(3, 9, 4, generator=generator)
    mask = random_masking(3, 9, 0.6, generator=generator)[2]
    expected = explicit_mae_loss(predictions.double(), patches.double(), mask, normalize_target)
    assert mae_loss(predictions, patches, mask, normalize_target).item() == pytest.approx(expected, rel=1e-5)


def test_mae_loss_ignores_visible_patches():
    predictions, patches = torch.randn(2, 49, 16), torch.rand(2, 49, 16)
    mask = random_masking(2, 49, 0.75, generator=torch.Generator().manual_seed(0))[2]
    loss = mae_loss(predictions, patches, mask)
    changed_visible = predictions + 10 * (1 - mask).unsqueeze(-1)
    assert mae_loss(changed_visible, patches, mask) == loss
    changed_masked = predictions + 10 * mask.unsqueeze(-1)
    assert mae_loss(changed_masked, patches, mask) > loss
    with pytest.raises(ValueError, match=r"mask \[N, L\]"):
        mae_loss(predictions, patches, mask[:, :10])


def test_sincos_position_embedding_values():
    embedding = sincos_position_embedding(7, 16)
    assert embedding.shape == (49, 16)
    # Position (0, 0): sin 0 = 0 for the first half of each axis' dims, cos 0 = 1 for the second.
    assert torch.equal(embedding[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # Position (row 2, column 3), lowest frequency 1: sin 2 and sin 3.
    assert embedding[2 * 7 + 3, 0].item() == pytest.approx(math.sin(2), abs=1e-6)
    assert embedding[2 * 7 + 3, 8].item() == pytest.approx(math.sin(3), abs=1e-6)
    assert len({tuple(row.tolist()) for row in embedding}) == 49


def test_attention_against_explicit_softmax_per_head():
    torch.manual_seed(0)
    attention, x = Attention(dim=8, heads=2), torch.randn(3, 5, 8)
    q, k, v = attention.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., cols])
    expected = attention.out(torch.cat(heads, dim=-1))
    # Both code paths: the explicit product while training on CPU, the fused kernel without gradients.
    assert torch.allclose(attention(x), expected, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(attention(x), expected, atol=1e-6)
    gradient = torch.autograd.grad(attention(x).square().sum(), attention.qkv.weight)[0]
    expected_gradient = torch.autograd.grad(expected.square().sum(), attention.qkv.weight)[0]
    assert torch.allclose(gradient, expected_gradient, atol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_fused_attention_kernel_has_the_explicit_products_gradients(dtype, tolerance):
    """The GPU's path (and every path without gradients) against the CPU training path, backward included:
    the gradients reach q, k and v alike, at the MAE encoder's shape (49 patches, 4 heads of 32)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, 49, 32, generator=generator, dtype=dtype, requires_grad=True) for _ in range(3))
    upstream = torch.randn(8, 4, 49, 32, generator=generator, dtype=dtype)
    results = {}
    for fused in (True, False):
        out = attend(q, k, v, fused)
        results[fused] = (out, *torch.autograd.grad(out, (q, k, v), upstream))
    for fused_value, explicit_value in zip(results[True], results[False], strict=True):
        assert torch.allclose(fused_value, explicit_value, atol=tolerance, rtol=tolerance)
    assert all(gradient.abs().max() > 0.1 for gradient in results[True][1:])


def test_vit_encoder_shapes_config_and_visible_tokens():
    config = encoder_config("fashion-mnist", "vit")
    assert config == {**VIT_CONFIG, "in_channels": 1, "image_size": 28, "mean": [0.286], "std": [0.353]}
    encoder = build_encoder(config)
    assert isinstance(encoder, ViTEncoder) and encoder.config() == config
    images = torch.rand(4, 1, 28, 28)
    assert encoder(images).shape == (4, 128)
    assert encoder.tokens(images).shape == (4, 49, 128)
    keep = random_masking(4, 49, 0.75)[0]
    assert encoder.tokens(images, keep).shape == (4, 12, 128)
    assert 450_000 < count_parameters(encoder) < 600_000
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        encoder(torch.rand(4, 1, 32, 32))
    # The fixed embedding is a buffer (never trained); the learned one is a parameter.
    assert "position_embedding" not in dict(encoder.named_parameters())
    learned = build_encoder({**config, "position": "learned"})
    assert "position_embedding" in dict(learned.named_parameters())


def test_mae_encodes_only_visible_patches_and_decodes_all():
    mae = build_method("mae", seed=0)
    images = torch.rand(4, 1, 28, 28)
    out = mae.predict(images, generator=torch.Generator().manual_seed(0))
    assert out["predictions"].shape == out["patches"].shape == (4, 49, 16)
    assert (out["mask"].sum(1) == 49 - 12).all()
    masked, reconstruction = mae.reconstruct(images, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert masked.shape == reconstruction.shape == images.shape
    visible = unpatchify(
        1 - random_masking(4, 49, 0.5, generator=torch.Generator().manual_seed(0))[2].unsqueeze(-1).expand(-1, -1, 16),
        4,
    ).bool()
    assert torch.equal(reconstruction[visible], images[visible])  # visible patches are pasted back as they are
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1
    with pytest.raises(ValueError, match="ViT encoder"):
        build_method("mae", encoder_config=encoder_config("fashion-mnist", "resnet"))
