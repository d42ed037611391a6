from dataclasses import replace

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from sslkit.augment import (
    FLIP_AUGMENT,
    SIMCLR_AUGMENT,
    SIMCLR_COLOUR,
    SUPERVISED_AUGMENT,
    AugmentConfig,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    colour_jitter,
    four_rotations,
    gaussian_blur,
    random_erasing,
    random_grayscale,
    random_resized_crop_and_flip,
    random_rotations,
    vary_views,
    with_colour,
)

IDENTITY = AugmentConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0, erase_prob=0.0
)


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


@pytest.fixture(scope="module")
def colour_batch():
    """16 random RGB images [16, 3, 32, 32] in [0, 1], with grey, black, white and tied pixels in corners."""
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0, :, :4, :4] = 0.5
    images[1, :, :4, :4] = 0.0
    images[2, :, :4, :4] = 1.0
    images[3, 1, :4, :4] = images[3, 0, :4, :4]  # red and green tie for the largest channel
    return images


def per_image(function, images, factors):
    return torch.stack([function(image, float(factor)) for image, factor in zip(images, factors, strict=True)])


def test_contrast_of_rgb_images_stretches_around_the_luminance_mean_like_torchvision(colour_batch):
    factors = torch.linspace(0.0, 2.0, len(colour_batch))
    expected = per_image(TF.adjust_contrast, colour_batch, factors)
    assert torch.allclose(adjust_contrast(colour_batch, factors), expected, atol=1e-5)


def test_saturation_blends_with_the_luminance_like_torchvision(colour_batch):
    factors = torch.linspace(0.0, 2.0, len(colour_batch))
    expected = per_image(TF.adjust_saturation, colour_batch, factors)
    assert torch.allclose(adjust_saturation(colour_batch, factors), expected, atol=1e-5)


def test_hue_rotates_like_torchvision(colour_batch):
    shifts = torch.linspace(-0.5, 0.5, len(colour_batch))
    expected = per_image(TF.adjust_hue, colour_batch, shifts)
    assert torch.allclose(adjust_hue(colour_batch, shifts), expected, atol=1e-5)
    # No shift gives the image back (to float precision: the HSV round trip is not exact).
    assert torch.allclose(adjust_hue(colour_batch, torch.zeros(16)), colour_batch, atol=1e-6)


def test_random_grayscale_gives_torchvisions_luminance_in_three_channels(colour_batch):
    config = AugmentConfig(grayscale_prob=1.0)
    grey = random_grayscale(colour_batch, config, torch.Generator().manual_seed(0))
    assert torch.allclose(grey, TF.rgb_to_grayscale(colour_batch, num_output_channels=3), atol=1e-5)
    some = random_grayscale(colour_batch, AugmentConfig(grayscale_prob=0.5), torch.Generator().manual_seed(0))
    is_grey = (some == some[:, :1]).all(dim=(1, 2, 3))
    assert 0 < is_grey.sum() < len(colour_batch)
    assert torch.equal(some[~is_grey], colour_batch[~is_grey])  # the others are untouched


def test_colour_jitter_applies_brightness_contrast_saturation_hue_in_that_order(colour_batch):
    # Replay the documented draws (subset, brightness, contrast, saturation, hue) and apply
    # torchvision's functions in the same order, image by image.
    config = AugmentConfig(jitter_prob=0.5, saturation=0.4, hue=0.1)
    n = len(colour_batch)
    replay = torch.Generator().manual_seed(3)
    applied = torch.rand(n, generator=replay) < config.jitter_prob
    brightness, contrast, saturation = (0.6 + 0.8 * torch.rand(n, generator=replay) for _ in range(3))
    hue = -0.1 + 0.2 * torch.rand(n, generator=replay)
    expected = colour_batch.clone()
    for i in applied.nonzero().flatten().tolist():
        image = TF.adjust_brightness(colour_batch[i], float(brightness[i]))
        image = TF.adjust_contrast(image, float(contrast[i]))
        image = TF.adjust_saturation(image, float(saturation[i]))
        expected[i] = TF.adjust_hue(image, float(hue[i]))
    jittered = colour_jitter(colour_batch, config, torch.Generator().manual_seed(3))
    assert 0 < applied.sum() < n
    assert torch.allclose(jittered, expected, atol=1e-5)


def test_colour_operations_leave_grey_images_unchanged(small_batch):
    images, _ = small_batch
    factors = torch.linspace(0.0, 2.0, len(images))
    assert torch.equal(adjust_saturation(images, factors), images)
    assert torch.equal(adjust_hue(images, factors / 4 - 0.25), images)
    assert torch.equal(random_grayscale(images, AugmentConfig(grayscale_prob=1.0)), images)


@pytest.mark.parametrize(
    "config",
    [SIMCLR_AUGMENT, SUPERVISED_AUGMENT, FLIP_AUGMENT, AugmentConfig(erase_prob=0.5)],
    ids=["simclr", "supervised", "flip", "erase"],
)
def test_grey_presets_draw_nothing_for_colour_and_give_the_same_views(small_batch, config):
    # Shipped results were measured with seeded views: a config without the colour fields must draw
    # the same random numbers as before they existed, and make bitwise the same views.
    images, _ = small_batch
    generator = torch.Generator().manual_seed(0)
    views = augment(images, config, generator)
    replay = torch.Generator().manual_seed(0)
    expected = random_resized_crop_and_flip(images, config, replay)
    if config.jitter_prob > 0:  # the brightness-and-contrast jitter as it was: subset, brightness, contrast
        n = len(images)
        applied = torch.rand(n, generator=replay) < config.jitter_prob
        brightness = 1 - config.brightness + 2 * config.brightness * torch.rand(n, generator=replay)
        contrast = 1 - config.contrast + 2 * config.contrast * torch.rand(n, generator=replay)
        expected = (expected * torch.where(applied, brightness, 1.0).view(n, 1, 1, 1)).clamp(0, 1)
        mean = expected.mean(dim=(1, 2, 3), keepdim=True)
        expected = ((expected - mean) * torch.where(applied, contrast, 1.0).view(n, 1, 1, 1) + mean).clamp(0, 1)
    if config.blur_prob > 0:
        expected = gaussian_blur(expected, config, replay)
    if config.erase_prob > 0:
        expected = random_erasing(expected, config, replay)
    assert torch.equal(generator.get_state(), replay.get_state())
    assert torch.equal(views, expected)


def test_hue_must_be_at_most_half_a_turn():
    for hue in (-0.1, 0.6):
        with pytest.raises(ValueError, match=r"hue must be in \[0, 0.5\]"):
            AugmentConfig(hue=hue)
    assert AugmentConfig(hue=0.5).hue == 0.5


def test_colour_operations_reject_other_channel_counts():
    two_channels = torch.rand(4, 2, 8, 8)
    for config in (AugmentConfig(saturation=0.4), AugmentConfig(hue=0.1)):
        with pytest.raises(ValueError, match="grey .* or RGB"):
            colour_jitter(two_channels, config)
    with pytest.raises(ValueError, match="grey .* or RGB"):
        augment(two_channels, AugmentConfig(jitter_prob=0.0, grayscale_prob=0.2))
    assert augment(two_channels).shape == two_channels.shape  # without colour, any channel count works


def test_with_colour_adds_simclrs_colour_to_photometric_presets_only():
    coloured = with_colour(SIMCLR_AUGMENT)
    assert (coloured.saturation, coloured.hue, coloured.grayscale_prob) == (0.4, 0.1, 0.2)
    assert {key: coloured.to_dict()[key] for key in SIMCLR_COLOUR} == SIMCLR_COLOUR
    assert AugmentConfig(**{**coloured.to_dict(), **{key: 0.0 for key in SIMCLR_COLOUR}}) == SIMCLR_AUGMENT
    assert with_colour(SUPERVISED_AUGMENT) == SUPERVISED_AUGMENT
    assert with_colour(FLIP_AUGMENT) == FLIP_AUGMENT


def test_colour_views_of_rgb_batches(colour_batch):
    config = with_colour(SIMCLR_AUGMENT)
    views = augment(colour_batch, config, torch.Generator().manual_seed(0))
    assert views.shape == (16, 3, 32, 32) and views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.0 and torch.isfinite(views).all()
    assert torch.equal(views, augment(colour_batch, config, torch.Generator().manual_seed(0)))
    all_grey = augment(colour_batch, AugmentConfig(**{**config.to_dict(), "grayscale_prob": 1.0}))
    assert (all_grey == all_grey[:, :1]).all()


def test_from_dict_reads_configs_stored_before_the_colour_fields():
    stored = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in SIMCLR_AUGMENT.to_dict().items()
        if key not in SIMCLR_COLOUR
    }
    assert AugmentConfig.from_dict(stored) == SIMCLR_AUGMENT
    coloured = with_colour(SIMCLR_AUGMENT)
    assert AugmentConfig.from_dict(coloured.to_dict()) == coloured


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


def test_each_view_ablation_takes_out_exactly_the_part_it_names():
    from dataclasses import asdict

    from sslkit.augment import SIMCLR_AUGMENT, VIEW_ABLATIONS

    full = asdict(SIMCLR_AUGMENT)
    changed = {
        name: {key for key, value in asdict(config).items() if value != full[key]}
        for name, config in VIEW_ABLATIONS.items()
    }
    assert changed == {
        "all": set(),
        "no_crop": {"crop_scale", "crop_ratio"},
        "no_jitter": {"jitter_prob"},
        "no_blur": {"blur_prob"},
        "crop_only": {"jitter_prob", "blur_prob"},
    }
    assert VIEW_ABLATIONS["no_crop"].crop_scale == (1.0, 1.0) and VIEW_ABLATIONS["crop_only"].blur_prob == 0


def test_a_view_setting_changes_only_what_it_names():
    smallest = vary_views(SIMCLR_AUGMENT, "crop_min_area", 0.08)
    assert smallest.crop_scale == (0.08, 1.0) and smallest.crop_ratio == SIMCLR_AUGMENT.crop_ratio
    assert vary_views(SUPERVISED_AUGMENT, "crop_min_area", 1.0).crop_ratio == (1.0, 1.0)  # no crop: the whole image
    stronger = vary_views(SIMCLR_AUGMENT, "jitter_strength", 0.6)
    assert (stronger.brightness, stronger.contrast) == (0.6, 0.6)
    assert replace(stronger, brightness=SIMCLR_AUGMENT.brightness, contrast=SIMCLR_AUGMENT.contrast) == SIMCLR_AUGMENT
    with pytest.raises(ValueError, match="apply no brightness/contrast jitter"):
        vary_views(SUPERVISED_AUGMENT, "jitter_strength", 0.4)
    with pytest.raises(ValueError, match="fraction of the image's area"):
        vary_views(SIMCLR_AUGMENT, "crop_min_area", 1.5)
    with pytest.raises(ValueError, match="unknown view setting 'blur'"):
        vary_views(SIMCLR_AUGMENT, "blur", 0.5)


def test_views_of_another_size_come_from_the_same_boxes():
    """``size`` changes only the output grid: the same random boxes, sampled at 12×12 instead of 28×28."""
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    full = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(1))
    same = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(1), size=28)
    small = augment(images, SIMCLR_AUGMENT, torch.Generator().manual_seed(1), size=12)
    assert torch.equal(full, same) and small.shape == (8, 1, 12, 12)
    assert 0 <= small.min() and small.max() <= 1
    whole = replace(
        SIMCLR_AUGMENT, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, blur_prob=0.0
    )
    expected = torch.nn.functional.interpolate(images, size=14, mode="bilinear", align_corners=False)
    torch.testing.assert_close(augment(images, whole, size=14), expected)  # the whole image, resized
    with pytest.raises(ValueError, match="positive number of pixels"):
        augment(images, SIMCLR_AUGMENT, size=0)
