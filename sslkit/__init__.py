"""sslkit: the helper package of a notebook-first tutorial series on self-supervised learning.

``load_pretrained(name)`` returns the frozen encoder of any method in ``METHODS`` or baseline in
``BASELINES``, verified against ``weights/manifest.json``.
"""

__version__ = "0.1.0"

from .weights import BASELINES, METHODS, load_pretrained  # noqa: E402

__all__ = ["BASELINES", "METHODS", "load_pretrained", "__version__"]
