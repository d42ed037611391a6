import pytest
import torch

from sslkit.augment import (
    SIMCLR_AUGMENT,
    AugmentConfig,
    augment,
    four_rotations,
    gaussian_blur,
    random_erasing,
    random_rotations,
)

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                         blur_prob=0.0, erase_prob=0.0)


def test_output_shape_dtype_range_and_device(small_batch):
    images, _ = small_batch
    views = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(0))
    assert views.shape == images.shape and views.dtype == torch.float32 and views.device == images.device
    assert views.min() >= 0.0 and views.max() <= 1.0
    assert torch.isfinite(views).all()


def test_same_seed_same_views_and_new_draws_differ(small_batch):
    images, _ = small_batch
    first = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(7))
    again = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(7))
    other = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_parameters_are_drawn_per_sample(small_batch):
    images, _ = small_batch
    same_image = images[:1].expand(32, -1, -1, -1).contiguous()
    views = augment(same_image, SIMCLR_AUGMENT, torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[::7].round(decimals=4).tolist()) for v in views}
    assert len(distinct) == 32  # every copy of the one image got its own crop, flip and jitter


def test_identity_settings_return_the_input(small_batch):
    images, _ = small_batch
    assert torch.allclose(augment(images, IDENTITY), images, atol=1e-5)


def test_flip_with_probability_one_mirrors_every_image(small_batch):
    images, _ = small_batch
    flipped = augment(images, AugmentConfig(**{**IDENTITY.to_dict(), "flip_prob": 1.0}))
    assert torch.allclose(flipped, images.flip(-1), atol=1e-5)


def test_crops_zoom_in(small_batch):
    # A crop of a quarter of the area, resized to full size, magnifies the object: more of the
    # image is covered by the (bright) garment than in the original.
    images, _ = small_batch
    config = AugmentConfig(**{**IDENTITY.to_dict(), "crop_scale": (0.25, 0.25)})
    views = augment(images, config, torch.Generator().manual_seed(0))
    assert (views > 0.1).float().mean() > (images > 0.1).float().mean()


def test_blur_keeps_brightness_and_smooths(small_batch):
    images, _ = small_batch
    config = AugmentConfig(blur_prob=1.0, blur_sigma=(1.5, 1.5))
    blurred = gaussian_blur(images, config)
    constant = torch.full_like(images, 0.3)
    assert torch.allclose(gaussian_blur(constant, config), constant, atol=1e-6)  # kernels sum to 1
    def total_variation(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()
    assert total_variation(blurred) < 0.8 * total_variation(images)


def test_random_erasing_zeroes_a_bounded_rectangle(small_batch):
    images, _ = small_batch
    config = AugmentConfig(erase_prob=1.0, erase_scale=(0.1, 0.1))
    ones = torch.ones_like(images)
    erased = random_erasing(ones, config, torch.Generator().manual_seed(0))
    fraction = (erased == 0).float().mean(dim=(1, 2, 3))
    assert ((fraction > 0.03) & (fraction < 0.2)).all()


def test_jitter_changes_brightness_per_image(small_batch):
    images, _ = small_batch
    config = AugmentConfig(**{**IDENTITY.to_dict(), "jitter_prob": 1.0})
    jittered = augment(images, config, torch.Generator().manual_seed(0))
    ratio = jittered.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
    assert ratio.std() > 0.05  # different factors for different images


def test_rejects_non_float_batches(small_batch):
    with pytest.raises(ValueError, match="float batch"):
        augment((small_batch[0] * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="float batch"):
        augment(small_batch[0][0])


def rotate_back(rotated: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.rot90(view, -k, dims=(1, 2)) for view, k in zip(rotated, labels.tolist(), strict=True)])


def test_four_rotations_rotate_back_to_the_input(small_batch):
    images, _ = small_batch
    rotated, labels = four_rotations(images[:8])
    assert rotated.shape == (32, 1, 28, 28)
    assert labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    assert torch.equal(rotate_back(rotated, labels), images[:8].repeat(4, 1, 1, 1))
    # 90° means counter-clockwise: the top-right pixel moves to the top-left.
    square = torch.zeros(1, 1, 3, 3)
    square[0, 0, 0, 2] = 1
    assert four_rotations(square)[0][1, 0, 0, 0] == 1


def test_random_rotations_are_labelled_with_the_rotation_applied(small_batch):
    images, _ = small_batch
    rotated, labels = random_rotations(images, torch.Generator().manual_seed(0))
    assert rotated.shape == images.shape and labels.shape == (len(images),)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(rotate_back(rotated, labels), images)
    again, labels_again = random_rotations(images, torch.Generator().manual_seed(0))
    assert torch.equal(again, rotated) and torch.equal(labels_again, labels)
