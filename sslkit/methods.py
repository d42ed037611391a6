"""One small class per technique, and the one registry of every method and baseline name.

A method owns the shared encoder plus its own heads, and turns a batch of images (and, for the
supervised baseline only, labels) into a scalar loss. Everything else (optimizer, schedule,
checkpoints, progress bar) is the one loop in ``train.py``.

Every constructor argument of a method is kept as an attribute of the same name, so ``config()``
reads them back and ``from_config(config)`` rebuilds the method: the config stored in a checkpoint
or in the manifest is exactly what the constructor was given.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .augment import (
    FLIP_AUGMENT,
    SIMCLR_AUGMENT,
    SUPERVISED_AUGMENT,
    AugmentConfig,
    augment,
    random_rotations,
    with_colour,
)
from .data import DEFAULT_DATASET, dataset_info
from .distributed import global_loss, global_mean
from .ema import follow, frozen_copy, momentum_at
from .losses import (
    barlow_twins_loss,
    byol_loss,
    dcl_loss,
    dino_loss,
    elbo_loss,
    mae_loss,
    nt_xent_loss,
    patch_statistics,
    reconstruction_loss,
    simsiam_loss,
    updated_center,
    vicreg_loss,
)
from .models import (
    HAND_CRAFTED_ARCHITECTURES,
    ConvDecoder,
    DINOHead,
    GaussianHead,
    MAEDecoder,
    ProjectionHead,
    ViTEncoder,
    build_encoder,
    encoder_config,
    patchify,
    random_masking,
    unpatchify,
)


class Method(nn.Module):
    """Base class: ``encoder`` is what gets shipped and evaluated; heads are the method's own."""

    name: str = ""
    uses_labels: bool = False
    # True where the loss compares the images of a batch with each other (or takes its statistics):
    # across processes it is computed on the gathered global batch (``distributed.global_loss``).
    loss_spans_global_batch: bool = False
    # Optimisation recipe for the shipped weights (batch size and epochs are the common budget).
    recipe: dict = {}
    # The views the method trains on unless told otherwise (None: the images as they are);
    # ``build_method`` adds SimCLR's colour jitter to photometric views of RGB images.
    default_views: AugmentConfig | None = None

    def __init__(self, encoder_config: dict):
        super().__init__()
        self.encoder_config = dict(encoder_config)
        self.encoder = build_encoder(encoder_config)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor | None, generator=None) -> dict:
        """Float images ``[B, C, H, W]`` in ``[0, 1]`` → dict with a scalar ``"loss"`` (and extras)."""
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Called by the training loop after every optimiser step, ``progress`` the fraction of the run's
        steps done: where a teacher follows the student (``ema.py``). Nothing for most methods."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, generator=None) -> dict:
        """The training step, as ``forward`` so that ``DistributedDataParallel`` can wrap the method."""
        return self.training_step(images, labels, generator)

    def config(self) -> dict:
        """The constructor's arguments, JSON-ready: stored in checkpoints and the manifest."""
        arguments = {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}
        return {
            name: value.to_dict() if isinstance(value, AugmentConfig) else value for name, value in arguments.items()
        }

    @classmethod
    def from_config(cls, config: dict) -> Method:
        """The method ``config()`` describes, freshly initialised (load a state dict to get trained weights)."""
        views = config.get("augment_config")
        return cls(**{**config, **({"augment_config": AugmentConfig.from_dict(views)} if views else {})})


def _augment_or_identity(images: torch.Tensor, config: AugmentConfig | None, generator) -> torch.Tensor:
    return images if config is None else augment(images, config, generator)


class Autoencoder(Method):
    """A (denoising) autoencoder: encoder → 128-d bottleneck → ``ConvDecoder`` → pixels.

    The pooled features are the bottleneck, so everything the decoder needs to redraw the image
    has to pass through 128 numbers. With ``noise_std > 0`` the encoder sees the image plus
    Gaussian noise and the decoder must redraw the clean image (Vincent et al. 2008), which stops
    the network from copying pixel detail and pushes it towards the shape of the garment. The
    shipped weights use noise of standard deviation 0.2 and random horizontal flips.
    """

    name = "autoencoder"
    recipe = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 2}
    default_views = FLIP_AUGMENT

    def __init__(
        self,
        encoder_config: dict,
        decoder_widths: list[int] | tuple[int, ...] = (64, 32, 16),
        noise_std: float = 0.2,
        augment_config: AugmentConfig | None = default_views,
    ):
        super().__init__(encoder_config)
        if noise_std < 0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        self.decoder_widths, self.noise_std, self.augment_config = list(decoder_widths), noise_std, augment_config
        encoder = self.encoder
        self.decoder = ConvDecoder(encoder.feature_dim, decoder_widths, encoder.in_channels, encoder.image_size)

    def corrupt(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """The encoder's input: the images plus N(0, noise_std²) noise, clipped to [0, 1]."""
        if self.noise_std == 0:
            return images
        noise = torch.randn(images.shape, device=images.device, generator=generator, dtype=images.dtype)
        return (images + self.noise_std * noise).clamp(0, 1)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Intensities ``[N, C, H, W]`` in [0, 1] redrawn from the bottleneck of ``images``."""
        return torch.sigmoid(self.decoder(self.encoder(images)))

    def training_step(self, images, labels=None, generator=None):
        target = _augment_or_identity(images, self.augment_config, generator)
        logits = self.decoder(self.encoder(self.corrupt(target, generator)))
        return {"loss": reconstruction_loss(logits, target)}


class VAE(Method):
    """A variational autoencoder (Kingma and Welling 2014) on the shared encoder.

    Encoder trunk → pooled features h → ``GaussianHead`` → q(z | x) = N(μ(h), diag σ²(h)); one
    reparameterised sample z = μ + σ·ε → ``ConvDecoder`` → Bernoulli logits of the pixels. The
    loss is the negative ELBO with a β weight on the KL term (``losses.elbo_loss``). Like every
    other method, the features evaluated are the pooled trunk features h, not μ.

    β = 0.5 is the recipe search's choice (docs/design.md §13); with β < 1 the loss is no longer a
    bound on log p(x) (β = 1 gives the ELBO itself).
    """

    name = "vae"
    recipe = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 2}

    def __init__(
        self,
        encoder_config: dict,
        latent_dim: int = 32,
        beta: float = 0.5,
        decoder_widths: list[int] | tuple[int, ...] = (64, 32, 16),
        augment_config: AugmentConfig | None = None,
    ):
        super().__init__(encoder_config)
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        self.latent_dim, self.beta, self.decoder_widths = latent_dim, beta, list(decoder_widths)
        self.augment_config = augment_config
        encoder = self.encoder
        self.posterior = GaussianHead(encoder.feature_dim, latent_dim)
        self.decoder = ConvDecoder(latent_dim, decoder_widths, encoder.in_channels, encoder.image_size)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each ``[N, latent_dim]``."""
        return self.posterior(self.encoder(images))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel intensities ``[N, C, H, W]`` in [0, 1] (the Bernoulli means) for latent codes z."""
        return torch.sigmoid(self.decoder(z))

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n images decoded from z ~ N(0, I), the prior."""
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.latent_dim, device=device, generator=generator))

    def training_step(self, images, labels=None, generator=None):
        target = _augment_or_identity(images, self.augment_config, generator)
        mean, log_variance = self.encode(target)
        epsilon = torch.randn(mean.shape, device=mean.device, generator=generator, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_variance) * epsilon  # the reparameterisation trick
        return elbo_loss(self.decoder(z), target, mean, log_variance, self.beta)


class Rotation(Method):
    """Rotation prediction (Gidaris et al. 2018): which of 0°, 90°, 180°, 270° was applied?

    Every image of the batch is shown in one random rotation of the four, and a small MLP head on
    the pooled features classifies it. RotNet shows all four rotations of each image in the same
    batch (their Table 2), at four times the cost per image; with the common budget of 100 epochs
    each image is still seen about 25 times in each rotation. Recognising that a shoe is
    upside down requires knowing what a shoe looks like, which is the feature we are after. The
    MLP head (rather than a linear one) keeps the last, rotation-specific layer out of the encoder.
    """

    name = "rotation"
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}
    default_views = SUPERVISED_AUGMENT

    def __init__(
        self,
        encoder_config: dict,
        head_hidden_dim: int = 256,
        augment_config: AugmentConfig | None = default_views,
    ):
        super().__init__(encoder_config)
        self.head_hidden_dim, self.augment_config = head_hidden_dim, augment_config
        self.head = ProjectionHead(self.encoder.feature_dim, head_hidden_dim, 4)

    def rotation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 4]`` over the rotations 0°, 90°, 180°, 270°."""
        return self.head(self.encoder(images))

    def training_step(self, images, labels=None, generator=None):
        views = _augment_or_identity(images, self.augment_config, generator)
        rotated, rotation_labels = random_rotations(views, generator)
        logits = self.rotation_logits(rotated.contiguous(memory_format=torch.channels_last))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), rotation_labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == rotation_labels).float().mean()}


class JointEmbedding(Method):
    """Two augmented views of each image through the encoder and a head; the loss compares them."""

    loss_spans_global_batch = True
    default_views = SIMCLR_AUGMENT
    augment_config: AugmentConfig

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embeddings the loss sees, ``[N, D]``."""
        raise NotImplementedError

    def embed_two_views(self, images: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        view1 = augment(images, self.augment_config, generator)
        view2 = augment(images, self.augment_config, generator)
        # One forward pass for both views: BatchNorm sees all 2N views, like SimCLR's global BN.
        return self.embed(torch.cat([view1, view2])).chunk(2)


class SimCLR(JointEmbedding):
    """SimCLR (Chen et al. 2020): two augmented views per image, projector, NT-Xent."""

    contrastive_loss = staticmethod(nt_xent_loss)

    name = "simclr"
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}

    def __init__(
        self,
        encoder_config: dict,
        temperature: float = 0.3,
        projector_hidden_dim: int = 512,
        projector_out_dim: int = 128,
        augment_config: AugmentConfig = JointEmbedding.default_views,
    ):
        super().__init__(encoder_config)
        self.temperature, self.augment_config = temperature, augment_config
        self.projector_hidden_dim, self.projector_out_dim = projector_hidden_dim, projector_out_dim
        self.projector = ProjectionHead(self.encoder.feature_dim, projector_hidden_dim, projector_out_dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projector outputs ``[N, projector_out_dim]``: the embeddings the loss sees."""
        return self.projector(self.encoder(images))

    def training_step(self, images, labels=None, generator=None):
        z1, z2 = self.embed_two_views(images, generator)
        return {"loss": global_loss(self.contrastive_loss, z1, z2, self.temperature)}


class DCL(SimCLR):
    """Decoupled contrastive learning (Yeh et al. 2022): SimCLR with the positive pair taken out of
    the softmax's denominator (``losses.dcl_loss``). Encoder, projector, views and recipe are
    SimCLR's, so the two differ only in the objective."""

    name = "dcl"
    contrastive_loss = staticmethod(dcl_loss)


class VICReg(JointEmbedding):
    """VICReg (Bardes et al. 2022): two views, a wide expander, and no negatives at all.

    Collapse (every image mapped to the same point) is prevented by the variance hinge, which keeps
    each embedding dimension's standard deviation over the batch at 1 or more, and redundancy by
    the covariance term, which decorrelates the dimensions. The views are SimCLR's, so the three
    joint-embedding methods differ only in their objective. ``std_coeff=0`` (and ``cov_coeff=0``)
    switch terms off for the collapse demonstration in notebook 06.
    """

    name = "vicreg"
    # AdamW: plain SGD at SimCLR's learning rate diverges within a few steps (the paper uses LARS,
    # which rescales each layer's update; notebook 06 shows it). The runs behind the learning rate
    # are in the manifest (results.sweeps.lr of vicreg).
    recipe = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "warmup_epochs": 5}

    def __init__(
        self,
        encoder_config: dict,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        expander_dim: int = 1024,
        augment_config: AugmentConfig = JointEmbedding.default_views,
    ):
        super().__init__(encoder_config)
        if min(sim_coeff, std_coeff, cov_coeff) < 0:
            raise ValueError(f"VICReg coefficients must be non-negative, got {sim_coeff}, {std_coeff}, {cov_coeff}")
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.expander_dim, self.augment_config = expander_dim, augment_config
        self.expander = ProjectionHead(self.encoder.feature_dim, expander_dim, expander_dim, hidden_layers=2)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Expander outputs ``[N, expander_dim]``: the embeddings the loss sees."""
        return self.expander(self.encoder(images))

    def training_step(self, images, labels=None, generator=None):
        z1, z2 = self.embed_two_views(images, generator)
        return global_loss(vicreg_loss, z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff)


class SimSiam(JointEmbedding):
    """SimSiam (Chen and He 2021): two views through one encoder and projector, a predictor on top,
    and a stop-gradient on the target side (``losses.simsiam_loss``). No negatives and no momentum
    encoder: the stop-gradient and the predictor alone keep the outputs from collapsing (their
    Sec. 4, Fig. 2 and Table 1). The projector is SimCLR's; the predictor an MLP
    out → hidden → out (``predictor_hidden_dim=0``: no predictor, the ablation that collapses).
    ``stop_gradient=False`` is the other collapsing ablation. Each step also reports ``output_std``,
    the mean over dimensions of the standard deviation of the ℓ2-normalised projections: about
    1/√D while the outputs spread over the sphere, 0 when they collapse (their Fig. 2, middle).
    Sized to the series rather than to ImageNet: the predictor widens (128 → 512 → 128) where the
    paper's narrows (2048 → 512 → 2048, Sec. 3, Appendix B), the projector has two layers, as in the
    paper's CIFAR variant (Appendix D), and the predictor's learning rate decays with the others'
    (the paper holds it constant, Table 1c).
    """

    name = "simsiam"
    loss_spans_global_batch = False  # each pair's loss is its own (BatchNorm aside)
    # SGD as in the paper (Sec. 3, "Optimizer": lr 0.05·B/256, weight decay 1e-4, momentum 0.9).
    recipe = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 5}

    def __init__(
        self,
        encoder_config: dict,
        projector_hidden_dim: int = 512,
        projector_out_dim: int = 128,
        predictor_hidden_dim: int = 512,
        stop_gradient: bool = True,
        augment_config: AugmentConfig = JointEmbedding.default_views,
    ):
        super().__init__(encoder_config)
        if predictor_hidden_dim < 0:
            raise ValueError(f"predictor_hidden_dim must be 0 (no predictor) or positive, got {predictor_hidden_dim}")
        self.projector_hidden_dim, self.projector_out_dim = projector_hidden_dim, projector_out_dim
        self.predictor_hidden_dim, self.stop_gradient = predictor_hidden_dim, stop_gradient
        self.augment_config = augment_config
        self.projector = ProjectionHead(self.encoder.feature_dim, projector_hidden_dim, projector_out_dim)
        self.predictor = (
            ProjectionHead(projector_out_dim, predictor_hidden_dim, projector_out_dim)
            if predictor_hidden_dim
            else nn.Identity()
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projector outputs ``[N, projector_out_dim]``: the targets of the other view's prediction."""
        return self.projector(self.encoder(images))

    def targets(self, views: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        """What the predictions are compared with: the projections themselves (the loss stops their gradient)."""
        return projections

    def objective(self, p1, p2, t1, t2) -> torch.Tensor:
        return simsiam_loss(p1, p2, t1, t2, self.stop_gradient)

    def training_step(self, images, labels=None, generator=None):
        views = torch.cat([augment(images, self.augment_config, generator) for _ in range(2)])
        projections = self.embed(views)  # one pass for both views, as in SimCLR
        p1, p2 = self.predictor(projections).chunk(2)
        t1, t2 = self.targets(views, projections).chunk(2)
        output_std = F.normalize(projections.detach().float(), dim=1).std(dim=0).mean()
        return {"loss": self.objective(p1, p2, t1, t2), "output_std": output_std}


class BYOL(SimSiam):
    """BYOL (Grill et al. 2020): SimSiam's predictor, but the targets come from a teacher ("target
    network"): a copy of the encoder and projector that follows them as an exponential moving average
    (``ema.py``), τ rising from ``base_momentum`` to 1 on a cosine (``constant_momentum``: τ stays
    at ``base_momentum``, for the ablations τ = 0, the student itself, and τ = 1, a frozen random
    teacher; their Table 5a). The loss is the normalised mean squared error (``losses.byol_loss``).
    The teacher is part of the state dict, so checkpoints hold it; only the student's encoder is shipped.
    """

    name = "byol"
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}

    def __init__(
        self,
        encoder_config: dict,
        projector_hidden_dim: int = 512,
        projector_out_dim: int = 128,
        predictor_hidden_dim: int = 512,
        base_momentum: float = 0.99,  # the papers start at 0.996 for runs of 10^5 steps or more; ours have 23,400
        constant_momentum: bool = False,
        augment_config: AugmentConfig = JointEmbedding.default_views,
    ):
        super().__init__(
            encoder_config, projector_hidden_dim, projector_out_dim, predictor_hidden_dim, True, augment_config
        )
        momentum_at(0.0, base_momentum)  # a clear error for a momentum outside [0, 1]
        self.base_momentum, self.constant_momentum = base_momentum, constant_momentum
        self.teacher_encoder, self.teacher_projector = frozen_copy(self.encoder), frozen_copy(self.projector)

    def targets(self, views: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher_projector(self.teacher_encoder(views))

    def objective(self, p1, p2, t1, t2) -> torch.Tensor:
        return byol_loss(p1, p2, t1, t2)

    def momentum(self, progress: float) -> float:
        """τ after a fraction ``progress`` of the run's steps."""
        return self.base_momentum if self.constant_momentum else momentum_at(progress, self.base_momentum)

    def after_optimizer_step(self, progress: float) -> None:
        follow(self.teacher_encoder, self.encoder, self.momentum(progress))
        follow(self.teacher_projector, self.projector, self.momentum(progress))


class BarlowTwins(JointEmbedding):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' embeddings,
    computed along the batch, is driven to the identity (``losses.barlow_twins_loss``): each
    dimension invariant to the views, different dimensions decorrelated. The projector is VICReg's
    expander (two hidden layers as wide as the output), and so are the views and the recipe, so the
    two redundancy-reduction objectives differ only in their loss.
    """

    name = "barlow_twins"
    recipe = VICReg.recipe

    def __init__(
        self,
        encoder_config: dict,
        projector_dim: int = 1024,
        redundancy_weight: float = 5e-3,
        augment_config: AugmentConfig = JointEmbedding.default_views,
    ):
        super().__init__(encoder_config)
        self.projector_dim, self.redundancy_weight, self.augment_config = (
            projector_dim,
            redundancy_weight,
            augment_config,
        )
        self.projector = ProjectionHead(self.encoder.feature_dim, projector_dim, projector_dim, hidden_layers=2)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projector outputs ``[N, projector_dim]``: the embeddings the loss sees."""
        return self.projector(self.encoder(images))

    def training_step(self, images, labels=None, generator=None):
        z1, z2 = self.embed_two_views(images, generator)
        return global_loss(barlow_twins_loss, z1, z2, self.redundancy_weight)


class DINO(Method):
    """DINO (Caron et al. 2021): self-distillation with no labels. A student and a teacher (the
    student's moving average, ``ema.py``) each map views of an image to a distribution over K
    prototypes (``models.DINOHead``); the student learns to match, from every view, the teacher's
    distribution of the other global views (``losses.dino_loss``). Multi-crop views: two global
    crops of the full size, seen by both networks, and ``local_crops`` small crops of
    ``local_size`` pixels from ``local_crop_scale`` of the image, seen by the student only (Sec. 3.1).
    Collapse is kept away by centering the teacher's outputs (``centering``; the center is a running
    mean, ``losses.updated_center``) and sharpening them (``teacher_temperature`` below the student's).
    The encoder is the shared ResNet, so that DINO is compared with the others on the same network.
    """

    name = "dino"
    # AdamW as in the paper (Sec. 4 / Appendix: lr 5e-4·B/256, weight decay 0.04 to 0.4 for ViTs);
    # for the ResNet, a constant weight decay.
    recipe = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 5}
    default_views = replace(SIMCLR_AUGMENT, crop_scale=(0.4, 1.0))  # the global crops (the paper's scale)

    def __init__(
        self,
        encoder_config: dict,
        prototypes: int = 1024,
        head_hidden_dim: int = 512,
        bottleneck_dim: int = 64,
        local_crops: int = 4,
        local_size: int = 12,
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        centering: bool = True,
        center_momentum: float = 0.9,
        base_momentum: float = 0.99,  # the papers start at 0.996 for runs of 10^5 steps or more; ours have 23,400
        augment_config: AugmentConfig = default_views,
    ):
        super().__init__(encoder_config)
        if not hasattr(self.encoder, "features"):
            raise ValueError("DINO's local crops are smaller than the images: it needs the ResNet encoder")
        if local_crops < 0 or not 8 <= local_size <= encoder_config["image_size"]:
            raise ValueError(
                f"DINO needs 0 or more local crops of 8 to {encoder_config['image_size']} pixels, "
                f"got {local_crops} of {local_size}"
            )
        momentum_at(0.0, base_momentum)  # a clear error for a momentum outside [0, 1]
        self.prototypes, self.head_hidden_dim, self.bottleneck_dim = prototypes, head_hidden_dim, bottleneck_dim
        self.local_crops, self.local_size, self.local_crop_scale = local_crops, local_size, tuple(local_crop_scale)
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.centering, self.center_momentum, self.base_momentum = centering, center_momentum, base_momentum
        self.augment_config = augment_config
        self.head = DINOHead(self.encoder.feature_dim, head_hidden_dim, bottleneck_dim, prototypes)
        self.teacher_encoder, self.teacher_head = frozen_copy(self.encoder), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(prototypes))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The student's prototype logits ``[N, prototypes]`` (cosines, before the temperature): the
        outputs the loss sees."""
        return self.head(self.encoder(images))

    def local_views(self) -> AugmentConfig:
        return replace(self.augment_config, crop_scale=self.local_crop_scale)

    def training_step(self, images, labels=None, generator=None):
        n = len(images)
        global_views = torch.cat([augment(images, self.augment_config, generator) for _ in range(2)])
        student = [self.embed(global_views)]
        if self.local_crops:
            local_views = torch.cat(
                [augment(images, self.local_views(), generator, self.local_size) for _ in range(self.local_crops)]
            )
            student.append(self.head(self.encoder.features(local_views)))  # each resolution in its own pass
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(global_views))
        terms = dino_loss(
            torch.cat(student).unflatten(0, (-1, n)),
            teacher.unflatten(0, (2, n)),
            self.center,
            self.student_temperature,
            self.teacher_temperature,
        )
        if self.centering:  # after the loss, which uses the center of the steps before
            self.center.copy_(updated_center(self.center, global_mean(teacher.float()), self.center_momentum))
        return terms

    def after_optimizer_step(self, progress: float) -> None:
        momentum = momentum_at(progress, self.base_momentum)
        follow(self.teacher_encoder, self.encoder, momentum)
        follow(self.teacher_head, self.head, momentum)


class MAE(Method):
    """Masked autoencoder (He et al. 2022): hide most patches, redraw them from the rest.

    The image is cut into 4×4 patches (49 tokens); each sample hides a random 75% of them
    (``models.random_masking``); the ViT encoder sees only the visible 12 tokens, and a light
    decoder (``models.MAEDecoder``) fills in mask tokens and predicts every patch's pixels. The
    loss scores the masked patches only (``losses.mae_loss``), against per-patch normalised pixels
    by default. The views are crops and flips only: the masking is the main augmentation.
    """

    name = "mae"
    # AdamW with MAE's weight decay; the runs behind the learning rate are in the manifest
    # (results.sweeps.lr of mae).
    recipe = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05, "warmup_epochs": 5}
    default_views = SUPERVISED_AUGMENT

    def __init__(
        self,
        encoder_config: dict,
        mask_ratio: float = 0.75,
        normalize_target: bool = True,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        augment_config: AugmentConfig | None = default_views,
    ):
        super().__init__(encoder_config)
        if not isinstance(self.encoder, ViTEncoder):
            raise ValueError("MAE needs a ViT encoder: models.encoder_config(dataset, 'vit')")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio, self.normalize_target, self.augment_config = mask_ratio, normalize_target, augment_config
        self.decoder_dim, self.decoder_depth, self.decoder_heads = decoder_dim, decoder_depth, decoder_heads
        encoder = self.encoder
        self.decoder = MAEDecoder(
            encoder.dim,
            encoder.num_patches,
            encoder.patch_size**2 * encoder.in_channels,
            decoder_dim,
            decoder_depth,
            decoder_heads,
        )

    def predict(self, images: torch.Tensor, mask_ratio: float | None = None, generator=None) -> dict:
        """Mask, encode the visible patches, decode all patches.

        Returns ``predictions`` and ``patches`` ``[N, L, P]`` and ``mask`` ``[N, L]`` (1 = masked).
        """
        keep, restore, mask = random_masking(
            images.shape[0],
            self.encoder.num_patches,
            self.mask_ratio if mask_ratio is None else mask_ratio,
            images.device,
            generator,
        )
        predictions = self.decoder(self.encoder.tokens(images, keep), restore)
        return {"predictions": predictions, "patches": patchify(images, self.encoder.patch_size), "mask": mask}

    def reconstruct(self, images: torch.Tensor, mask_ratio: float | None = None, generator=None):
        """``(masked, reconstruction)``, each ``[N, C, H, W]`` in [0, 1], for showing.

        ``masked`` is the input with the hidden patches greyed out; ``reconstruction`` pastes the
        visible patches back and fills the masked ones with the prediction, de-normalised with each
        true patch's own mean and standard deviation when the target was normalised.
        """
        out = self.predict(images, mask_ratio, generator)
        patches, predictions, mask = out["patches"], out["predictions"].float(), out["mask"].unsqueeze(-1)
        if self.normalize_target:
            mean, std = patch_statistics(patches)
            predictions = predictions * std + mean
        size, channels = self.encoder.patch_size, self.encoder.in_channels
        masked = unpatchify(patches * (1 - mask) + 0.5 * mask, size, channels)
        reconstruction = unpatchify(patches * (1 - mask) + predictions.clamp(0, 1) * mask, size, channels)
        return masked, reconstruction

    def training_step(self, images, labels=None, generator=None):
        views = _augment_or_identity(images, self.augment_config, generator)
        out = self.predict(views, generator=generator)
        return {"loss": mae_loss(out["predictions"], out["patches"], out["mask"], self.normalize_target)}


class Supervised(Method):
    """The ceiling baseline: the same encoder and a linear classifier trained end to end on labels.

    Fine-tuning (``finetune.fine_tune``) trains the same model from a pretrained encoder."""

    name = "supervised"
    uses_labels = True
    recipe = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 5}
    default_views = SUPERVISED_AUGMENT

    def __init__(self, encoder_config: dict, num_classes: int, augment_config: AugmentConfig = default_views):
        super().__init__(encoder_config)
        self.num_classes, self.augment_config = num_classes, augment_config
        self.classifier = nn.Linear(self.encoder.feature_dim, num_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.classifier(self.encoder(images))

    def training_step(self, images, labels=None, generator=None):
        if labels is None:
            raise ValueError("the supervised baseline needs labels")
        logits = self.logits(augment(images, self.augment_config, generator))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package knows about a name: its title, family, encoder and class.

    ``method_class`` is None for the baselines with nothing to train (evaluated as built)."""

    name: str
    title: str  # the row name of the results table
    family: str
    architecture: str  # of the encoder: "resnet", "vit", "pixels" or "hog"
    method_class: type[Method] | None = None
    self_supervised: bool = True


SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("autoencoder", "Autoencoder", "reconstruction", "resnet", Autoencoder),
        MethodSpec("vae", "VAE", "reconstruction", "resnet", VAE),
        MethodSpec("rotation", "Rotation prediction", "pretext task", "resnet", Rotation),
        MethodSpec("simclr", "SimCLR", "contrastive", "resnet", SimCLR),
        MethodSpec("dcl", "DCL", "contrastive", "resnet", DCL),
        MethodSpec("vicreg", "VICReg", "non-contrastive", "resnet", VICReg),
        MethodSpec("barlow_twins", "Barlow Twins", "non-contrastive", "resnet", BarlowTwins),
        MethodSpec("mae", "MAE", "masked modelling", "vit", MAE),
        MethodSpec("byol", "BYOL", "self-distillation", "resnet", BYOL),
        MethodSpec("simsiam", "SimSiam", "self-distillation", "resnet", SimSiam),
        MethodSpec("dino", "DINO", "self-distillation", "resnet", DINO),
        MethodSpec("supervised", "Supervised (all labels, ceiling)", "baseline", "resnet", Supervised, False),
        MethodSpec("random", "Random encoder (untrained)", "baseline", "resnet", None, False),
        MethodSpec("random_vit", "Random ViT (untrained, MAE's encoder)", "baseline", "vit", None, False),
        MethodSpec("pixels", "Raw pixels", "baseline", "pixels", None, False),
        MethodSpec("hog", "HOG (hand-crafted: gradient histograms)", "baseline", "hog", None, False),
    )
}
METHODS = tuple(name for name, spec in SPECS.items() if spec.self_supervised)
BASELINES = tuple(name for name, spec in SPECS.items() if not spec.self_supervised)
TRAINABLE = tuple(name for name, spec in SPECS.items() if spec.method_class is not None)
UNTRAINED = tuple(name for name, spec in SPECS.items() if spec.method_class is None)
# Features computed by a fixed formula, with no network: nothing to fine-tune.
HAND_CRAFTED = tuple(name for name, spec in SPECS.items() if spec.architecture in HAND_CRAFTED_ARCHITECTURES)


def spec(name: str) -> MethodSpec:
    """The ``MethodSpec`` of ``name``, with a clear error for unknown names."""
    if name not in SPECS:
        raise ValueError(
            f"unknown method {name!r}; methods are {', '.join(METHODS)}; baselines are {', '.join(BASELINES)}"
        )
    return SPECS[name]


def method_class(name: str) -> type[Method]:
    """The class of a trainable method or baseline (``"simclr"`` → ``SimCLR``)."""
    if spec(name).method_class is None:
        raise ValueError(f"{name!r} has nothing to train; trainable are: {', '.join(TRAINABLE)}")
    return SPECS[name].method_class


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed the global CPU generator inside the block (modules draw their initial weights from it)
    and give the caller's generator state back afterwards; ``None`` leaves it alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_method(name: str, dataset: str = DEFAULT_DATASET, seed: int | None = None, **overrides) -> Method:
    """A trainable method by name (``simclr``, ``supervised``, ...) for ``dataset``, initialised with ``seed``.

    Unless ``overrides`` say otherwise, the encoder takes the dataset's channels, image size and pixel
    statistics (``models.encoder_config``), the supervised head its number of classes, and on colour
    images the photometric views (SimCLR's, shared by DCL and VICReg) add SimCLR's colour jitter and
    grayscale (``augment.with_colour``; geometric views are left as they are).
    """
    cls, info = method_class(name), dataset_info(dataset)
    overrides.setdefault("encoder_config", encoder_config(info, SPECS[name].architecture))
    if cls.uses_labels:
        overrides.setdefault("num_classes", info.num_classes)
    if info.channels == 3 and cls.default_views is not None:
        overrides.setdefault("augment_config", with_colour(cls.default_views))
    with seeded(seed):
        return cls(**overrides)


def build_untrained_encoder(name: str, dataset: str = DEFAULT_DATASET, seed: int | None = None) -> nn.Module:
    """The encoder of a baseline with nothing to train (``random``, ``random_vit``, ``pixels``, ``hog``) for
    ``dataset``; ``hog`` with ``models.HOG_CONFIG``'s settings (``pretrain hog`` chooses its own)."""
    if spec(name).method_class is not None:
        raise ValueError(f"{name!r} is trained: build it with build_method({name!r})")
    with seeded(seed):
        return build_encoder(encoder_config(dataset, SPECS[name].architecture))


def method_from_config(name: str, config: dict) -> Method:
    """``name``'s method rebuilt from a recorded config (a checkpoint's or the manifest's)."""
    return method_class(name).from_config(config)


def initialize_linear(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default initialisation of a ``Linear`` layer (Kaiming-uniform weights with a = √5, biases
    uniform in ±1/√fan_in), drawn from ``generator`` instead of the global one."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(layer.in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def method_settings(name: str) -> tuple[str, ...]:
    """The settings of a method that a run may change (``temperature``, ``beta``, ...): its constructor's
    arguments but for those ``build_method`` derives from the dataset."""
    derived = ("encoder_config", "augment_config", "num_classes")
    return tuple(p for p in inspect.signature(method_class(name)).parameters if p not in derived)
