"""The figures the notebooks share. Each function draws one figure and returns it."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch

from .data import FASHION_MNIST, DatasetInfo

# Figures label classes with the names a caller passes; by default those of the series' dataset.
SERIES_CLASSES = FASHION_MNIST.class_names

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"


def _as_images(images: torch.Tensor) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, C, H, W]``, or float ``[N, C, H, W]`` in [0, 1] → float array in [0, 1]:
    ``[N, H, W]`` for grey images, ``[N, H, W, 3]`` for colour ones (what ``imshow`` draws)."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.ndim == 4 and images.shape[1] == 3:
        return images.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return images.reshape(len(images), *images.shape[-2:]).numpy()


def _imshow(ax: plt.Axes, picture: np.ndarray) -> None:
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)


def _draw_image(ax: plt.Axes, picture: np.ndarray) -> None:
    """One image in [0, 1] on ``ax``, without ticks (the frame stays, for labels and colours)."""
    _imshow(ax, picture)
    ax.set_xticks([])
    ax.set_yticks([])


def show_images(
    images: torch.Tensor, titles: list[str] | None = None, columns: int = 8, title: str | None = None, size: float = 1.3
) -> plt.Figure:
    """A grid of images (grey or colour) with optional per-image titles."""
    pictures = _as_images(images)
    rows = int(np.ceil(len(pictures) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * size, rows * size * (1.3 if titles else 1)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(pictures):
            _imshow(ax, pictures[i])
            if titles:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_class_grid(
    images: torch.Tensor, labels: torch.Tensor, per_class: int = 10, dataset: DatasetInfo = FASHION_MNIST
) -> plt.Figure:
    """One row per class of ``dataset`` with its first ``per_class`` images, the class name on the left."""
    names = dataset.class_names
    fig, axes = plt.subplots(len(names), per_class, figsize=(per_class * 0.9, len(names) * 0.95))
    for c, name in enumerate(names):
        members = torch.nonzero(labels == c).flatten()[:per_class]
        for j, ax in enumerate(axes[c]):
            _draw_image(ax, _as_images(images[members[j : j + 1]])[0])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{dataset.title}: the first training images of each class")
    fig.tight_layout()
    return fig


def show_image_rows(rows: dict[str, torch.Tensor], title: str | None = None, size: float = 1.2) -> plt.Figure:
    """One row of images per entry, its key written on the left: originals above reconstructions,
    the four rotations of a batch, views of the same images, an interpolation."""
    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(n * size, len(rows) * size * 1.08), squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        pictures = _as_images(images)
        for j, ax in enumerate(axes[row]):
            if j < len(pictures):
                _draw_image(ax, pictures[j])
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_view_pairs(images: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor) -> plt.Figure:
    """Three rows: the originals, their first augmented view, their second augmented view."""
    return show_image_rows(
        {"original": images, "view 1": view1, "view 2": view2},
        "Two random views of each image: a positive pair for contrastive learning",
    )


def plot_history(
    history: list[dict], keys: tuple[str, ...] = ("loss",), title: str = "Training loss", ylabel: str = "loss"
) -> plt.Figure:
    """Per-epoch curves of the given history keys."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [record["epoch"] for record in history]
    for key in keys:
        ax.plot(epochs, [record[key] for record in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(keys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    matrix: torch.Tensor,
    class_names: tuple[str, ...] = SERIES_CLASSES,
    title: str = "Confusion matrix (test set)",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Row-normalised confusion matrix with the counts' percentages written in the cells (on ``ax``, or
    on a figure of its own)."""
    counts = matrix.double()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    fig, ax = plt.subplots(figsize=(7, 6)) if ax is None else (ax.figure, ax)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rates)):
        for j in range(len(rates)):
            if rates[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{100 * rates[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(
    accuracies: dict[str, torch.Tensor | list[float]],
    class_names: tuple[str, ...] = SERIES_CLASSES,
    title: str = "Per-class accuracy (test set)",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Grouped bars: one group per class, one bar per entry of ``accuracies`` (e.g. probe and kNN), on
    ``ax`` or on a figure of its own."""
    fig, ax = plt.subplots(figsize=(9, 3.8)) if ax is None else (ax.figure, ax)
    width = 0.8 / len(accuracies)
    positions = np.arange(len(class_names))
    for i, (name, values) in enumerate(accuracies.items()):
        ax.bar(
            positions + (i - (len(accuracies) - 1) / 2) * width,
            100 * np.asarray(values, dtype=float),
            width,
            label=name,
        )
    ax.set_xticks(positions, class_names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(accuracies) > 1:
        ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_geometry(
    results: dict[str, dict],
    title: str = "Alignment and uniformity of the features",
    styles: dict[str, dict] | None = None,
) -> plt.Figure:
    """Alignment against uniformity (Wang and Isola 2020), one labelled point per encoder.

    ``results`` maps a label to a manifest entry's ``results`` (its ``geometry`` and
    ``linear_probe``); the legend gives each one's linear-probe test accuracy. Lower left:
    views close together and images spread over the sphere. ``styles``: optional keyword
    arguments of ``ax.scatter`` per label (``color``, ``marker``).
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, result in results.items():
        point = result["geometry"]
        ax.scatter(
            point["uniformity"],
            point["alignment"],
            s=40,
            label=f"{label} (probe {100 * result['linear_probe']['test_accuracy']:.1f}%)",
            **(styles or {}).get(label, {}),
        )
    ax.set_xlabel("uniformity (lower: more spread)")
    ax.set_ylabel("alignment (lower: views closer)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def embed_2d(features: torch.Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D embedding of features ``[N, D]`` by t-SNE (perplexity 30, PCA init) or PCA."""
    x = features.double().numpy()
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=30, init="pca", random_state=seed).fit_transform(x)


def plot_embedding(
    points: np.ndarray,
    labels: torch.Tensor,
    title: str,
    ax: plt.Axes | None = None,
    class_names: tuple[str, ...] = SERIES_CLASSES,
) -> plt.Figure:
    """Scatter of 2-D points coloured by class, with a legend of class names."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(class_names):
        mask = (labels == c).numpy()
        ax.scatter(points[mask, 0], points[mask, 1], s=4, color=colours(c), label=name, alpha=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def show_retrieval(
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    query_labels: torch.Tensor,
    neighbour_labels: torch.Tensor,
    title: str = "Nearest neighbours in feature space",
    class_names: tuple[str, ...] = SERIES_CLASSES,
) -> plt.Figure:
    """One row per query: the query, then its neighbours; a neighbour of another class is framed red."""
    n_queries, k = neighbours.shape[:2]
    fig, axes = plt.subplots(n_queries, k + 1, figsize=((k + 1) * 1.1, n_queries * 1.2))
    for i in range(n_queries):
        row = [queries[i : i + 1]] + [neighbours[i, j : j + 1] for j in range(k)]
        for j, ax in enumerate(axes[i]):
            _draw_image(ax, _as_images(row[j])[0])
            if j > 0 and neighbour_labels[i, j - 1] != query_labels[i]:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
        axes[i, 0].set_ylabel(class_names[query_labels[i]], rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("query", fontsize=9)
    for j in range(1, k + 1):
        axes[0, j].set_title(f"#{j}", fontsize=9)
    fig.suptitle(title + " (red frame: another class)")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, name: str) -> None:
    """Save ``fig`` as ``images/<name>.png`` in the repository, where the README shows it, when that file
    does not exist yet or ``$SSLKIT_SAVE_FIGURES`` is 1 (``make notebooks`` sets it). Otherwise running a
    notebook (a reader, or the tests) never rewrites the committed figures."""
    if not IMAGES_DIR.is_dir():
        raise FileNotFoundError(f"{IMAGES_DIR} does not exist: save_figure writes into a checkout of the repository")
    path = IMAGES_DIR / f"{name}.png"
    if path.exists() and os.environ.get("SSLKIT_SAVE_FIGURES") != "1":
        return
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})


def plot_label_efficiency(results: dict[str, dict], title: str = "Fine-tuning with few labels") -> plt.Figure:
    """Validation-accuracy learning curves of low-label fine-tuning, one panel per label fraction.

    ``results`` maps a name (``"random"`` and ``"random_vit"`` are drawn as *from scratch*) to its manifest
    ``results["fine_tune"]``. Each line is the mean over seeds, the band spans the seeds, and the
    legend gives the test accuracy as mean ± std.
    """
    fractions = list(next(iter(results.values()))["fractions"])
    fig, axes = plt.subplots(1, len(fractions), figsize=(5.5 * len(fractions), 3.8), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for name, result in results.items():
            entry = result["fractions"][fraction]
            steps = [point["step"] for point in entry["curves"][0]]
            curves = 100 * np.array([[point["validation_accuracy"] for point in curve] for curve in entry["curves"]])
            label = {"random": "from scratch", "random_vit": "ViT from scratch"}.get(name, name)
            (line,) = ax.plot(
                steps,
                curves.mean(axis=0),
                marker="o",
                markersize=3,
                label=f"{label}: test {100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}%",
            )
            ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
        ax.set_title(f"{float(fraction):.0%} of the labels ({entry['labels']:,} images)")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# The kinds of block a diagram draws, and their colours: data, trained networks, parts that are
# thrown away after pretraining (heads, decoders), objectives, and what is not trained by gradients.
DIAGRAM_COLOURS = {
    "data": "#e8e8e8",
    "network": "#9ecae1",
    "head": "#fdd0a2",
    "loss": "#fc9272",
    "fixed": "#c7e9c0",
}
DIAGRAM_LEGEND = {
    "data": "data",
    "network": "encoder: kept after pretraining",
    "head": "head or decoder: thrown away",
    "loss": "objective",
    "fixed": "not trained by gradients",
}


def draw_diagram(
    boxes: dict[str, tuple[float, float, str, str]],
    arrows: list[tuple],
    title: str | None = None,
    size: tuple[float, float] = (10, 3),
) -> plt.Figure:
    """A block diagram of a method, from the blocks a notebook lists.

    Args:
        boxes: ``name -> (x, y, text, kind)``: the centre of a block in axes units (0 to 1), its
            text, and its kind, one of ``DIAGRAM_COLOURS`` (data, network, head, loss, fixed).
        arrows: ``(from, to)`` or ``(from, to, label)``, optionally with a fourth item ``"dashed"``
            (no gradient flows back along it, e.g. a stop-gradient).
        title: above the diagram.
    """
    unknown = {kind for *_, kind in boxes.values()} - set(DIAGRAM_COLOURS)
    if unknown:
        raise ValueError(f"unknown block kinds {sorted(unknown)}; use {', '.join(DIAGRAM_COLOURS)}")
    missing = {name for arrow in arrows for name in arrow[:2]} - set(boxes)
    if missing:
        raise ValueError(f"arrows name blocks that do not exist: {sorted(missing)}")
    fig, ax = plt.subplots(figsize=size)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
    texts = {
        name: ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=9,
            zorder=2,
            bbox={"boxstyle": "round,pad=0.45", "facecolor": DIAGRAM_COLOURS[kind], "edgecolor": "#555555"},
        )
        for name, (x, y, text, kind) in boxes.items()
    }
    for source, target, *rest in arrows:
        label = rest[0] if rest else None
        style = "--" if "dashed" in rest[1:] else "-"
        start, end = boxes[source][:2], boxes[target][:2]
        arrow = FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=12,
            linestyle=style,
            color="#333333",
            zorder=3,
            patchA=texts[source].get_bbox_patch(),
            patchB=texts[target].get_bbox_patch(),
        )
        ax.add_patch(arrow)
        if label:
            middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
            ax.annotate(
                label,
                middle,
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="#333333",
                zorder=4,
            )
    kinds = [kind for kind in DIAGRAM_COLOURS if any(box[3] == kind for box in boxes.values())]
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=DIAGRAM_COLOURS[kind], edgecolor="#555555") for kind in kinds]
    ax.legend(
        handles,
        [DIAGRAM_LEGEND[kind] for kind in kinds],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(kinds),
        frameon=False,
        fontsize=8,
    )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
