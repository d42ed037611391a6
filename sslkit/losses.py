"""One function per self-supervised objective, each citing its paper and equation.

All losses compute in float32 with autocast switched off, also when the model trains in mixed
precision: softmaxes over similarities divided by small temperatures overflow in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name} expects two embeddings of the same shape [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"{name} compares a batch's pairs with each other: it needs at least 2, got N={z1.shape[0]}")


def _check_temperature(temperature: float, name: str) -> None:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")


def _similarity_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities / τ of all 2N views ``[2N, 2N]`` (float32), and each view's partner ``[2N]``."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return z @ z.T / temperature, partner


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, Eq. 1).

    The two views of N images give 2N embeddings. For anchor i with positive partner p(i),

        ℓ_i = -log  exp(sim(z_i, z_p(i)) / τ) / Σ_{k ≠ i} exp(sim(z_i, z_k) / τ),

    where sim is the cosine similarity and the sum runs over the other 2N - 1 views: the partner
    and 2N - 2 negatives. The loss is the mean of ℓ_i over all 2N anchors.

    Args:
        z1, z2: projections of the first and second views, ``[N, D]``; row i of each comes from
            the same image.
        temperature: τ > 0.

    Returns:
        Scalar float32 tensor.
    """
    _check_pair(z1, z2, "nt_xent_loss")
    _check_temperature(temperature, "nt_xent_loss")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits, partner = _similarity_logits(z1, z2, temperature)
        self_mask = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, float("-inf"))  # a view is never its own negative
        return F.cross_entropy(logits, partner)


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of the pixels, summed over pixels, averaged over images.

    The decoder outputs one logit per pixel; ``sigmoid(logit)`` is the predicted intensity p and
    each pixel's target intensity x in [0, 1] is scored with the binary cross-entropy

        -log p(x | z) = -Σ_pixels [x log p + (1 - x) log(1 - p)],

    whose minimum over p is at p = x. Grey pixels make this a cross-entropy between intensities
    rather than a normalised density over [0, 1] (the continuous Bernoulli of Loaiza-Ganem and
    Cunningham 2019 adds the missing normaliser); it is the usual choice for MNIST-like images
    because its gradient ``p - x`` stays well scaled where a Gaussian's would need a variance.

    Args:
        logits: decoder outputs ``[N, C, H, W]``.
        target: intensities ``[N, C, H, W]`` in ``[0, 1]``.

    Returns:
        Scalar float32 tensor, in nats per image.
    """
    if logits.shape != target.shape:
        raise ValueError(f"reconstruction_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        return per_pixel.flatten(1).sum(dim=1).mean()


def reconstruction_floor(images: torch.Tensor) -> torch.Tensor:
    """The smallest ``reconstruction_loss`` each image can have: the entropy of its pixels.

    The binary cross-entropy of a pixel of intensity x is smallest at p = x, where it equals the
    binary entropy H(x) = -x log x - (1 - x) log(1 - x), zero only for black or white pixels. So
    even a perfect decoder pays Σ_pixels H(x) nats for an image with grey pixels; read a
    reconstruction loss against this floor.

    Args:
        images: ``uint8`` images ``[N, H, W]`` or intensities in ``[0, 1]`` of any shape ``[N, ...]``.

    Returns:
        ``[N]`` float64 tensor, in nats per image.
    """
    x = images.double() / 255 if images.dtype == torch.uint8 else images.double()
    if x.min() < 0 or x.max() > 1:
        raise ValueError("reconstruction_floor: intensities must lie in [0, 1] (or pass uint8 images)")
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return entropy.flatten(1).sum(dim=1)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL( N(μ, diag σ²) ‖ N(0, I) ) = ½ Σ_j (μ_j² + σ_j² - log σ_j² - 1), averaged over the batch.

    The closed form for diagonal Gaussians (Kingma and Welling 2014, Appendix B), summed over the
    latent dimensions j. It is zero exactly when μ = 0 and σ = 1.

    Args:
        mean, log_variance: ``[N, J]``, the parameters of q(z | x) for each image.

    Returns:
        Scalar float32 tensor, in nats per image.
    """
    if mean.shape != log_variance.shape or mean.ndim != 2:
        raise ValueError(
            f"gaussian_kl expects mean and log-variance [N, J], got {tuple(mean.shape)} and {tuple(log_variance.shape)}"
        )
    with torch.autocast(device_type=mean.device.type, enabled=False):
        mean, log_variance = mean.float(), log_variance.float()
        return 0.5 * (mean.pow(2) + log_variance.exp() - log_variance - 1).sum(dim=1).mean()


def elbo_loss(
    logits: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor, beta: float = 1.0
) -> dict[str, torch.Tensor]:
    """The negative evidence lower bound of a VAE (Kingma and Welling 2014, Eq. 10), with a β weight.

        -ELBO_β(x) = E_q(z|x)[-log p(x | z)] + β · KL(q(z | x) ‖ p(z)),

    with the expectation estimated by one reparameterised sample z = μ + σ·ε (the decoder's
    ``logits`` were computed from it). β = 1 is the ELBO; β > 1 is the β-VAE of Higgins et al. (2017).

    Returns:
        ``{"loss", "reconstruction", "kl"}``, scalars in nats per image.
    """
    if beta < 0:
        raise ValueError(f"elbo_loss: beta must be non-negative, got {beta}")
    reconstruction = reconstruction_loss(logits, target)
    kl = gaussian_kl(mean, log_variance)
    return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}


def dcl_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.3) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al. 2022, Eq. 6): NT-Xent without the positive below the line.

    For anchor i with positive partner p(i) among the 2N views,

        ℓ_i = -sim(z_i, z_p(i)) / τ + log Σ_{k ∉ {i, p(i)}} exp(sim(z_i, z_k) / τ),

    so the denominator holds only the 2N - 2 negatives. In NT-Xent the positive also sits in the
    denominator, which scales every gradient by (1 - q_i), the probability the softmax gives to
    the negatives: when the positive is easy (small batches, few hard negatives) the anchor
    learns little. Removing it decouples the two terms. The loss is the mean of ℓ_i over all 2N
    anchors, so it is symmetric in the two views; unlike NT-Xent it can be negative.

    Args:
        z1, z2: projections of the first and second views, ``[N, D]``; row i of each comes from
            the same image.
        temperature: τ > 0.

    Returns:
        Scalar float32 tensor.
    """
    _check_pair(z1, z2, "dcl_loss")
    _check_temperature(temperature, "dcl_loss")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits, partner = _similarity_logits(z1, z2, temperature)
        positive = logits.gather(1, partner[:, None]).squeeze(1)
        not_negative = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        not_negative[torch.arange(len(logits), device=logits.device), partner] = True
        negatives = logits.masked_fill(not_negative, float("-inf")).logsumexp(dim=1)
        return (negatives - positive).mean()


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> dict[str, torch.Tensor]:
    """VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022, Eqs. 1-6).

    With embeddings Z, Z' ``[N, D]`` of the two views (the expander's outputs):

    - invariance s(Z, Z') = mean over N·D of (z - z')². The paper's Eq. 5 sums over the D
      dimensions and averages over N; the authors' code, followed here, also averages over D,
      which only rescales the coefficient.
    - variance v(Z) = (1/D) Σ_j max(0, 1 - sqrt(Var(z_j) + ε)), ε = 1e-4 (Eq. 1), a hinge that
      keeps every dimension's standard deviation across the batch at 1 or more; averaged over the
      two branches. Collapsed embeddings (all rows equal) give 1 - sqrt(ε) = 0.99, its maximum.
    - covariance c(Z) = (1/D) Σ_{i≠j} C(Z)_ij², C the D×D covariance over the batch (Eqs. 3-4),
      pushing the dimensions to carry different information; summed over the two branches.

    loss = sim_coeff · s + std_coeff · (v(Z) + v(Z')) / 2 + cov_coeff · (c(Z) + c(Z')) (Eq. 6).

    Returns:
        ``{"loss", "invariance", "variance", "covariance"}``, scalar float32 tensors (the terms
        unweighted, as defined above).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"vicreg_loss expects two embeddings of the same shape [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"vicreg_loss needs a batch of at least 2 to estimate variances, got N={z1.shape[0]}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        variance = (_variance_hinge(z1) + _variance_hinge(z2)) / 2
        covariance = _covariance_penalty(z1) + _covariance_penalty(z2)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
        return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}


def _variance_hinge(z: torch.Tensor, epsilon: float = 1e-4) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + epsilon)).mean()


def _covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    covariance = centred.T @ centred / (n - 1)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / d


def patch_statistics(patches: torch.Tensor, epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's mean and standard deviation ``[..., 1]``: sqrt of the unbiased variance + ε, as in
    the MAE code. ``normalized_patches`` divides by them; a reconstruction multiplies them back."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + epsilon).sqrt()


def normalized_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch standardised by its own mean and standard deviation: MAE's normalised-pixel target."""
    mean, std = patch_statistics(patches)
    return (patches - mean) / std


def mae_loss(
    predictions: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, normalize_target: bool = True
) -> torch.Tensor:
    """MAE's reconstruction loss (He et al. 2022, Sec. 3): mean squared error on masked patches only.

        L = Σ_i m_i · ‖x̂_i − t_i‖² / P  /  Σ_i m_i,

    over all patches i of the batch, with m_i = 1 for a masked patch, P values per patch, and
    target t_i the patch's pixels, or (``normalize_target``) the pixels standardised by the patch's
    own mean and variance, which the paper finds gives better representations (their Table 1d, "pixel (w/ norm)").
    Visible patches are not scored: the encoder saw them, predicting them teaches nothing.

    Args:
        predictions: ``[N, L, P]`` the decoder's output for every patch.
        patches: ``[N, L, P]`` the image's patches (``models.patchify``).
        mask: ``[N, L]`` 1 for masked, 0 for visible patches.

    Returns:
        Scalar float32 tensor.
    """
    if predictions.shape != patches.shape or mask.shape != patches.shape[:2]:
        raise ValueError(
            f"mae_loss expects predictions and patches [N, L, P] and mask [N, L], got "
            f"{tuple(predictions.shape)}, {tuple(patches.shape)} and {tuple(mask.shape)}"
        )
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        target = normalized_patches(patches.float()) if normalize_target else patches.float()
        per_patch = (predictions.float() - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """SimSiam's D(p, z) = −(p/‖p‖₂)·(z/‖z‖₂), averaged over the batch (Chen and He 2021, Eq. 1).

    ``z`` is the target: with ``stop_gradient`` (their Eq. 3) no gradient flows into it; without,
    both branches are pulled together, which is the ablation that collapses (their Fig. 2)."""
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(
            f"negative_cosine expects p and z of the same shape [N, D], got {tuple(p.shape)}, {tuple(z.shape)}"
        )
    with torch.autocast(device_type=p.device.type, enabled=False):
        z = z.detach() if stop_gradient else z
        return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, stop_gradient: bool = True
) -> torch.Tensor:
    """SimSiam's symmetrised loss L = ½ D(p₁, stopgrad(z₂)) + ½ D(p₂, stopgrad(z₁)) (Chen and He 2021,
    Eq. 4; Eq. 2 without the stop-gradient): each view's prediction ``p`` is compared with the other
    view's projection ``z``.
    Its minimum is −1, every prediction parallel to its target."""
    return (negative_cosine(p1, z2, stop_gradient) + negative_cosine(p2, z1, stop_gradient)) / 2


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al. 2020, Eq. 2, symmetrised as L + L̃ in Sec. 3.1): the mean squared error
    between the ℓ2-normalised prediction of one view and the normalised target projection of the other,

        ‖p̄ − z̄'‖²₂ = 2 − 2·⟨p, z'⟩ / (‖p‖₂·‖z'‖₂),

    averaged over the batch and summed over the two directions (view 1 predicts view 2's target
    and back). The targets ``z1``, ``z2`` come from the target network and get no gradient. It
    equals 4 + 4·``simsiam_loss``: the two methods differ in the target network, not the objective.
    Range [0, 8]."""
    return 4 + 4 * simsiam_loss(p1, p2, z1, z2, stop_gradient=True)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """The ``[D, D]`` cross-correlation matrix of two embeddings along the batch (Zbontar et al. 2021,
    Eq. 2): each dimension standardised over the batch (mean 0, biased variance 1, as a BatchNorm
    without affine parameters does, with its ε), then C = z̃₁ᵀ z̃₂ / N."""
    n = z1.shape[0]

    def standardised(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + epsilon)

    return standardised(z1).T @ standardised(z2) / n


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, redundancy_weight: float = 5e-3) -> dict[str, torch.Tensor]:
    """Barlow Twins (Zbontar et al. 2021, Eq. 1): drive the cross-correlation matrix C of the two
    views' embeddings (``cross_correlation``, their Eq. 2) to the identity,

        L = Σ_i (1 − C_ii)²  +  λ Σ_i Σ_{j≠i} C_ij²,

    the invariance term (each dimension agrees across the views) and the redundancy-reduction term
    (different dimensions carry different information), weighted by λ = ``redundancy_weight``
    (5·10⁻³ in the paper, for 8,192 dimensions). Collapsed embeddings have no variance: their
    standardised values are 0, C = 0, and the loss is D, its value far from the optimum.

    Returns:
        ``{"loss", "invariance", "redundancy"}``, float32 scalars (the terms unweighted).
    """
    _check_pair(z1, z2, "barlow_twins_loss")
    if redundancy_weight < 0:
        raise ValueError(f"barlow_twins_loss: redundancy_weight must be non-negative, got {redundancy_weight}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        c = cross_correlation(z1.float(), z2.float())
        on_diagonal = torch.diagonal(c)
        invariance = (1 - on_diagonal).pow(2).sum()
        redundancy = c.pow(2).sum() - on_diagonal.pow(2).sum()
        loss = invariance + redundancy_weight * redundancy
        return {"loss": loss, "invariance": invariance, "redundancy": redundancy}


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> dict[str, torch.Tensor]:
    """DINO's self-distillation loss (Caron et al. 2021, Eqs. 1-3).

    The student's output over K prototypes becomes P_s = softmax(g_s / τ_s) (Eq. 1); the teacher's is
    centred and sharpened, P_t = softmax((g_t − c) / τ_t) with τ_t < τ_s (Sec. 3.1, "Avoiding
    collapse"), and is a target: no gradient flows into it. For every teacher view i (the global
    crops) and every student view j ≠ i (global and local crops), the cross-entropy
    H(P_t(x_i), P_s(x_j)) = −Σ_k P_t log P_s (Eqs. 2-3), averaged over the batch and the pairs.

    Args:
        student_logits: ``[V, N, K]``, the V views of N images; the first ones are the global crops,
            in the teacher's order.
        teacher_logits: ``[G, N, K]``, the teacher's outputs of the G global crops.
        center: ``[K]``, the running mean of the teacher's outputs (``updated_center``).

    Returns:
        ``{"loss", "teacher_entropy", "kl", "prototypes_in_use"}``: the loss, the mean entropy H(P_t) of
        the teacher's distributions and the mean KL(P_t ‖ P_s) = loss − H(P_t) over the same pairs, the two
        diagnostics of the paper's Fig. 7 (collapse to one prototype: entropy 0; to the uniform
        distribution: entropy log K; either way the KL falls to 0); and exp H(P̄_t), the entropy of the
        teacher's distributions averaged over images and views, exponentiated: how many prototypes the
        teacher spreads the images over (1 when one prototype takes every image, K when they are used
        evenly, whether each image is sharp or uniform).
    """
    if student_logits.ndim != 3 or teacher_logits.ndim != 3 or student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError(
            f"dino_loss expects student logits [V, N, K] and teacher logits [G, N, K], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if len(teacher_logits) > len(student_logits):
        raise ValueError(f"dino_loss: {len(teacher_logits)} teacher views but only {len(student_logits)} student views")
    _check_temperature(student_temperature, "dino_loss")
    _check_temperature(teacher_temperature, "dino_loss")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_student = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
        teacher = F.softmax((teacher_logits.detach().float() - center.float()) / teacher_temperature, dim=-1)
        cross_entropies = [
            -(teacher[i] * log_student[j]).sum(dim=-1).mean()
            for i in range(len(teacher))
            for j in range(len(log_student))
            if j != i
        ]
        loss = torch.stack(cross_entropies).mean()
        entropy = entropy_of(teacher).mean()
        in_use = entropy_of(teacher.flatten(0, 1).mean(dim=0)).exp()
        return {"loss": loss, "teacher_entropy": entropy, "kl": loss - entropy, "prototypes_in_use": in_use}


def entropy_of(probabilities: torch.Tensor) -> torch.Tensor:
    """The entropy −Σ_k p_k log p_k of each distribution over the last dimension, in nats (0 log 0 = 0)."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-30))).sum(dim=-1)


@torch.no_grad()
def updated_center(center: torch.Tensor, batch_mean: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's center after one step: c ← m·c + (1 − m)·(mean of the teacher's outputs over the batch)
    (Caron et al. 2021, Eq. 4), ``batch_mean`` taken over the global batch (``distributed.global_mean``)."""
    return momentum * center + (1 - momentum) * batch_mean
