"""One small class per technique: its modules and its training step.

A method owns the shared encoder plus its own heads, and turns a batch of images (and, for the
supervised baseline only, labels) into a scalar loss. Everything else (optimizer, schedule,
checkpoints, progress bar) is the one loop in ``train.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment import SIMCLR_AUGMENT, SUPERVISED_AUGMENT, AugmentConfig, augment
from .data import NUM_CLASSES
from .losses import nt_xent_loss
from .models import ProjectionHead, build_encoder


class Method(nn.Module):
    """Base class: ``encoder`` is what gets shipped and evaluated; heads are the method's own."""

    name: str = ""
    uses_labels: bool = False
    # Optimisation recipe for the shipped weights (batch size and epochs are the common budget).
    recipe: dict = {}

    def __init__(self, encoder_config: dict | None = None):
        super().__init__()
        self.encoder = build_encoder(encoder_config)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor | None, generator=None) -> dict:
        """Float images ``[B, 1, 28, 28]`` in ``[0, 1]`` → dict with a scalar ``"loss"`` (and extras)."""
        raise NotImplementedError

    def config(self) -> dict:
        """Everything needed to rebuild the method: stored in checkpoints and the manifest."""
        return {"encoder": self.encoder.config()}


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): two augmented views per image, projector, NT-Xent."""

    name = "simclr"
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}

    def __init__(
        self,
        encoder_config: dict | None = None,
        temperature: float = 0.3,
        projector_hidden_dim: int = 512,
        projector_out_dim: int = 128,
        augment_config: AugmentConfig = SIMCLR_AUGMENT,
    ):
        super().__init__(encoder_config)
        self.temperature = temperature
        self.augment_config = augment_config
        self.projector = ProjectionHead(self.encoder.feature_dim, projector_hidden_dim, projector_out_dim)

    def training_step(self, images, labels=None, generator=None):
        view1 = augment(images, self.augment_config, generator)
        view2 = augment(images, self.augment_config, generator)
        # One forward pass for both views: BatchNorm sees all 2N views, like SimCLR's global BN.
        z1, z2 = self.projector(self.encoder(torch.cat([view1, view2]))).chunk(2)
        return {"loss": nt_xent_loss(z1, z2, self.temperature)}

    def config(self):
        return {
            **super().config(),
            "temperature": self.temperature,
            "projector_hidden_dim": self.projector.net[0].out_features,
            "projector_out_dim": self.projector.net[-1].out_features,
            "augment": self.augment_config.to_dict(),
        }


class Supervised(Method):
    """The ceiling baseline: the same encoder and a linear classifier trained end to end on labels."""

    name = "supervised"
    uses_labels = True
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}

    def __init__(self, encoder_config: dict | None = None, augment_config: AugmentConfig = SUPERVISED_AUGMENT):
        super().__init__(encoder_config)
        self.augment_config = augment_config
        self.classifier = nn.Linear(self.encoder.feature_dim, NUM_CLASSES)

    def training_step(self, images, labels=None, generator=None):
        if labels is None:
            raise ValueError("the supervised baseline needs labels")
        logits = self.classifier(self.encoder(augment(images, self.augment_config, generator)))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}

    def config(self):
        return {**super().config(), "augment": self.augment_config.to_dict()}


METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, Supervised)}


def build_method(name: str, **kwargs) -> Method:
    """Instantiate a trainable method by name (``simclr``, ``supervised``, ...)."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}; trainable methods are: {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](**kwargs)
