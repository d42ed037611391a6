"""sslkit: the helper package of a notebook-first tutorial series on self-supervised learning.

``load_pretrained(name)`` returns the frozen encoder of any method in ``METHODS`` or baseline in
``BASELINES``, verified against ``weights/manifest.json``; ``load_pretrained(name, dataset="cifar10")``
the one you trained on another dataset (``python -m sslkit pretrain NAME --dataset cifar10``).
The layout of the package, layer by layer, is in ``docs/design.md``.
"""

from .methods import BASELINES, METHODS  # noqa: E402
from .version import __version__  # noqa: E402
from .weights import load_pretrained  # noqa: E402

__all__ = ["BASELINES", "METHODS", "load_pretrained", "__version__"]
