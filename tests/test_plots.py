import re

import matplotlib.pyplot as plt
import numpy as np
import pytest

from sslkit.plots import DIAGRAM_COLOURS, draw_diagram, plot_geometry


def test_geometry_plot_puts_each_encoder_at_its_uniformity_and_alignment_in_its_style():
    def result(alignment, uniformity, probe):  # a manifest entry's results, as much as the plot reads
        geometry = {"alignment": alignment, "uniformity": uniformity}
        return {"geometry": geometry, "linear_probe": {"test_accuracy": probe}}

    results = {"SimCLR": result(0.14, -2.26, 0.8905), "Random": result(0.06, -0.25, 0.801)}
    fig = plot_geometry(results, styles={"Random": {"color": "black", "marker": "x"}})
    ax = fig.axes[0]
    points = [collection.get_offsets()[0].tolist() for collection in ax.collections]
    assert points == [pytest.approx([-2.26, 0.14]), pytest.approx([-0.25, 0.06])]
    assert np.allclose(ax.collections[1].get_facecolor()[0][:3], 0)  # the style reached the scatter
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["SimCLR (probe 89.0%)", "Random (probe 80.1%)"]
    plt.close(fig)


def test_show_images_draws_grey_images_in_grey_and_colour_images_in_colour():
    import torch

    from sslkit.plots import show_images

    colour = torch.rand(3, 3, 32, 32)
    fig = show_images(colour, columns=3)
    drawn = fig.axes[0].get_images()[0]
    assert drawn.get_array().shape == (32, 32, 3)
    assert np.allclose(drawn.get_array(), colour[0].permute(1, 2, 0).numpy())  # channels last, values unchanged
    plt.close(fig)
    grey = (torch.rand(2, 28, 28) * 255).to(torch.uint8)
    fig = show_images(grey, columns=2)
    drawn = fig.axes[0].get_images()[0]
    assert drawn.get_array().shape == (28, 28) and drawn.get_cmap().name == "gray"
    assert np.allclose(drawn.get_array(), grey[0].numpy() / 255)
    plt.close(fig)


def test_a_diagram_draws_each_block_in_the_colour_of_its_kind_and_each_arrow():
    boxes = {"x": (0.1, 0.5, "image", "data"), "f": (0.5, 0.5, "encoder", "network"), "l": (0.9, 0.5, "loss", "loss")}
    fig = draw_diagram(boxes, [("x", "f"), ("f", "l", "h", "dashed")], title="a method")
    ax = fig.axes[0]
    blocks = {text.get_text(): text for text in ax.texts if text.get_bbox_patch() is not None}
    assert set(blocks) == {"image", "encoder", "loss"}
    assert blocks["encoder"].get_bbox_patch().get_facecolor()[:3] == pytest.approx(
        matplotlib_rgb(DIAGRAM_COLOURS["network"])
    )
    arrows = [patch for patch in ax.patches if type(patch).__name__ == "FancyArrowPatch"]
    assert len(arrows) == 2 and arrows[1].get_linestyle() == "--" and arrows[0].get_linestyle() == "-"
    assert "h" in [text.get_text() for text in ax.texts]  # the arrow's label
    plt.close(fig)


def matplotlib_rgb(colour):
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


@pytest.mark.parametrize(
    "boxes,arrows,message",
    [
        ({"x": (0.1, 0.5, "image", "pixels")}, [], "unknown block kinds ['pixels']"),
        ({"x": (0.1, 0.5, "image", "data")}, [("x", "y")], "arrows name blocks that do not exist: ['y']"),
    ],
)
def test_a_diagram_with_a_wrong_block_says_which(boxes, arrows, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        draw_diagram(boxes, arrows)
