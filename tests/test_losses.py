import math

import pytest
import torch
import torch.nn.functional as F

from sslkit.losses import (
    dcl_loss,
    elbo_loss,
    gaussian_kl,
    nt_xent_loss,
    reconstruction_floor,
    reconstruction_loss,
    vicreg_loss,
)


def nt_xent_by_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """An independent NT-Xent: Eq. 1 of Chen et al. (2020), one anchor at a time, in float64."""
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        partner = (i + n) % n2

        def sim(a, b):
            return torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm()) / temperature

        denominator = sum(torch.exp(sim(i, k)) for k in range(n2) if k != i)
        total = total - torch.log(torch.exp(sim(i, partner)) / denominator)
    return total / n2


@pytest.mark.parametrize("n,d,temperature", [(2, 3, 1.0), (5, 8, 0.5), (16, 32, 0.1)])
def test_nt_xent_matches_explicit_loop(n, d, temperature):
    generator = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    expected = nt_xent_by_loop(z1, z2, temperature)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightlys_ntxentloss(temperature):
    """An independent implementation: lightly's NTXentLoss (the peer pipeline of `bench`)."""
    from lightly.loss import NTXentLoss

    z1, z2 = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(3)).unbind()
    expected = NTXentLoss(temperature=temperature)(z1, z2)
    torch.testing.assert_close(nt_xent_loss(z1, z2, temperature), expected, rtol=1e-5, atol=1e-6)


def test_nt_xent_hand_checked_value():
    # Two images, each with two identical views, images orthogonal: for every anchor the partner
    # has similarity 1 and both negatives similarity 0, so ℓ = -log(e^{1/τ} / (e^{1/τ} + 2)).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    temperature = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert nt_xent_loss(z1, z1.clone(), temperature).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_is_scale_invariant_and_symmetric():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    loss = nt_xent_loss(z1, z2, 0.2)
    assert nt_xent_loss(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(loss.item(), rel=1e-5)
    assert nt_xent_loss(z2, z1, 0.2).item() == pytest.approx(loss.item(), rel=1e-5)


def test_nt_xent_rewards_aligned_views():
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(32, 16, generator=generator)
    aligned = nt_xent_loss(z1, z1 + 0.01 * torch.randn(32, 16, generator=generator), 0.5)
    unrelated = nt_xent_loss(z1, torch.randn(32, 16, generator=generator), 0.5)
    assert aligned < unrelated
    # Unrelated random views: all similarities are near 0, so every anchor's softmax is near
    # uniform over its 2N - 1 candidates and the loss near log(2N - 1).
    assert unrelated.item() == pytest.approx(math.log(2 * 32 - 1), abs=0.5)


def test_nt_xent_gradient_matches_loop():
    generator = torch.Generator().manual_seed(2)
    z1 = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    grad_fast = torch.autograd.grad(nt_xent_loss(z1, z2, 0.3), (z1, z2))
    grad_loop = torch.autograd.grad(nt_xent_by_loop(z1, z2, 0.3), (z1, z2))
    for fast, loop in zip(grad_fast, grad_loop, strict=True):
        # The loss itself runs in float32, so compare at float32 precision.
        assert torch.allclose(fast, loop, atol=1e-5)


def test_nt_xent_computes_in_float32_under_autocast():
    z1, z2 = torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent_loss(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent_by_loop(z1.float(), z2.float(), 0.1).item(), rel=1e-5)


@pytest.mark.parametrize(
    "z1,z2,temperature,message",
    [
        (torch.randn(4, 3), torch.randn(5, 3), 0.5, "same shape"),
        (torch.randn(4), torch.randn(4), 0.5, "same shape"),
        (torch.randn(1, 3), torch.randn(1, 3), 0.5, "at least 2"),
        (torch.randn(4, 3), torch.randn(4, 3), 0.0, "temperature"),
    ],
)
def test_nt_xent_rejects_bad_input(z1, z2, temperature, message):
    with pytest.raises(ValueError, match=message):
        nt_xent_loss(z1, z2, temperature)


def test_nt_xent_equals_cross_entropy_definition():
    # Cross-check with a third formulation: log-softmax over the similarity row without the anchor.
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / 0.7
    losses = []
    for i in range(12):
        others = [k for k in range(12) if k != i]
        log_probabilities = torch.log_softmax(similarity[i, others], dim=0)
        losses.append(-log_probabilities[others.index((i + 6) % 12)])
    assert nt_xent_loss(z1, z2, 0.7).item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


# ------------------------------------------------------------------------------------------- VAE


def test_kl_of_the_prior_itself_is_zero():
    assert gaussian_kl(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0.0


def test_kl_matches_a_hand_computed_example():
    # One latent dimension, μ = 1, σ² = e: ½(1 + e - 1 - 1) = (e - 1) / 2 nats.
    kl = gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert kl.item() == pytest.approx((math.e - 1) / 2, rel=1e-6)


def test_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean, log_variance = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * log_variance))
    prior = torch.distributions.Normal(torch.zeros(6, 5), torch.ones(6, 5))
    expected = torch.distributions.kl_divergence(posterior, prior).sum(dim=1).mean()
    assert gaussian_kl(mean, log_variance).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_loss_is_the_bernoulli_negative_log_likelihood_summed_over_pixels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 28, 28, generator=generator)
    target = torch.rand(3, 1, 28, 28, generator=generator)
    p = torch.sigmoid(logits.double())
    by_hand = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum(dim=(1, 2, 3)).mean()
    assert reconstruction_loss(logits, target).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_reconstruction_loss_is_smallest_at_the_target():
    target = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)).clamp(0.05, 0.95)
    exact = torch.logit(target)
    assert reconstruction_loss(exact, target) < reconstruction_loss(exact + 0.1, target)
    assert reconstruction_loss(exact, target) < reconstruction_loss(exact - 0.1, target)


def test_elbo_is_reconstruction_plus_beta_times_kl():
    generator = torch.Generator().manual_seed(2)
    logits, target = torch.randn(4, 1, 28, 28, generator=generator), torch.rand(4, 1, 28, 28, generator=generator)
    mean, log_variance = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    terms = elbo_loss(logits, target, mean, log_variance, beta=4.0)
    assert terms["reconstruction"].item() == pytest.approx(reconstruction_loss(logits, target).item())
    assert terms["kl"].item() == pytest.approx(gaussian_kl(mean, log_variance).item())
    assert terms["loss"].item() == pytest.approx(terms["reconstruction"].item() + 4.0 * terms["kl"].item(), rel=1e-6)


def test_reconstruction_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        reconstruction_loss(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 14, 14))
    with pytest.raises(ValueError, match=r"\[N, J\]"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="beta"):
        elbo_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=-1)


def test_reconstruction_floor_is_the_loss_of_a_perfect_reconstruction():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[0] = 0  # an all-black image costs nothing
    x = images.float().div(255)[:, None]
    perfect = torch.logit(x.double(), eps=1e-12).float()
    floor = reconstruction_floor(images)
    assert floor.shape == (5,) and floor[0] == 0
    for i in range(1, 5):
        assert reconstruction_loss(perfect[i : i + 1], x[i : i + 1]).item() == pytest.approx(floor[i].item(), rel=1e-4)
    assert torch.allclose(reconstruction_floor(x), floor)  # uint8 or intensities: the same numbers
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reconstruction_floor(x * 2)


# ------------------------------------------------------------------------------------------ DCL


def dcl_by_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """An independent DCL: Eq. 6 of Yeh et al. (2022), one anchor at a time, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        negatives = [k for k in range(n2) if k not in (i, partner)]
        total += -torch.dot(z[i], z[partner]) / temperature + torch.log(
            sum(torch.exp(torch.dot(z[i], z[k]) / temperature) for k in negatives)
        )
    return total / n2


@pytest.mark.parametrize("n,d,temperature", [(2, 3, 1.0), (5, 8, 0.5), (16, 32, 0.1)])
def test_dcl_matches_explicit_loop(n, d, temperature):
    generator = torch.Generator().manual_seed(100 + n * d)
    z1, z2 = torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)
    expected = dcl_by_loop(z1, z2, temperature)
    assert dcl_loss(z1, z2, temperature).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_dcl_hand_checked_value_and_its_gap_to_nt_xent():
    # Two orthogonal images with identical views: every anchor has similarity 1 with its positive
    # and 0 with both negatives, so ℓ = -1/τ + log 2, while NT-Xent keeps e^{1/τ} below the line.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    temperature = 0.5
    assert dcl_loss(z, z.clone(), temperature).item() == pytest.approx(-2.0 + math.log(2.0), rel=1e-6)
    # In general NT-Xent - DCL = mean over anchors of log(1 + e^{s_pos/τ} / Σ_neg e^{s_neg/τ}) > 0.
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    zn = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    similarity = zn @ zn.T / temperature
    partner = torch.cat([torch.arange(8, 16), torch.arange(0, 8)])
    positive = similarity[torch.arange(16), partner]
    negative_mass = torch.stack(
        [similarity[i, [k for k in range(16) if k not in (i, partner[i])]].exp().sum() for i in range(16)]
    )
    gap = torch.log1p(positive.exp() / negative_mass).mean()
    assert (nt_xent_loss(z1, z2, temperature) - dcl_loss(z1, z2, temperature)).item() == pytest.approx(
        gap.item(), rel=1e-5
    )


def test_dcl_gradient_matches_loop_and_is_symmetric():
    generator = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    dcl_loss(a1, a2, 0.3).backward()
    b1, b2 = z1.double().requires_grad_(), z2.double().requires_grad_()
    dcl_by_loop(b1, b2, 0.3).backward()
    torch.testing.assert_close(a1.grad, b1.grad.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a2.grad, b2.grad.float(), rtol=1e-4, atol=1e-6)
    assert dcl_loss(z2, z1, 0.3).item() == pytest.approx(dcl_loss(z1, z2, 0.3).item(), rel=1e-6)


@pytest.mark.parametrize(
    "z1,z2,temperature,message",
    [
        (torch.randn(4, 3), torch.randn(4, 2), 0.5, "same shape"),
        (torch.randn(1, 3), torch.randn(1, 3), 0.5, "at least 2"),
        (torch.randn(4, 3), torch.randn(4, 3), 0.0, "temperature must be positive"),
    ],
)
def test_dcl_rejects_bad_input(z1, z2, temperature, message):
    with pytest.raises(ValueError, match=message):
        dcl_loss(z1, z2, temperature)


# ---------------------------------------------------------------------------------------- VICReg


def vicreg_terms_by_loop(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float, float]:
    """Invariance, variance and covariance of Bardes et al. (2022), Eqs. 1-5, with explicit loops."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance_and_covariance(z):
        means = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        cov = [
            [sum((z[i, a] - means[a]) * (z[i, b] - means[b]) for i in range(n)) / (n - 1) for b in range(d)]
            for a in range(d)
        ]
        hinge = sum(max(0.0, 1.0 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        off_diagonal = sum(cov[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
        return hinge, off_diagonal

    (v1, c1), (v2, c2) = variance_and_covariance(z1), variance_and_covariance(z2)
    return float(invariance), (v1 + v2) / 2, float(c1 + c2)


@pytest.mark.parametrize("n,d,scale", [(4, 3, 1.0), (10, 6, 0.3), (16, 8, 2.0)])
def test_vicreg_terms_match_explicit_loops(n, d, scale):
    generator = torch.Generator().manual_seed(n + d)
    z1 = scale * torch.randn(n, d, generator=generator)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=generator)
    invariance, variance, covariance = vicreg_terms_by_loop(z1, z2)
    terms = vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)
    assert terms["invariance"].item() == pytest.approx(invariance, rel=1e-5)
    assert terms["variance"].item() == pytest.approx(variance, rel=1e-5, abs=1e-7)
    assert terms["covariance"].item() == pytest.approx(covariance, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(25 * invariance + 25 * variance + covariance, rel=1e-5)
    weighted = vicreg_loss(z1, z2, sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5)["loss"]
    assert weighted.item() == pytest.approx(2 * invariance + 3 * variance + 0.5 * covariance, rel=1e-5)


def test_vicreg_limiting_cases():
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(32, 16, generator=generator)
    # Identical views: nothing to make invariant.
    assert vicreg_loss(z, z.clone())["invariance"].item() == 0.0
    # Collapse (every row the same point): every standard deviation is 0, so the hinge is at its
    # maximum 1 - sqrt(1e-4) = 0.99, the covariance is 0, and the loss is 25 · 0.99.
    collapsed = torch.randn(1, 16, generator=generator).expand(32, 16)
    terms = vicreg_loss(collapsed, collapsed.clone())
    assert terms["variance"].item() == pytest.approx(0.99, abs=1e-6)
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-10)
    assert terms["loss"].item() == pytest.approx(25 * 0.99, abs=1e-5)
    # Wide, decorrelated dimensions (standard deviation 3 > 1): the hinge is off.
    spread = 3 * torch.randn(4096, 4, generator=generator)
    assert vicreg_loss(spread, spread + 0.1)["variance"].item() == 0.0
    # Perfectly correlated dimensions: the covariance term sees them; independent ones barely.
    base = torch.randn(4096, 1, generator=generator)
    correlated = vicreg_loss(base.expand(4096, 4), base.expand(4096, 4))["covariance"].item()
    independent = vicreg_loss(torch.randn(4096, 4, generator=generator), torch.randn(4096, 4))["covariance"].item()
    assert correlated == pytest.approx(2 * 12 * base.var().item() ** 2 / 4, rel=1e-4)
    assert independent < 0.01 < correlated


def test_vicreg_gradients_flow_through_every_term_and_reject_bad_input():
    generator = torch.Generator().manual_seed(8)
    z1 = torch.randn(8, 6, generator=generator).requires_grad_()
    z2 = torch.randn(8, 6, generator=generator)
    for key in ("invariance", "variance", "covariance"):
        (grad,) = torch.autograd.grad(vicreg_loss(0.1 * z1, z2)[key], z1)
        assert grad.abs().sum() > 0, key
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))
