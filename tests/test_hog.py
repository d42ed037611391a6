"""The hand-crafted baseline: scikit-image's HOG descriptor, checked against HOG written out with numpy,
and the choice of its settings on the validation split."""

import numpy as np
import pytest
import torch

from sslkit.models import HOGFeatures, build_encoder, encoder_config
from sslkit.pipeline import HOG_CELL_SIZES, HOG_ORIENTATIONS, choose_hog_settings


def hog_by_hand(image: np.ndarray, cell: int, orientations: int, block: int) -> np.ndarray:
    """HOG (Dalal & Triggs 2005) in plain numpy: centred differences, unsigned orientation in hard
    bins of 180°/orientations, magnitudes averaged per cell, L2-Hys over overlapping blocks of cells."""
    rows, cols = np.zeros_like(image), np.zeros_like(image)
    rows[1:-1] = image[2:] - image[:-2]
    cols[:, 1:-1] = image[:, 2:] - image[:, :-2]
    magnitude = np.hypot(rows, cols)
    bins = (np.rad2deg(np.arctan2(rows, cols)) % 180 // (180 / orientations)).astype(int)
    cells = image.shape[0] // cell
    histograms = np.zeros((cells, cells, orientations))
    for r in range(cells * cell):
        for c in range(cells * cell):
            histograms[r // cell, c // cell, bins[r, c]] += magnitude[r, c] / cell**2
    blocks = []
    for r in range(cells - block + 1):
        for c in range(cells - block + 1):
            vector = histograms[r : r + block, c : c + block].ravel()
            vector = np.minimum(vector / np.sqrt((vector**2).sum() + 1e-10), 0.2)  # L2, then clip ("Hys")
            blocks.append(vector / np.sqrt((vector**2).sum() + 1e-10))
    return np.concatenate(blocks)


def hog_encoder(cell_size=4, orientations=9, channels=1, size=28) -> HOGFeatures:
    config = encoder_config("cifar10" if channels == 3 else "fashion-mnist", "hog")
    return build_encoder({**config, "cell_size": cell_size, "orientations": orientations})


@pytest.mark.parametrize("orientations", [6, 9])
def test_hog_equals_hog_written_out_with_numpy(orientations):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(orientations))
    features = hog_encoder(orientations=orientations)(images)
    for image, descriptor in zip(images, features, strict=True):
        expected = hog_by_hand(image[0].double().numpy(), 4, orientations, 2)
        np.testing.assert_allclose(descriptor.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("cell_size", "orientations", "channels", "dim"),
    [(4, 9, 1, 1296), (7, 9, 1, 324), (4, 6, 3, 1176), (7, 12, 3, 432)],
)
def test_the_descriptor_has_the_size_its_config_gives(cell_size, orientations, channels, dim):
    encoder = hog_encoder(cell_size, orientations, channels)
    size = encoder.image_size
    assert encoder.feature_dim == dim  # (S // cell − 1)² blocks of 2 × 2 cells × orientations
    assert encoder(torch.rand(2, channels, size, size)).shape == (2, dim)
    assert build_encoder(encoder.config()).config() == encoder.config()  # rebuilt from the manifest's record


def test_a_vertical_edge_votes_into_the_horizontal_gradient_bin_and_contrast_does_not_matter():
    image = torch.zeros(1, 1, 28, 28)
    image[..., 14:] = 0.6  # dark left half, bright right half: the gradient points along the rows
    descriptor = hog_encoder()(image).view(-1, 9)  # one 9-bin histogram per cell of each block
    assert descriptor[:, 0].sum() > 0 and descriptor[:, 1:].abs().sum() == 0  # every vote in bin 0 (0–20°)
    torch.testing.assert_close(hog_encoder()(image * 1.5), hog_encoder()(image), atol=1e-6, rtol=0)


def test_a_colour_image_with_equal_channels_has_the_grey_images_descriptor():
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    colour = hog_encoder(channels=3)(grey.expand(-1, 3, -1, -1))
    grey_config = {**hog_encoder(channels=3).config(), "in_channels": 1}
    torch.testing.assert_close(colour, build_encoder(grey_config)(grey))


def test_hog_rejects_images_of_another_shape_and_cells_too_large():
    with pytest.raises(ValueError, match=r"expects images \[N, 1, 28, 28\]"):
        hog_encoder()(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 2 cells of 16 pixels"):
        hog_encoder(cell_size=16)


def test_the_settings_are_chosen_on_the_validation_split(train_data):
    images, labels = train_data[0][:600], train_data[1][:600]
    encoder, search = choose_hog_settings(images, labels, "fashion-mnist", "cpu")
    runs = search["runs"]
    assert [(run["cell_size"], run["orientations"]) for run in runs] == [
        (cell, orientations) for cell in HOG_CELL_SIZES for orientations in HOG_ORIENTATIONS
    ]
    assert all(0.5 < run["validation_accuracy"] <= 1 for run in runs)  # real features: far above chance (0.1)
    best = max(run["validation_accuracy"] for run in runs)
    chosen = min((run for run in runs if run["validation_accuracy"] == best), key=lambda run: run["feature_dim"])
    assert (encoder.cell_size, encoder.orientations) == (chosen["cell_size"], chosen["orientations"])
