"""SimSiam, BYOL, Barlow Twins and DINO: each loss against an explicit loop and an independent library,
the teacher's moving average exact (also under resume), and a few steps that lower each loss."""

import math

import pytest
import torch
import torch.nn.functional as F

import sslkit.methods
import sslkit.train
from sslkit.augment import augment
from sslkit.data import to_float
from sslkit.ema import follow, frozen_copy, momentum_at
from sslkit.losses import (
    barlow_twins_loss,
    byol_loss,
    cross_correlation,
    dino_loss,
    negative_cosine,
    simsiam_loss,
    updated_center,
)
from sslkit.methods import BYOL, DINO, BarlowTwins, SimSiam
from sslkit.models import encoder_config
from sslkit.pipeline import monitor
from sslkit.train import TrainConfig, build_optimizer, train


def pairs(n=12, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator, dtype=torch.float64) for _ in range(4)]


# ------------------------------------------------------------------------------------- losses


def test_negative_cosine_is_minus_the_mean_cosine_written_as_a_loop():
    p, z, _, _ = pairs()
    expected = -sum(
        sum(p[i, k] * z[i, k] for k in range(p.shape[1])) / (p[i].norm() * z[i].norm()) for i in range(len(p))
    ) / len(p)
    assert negative_cosine(p, z).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_stop_gradient_keeps_the_target_out_of_the_gradient():
    p, z, _, _ = (x.float().requires_grad_() for x in pairs())
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad.abs().sum() > 0
    simsiam_loss(p, p, z, z, stop_gradient=False).backward()
    assert z.grad.abs().sum() > 0


def test_byol_loss_is_the_squared_distance_of_normalised_vectors_both_ways():
    p1, p2, z1, z2 = pairs()
    expected = sum(
        (p[i] / p[i].norm() - z[i] / z[i].norm()).pow(2).sum() for p, z in ((p1, z2), (p2, z1)) for i in range(len(p1))
    ) / len(p1)
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(expected.item(), rel=1e-5)
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(4 + 4 * simsiam_loss(p1, p2, z1, z2).item(), rel=1e-6)
    assert byol_loss(z2, z1, z1, z2).item() == pytest.approx(0.0, abs=1e-6)  # predictions equal to the targets


def test_simsiam_and_byol_losses_equal_lightlys():
    from lightly.loss import NegativeCosineSimilarity

    p1, p2, z1, z2 = (x.float() for x in pairs())
    lightly = NegativeCosineSimilarity()
    expected = (lightly(p1, z2.detach()) + lightly(p2, z1.detach())) / 2  # lightly's SimSiam and BYOL examples
    torch.testing.assert_close(simsiam_loss(p1, p2, z1, z2), expected)


def test_the_cross_correlation_is_eq_2_of_the_paper_written_as_a_loop():
    z1, z2, _, _ = pairs(n=10, d=4)
    a, b = z1 - z1.mean(0), z2 - z2.mean(0)
    for i in range(4):
        for j in range(4):
            expected = (a[:, i] * b[:, j]).sum() / (a[:, i].pow(2).sum().sqrt() * b[:, j].pow(2).sum().sqrt())
            assert cross_correlation(z1, z2)[i, j].item() == pytest.approx(expected.item(), rel=1e-4)


def test_barlow_twins_loss_is_eq_1_and_equals_lightlys():
    from lightly.loss import BarlowTwinsLoss

    z1, z2, _, _ = (x.float() for x in pairs(n=16, d=5))
    c = cross_correlation(z1, z2)
    invariance = sum((1 - c[i, i]) ** 2 for i in range(5))
    redundancy = sum(c[i, j] ** 2 for i in range(5) for j in range(5) if i != j)
    terms = barlow_twins_loss(z1, z2, 0.05)
    assert terms["invariance"].item() == pytest.approx(invariance.item(), rel=1e-5)
    assert terms["redundancy"].item() == pytest.approx(redundancy.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((invariance + 0.05 * redundancy).item(), rel=1e-5)
    torch.testing.assert_close(terms["loss"], BarlowTwinsLoss(lambda_param=0.05)(z1, z2), rtol=1e-4, atol=1e-5)


def test_barlow_twins_scores_collapse_at_d_and_identical_decorrelated_views_near_zero():
    collapsed = torch.ones(32, 8)
    assert barlow_twins_loss(collapsed, collapsed)["loss"].item() == pytest.approx(8.0)
    z = torch.linalg.qr(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))[0]  # orthogonal columns
    z = 8 * (z - z.mean(0))  # variance near 1, far above BatchNorm's ε
    terms = barlow_twins_loss(z, z)
    assert terms["invariance"].item() < 1e-6 and terms["redundancy"].item() < 0.1
    with pytest.raises(ValueError, match="non-negative"):
        barlow_twins_loss(z, z, -1.0)


# ------------------------------------------------------------------------------------- the teacher


def test_the_momentum_rises_on_a_cosine_from_its_base_to_one():
    assert momentum_at(0.0, 0.99) == 0.99 and momentum_at(1.0, 0.99) == 1.0
    assert momentum_at(0.5, 0.99) == pytest.approx(0.995)
    assert momentum_at(0.25, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        momentum_at(0.0, 1.5)


def test_the_teacher_moves_a_fraction_one_minus_tau_towards_the_student():
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 4))  # the student's running statistics change
    teacher(torch.randn(8, 4) + 5)  # the teacher's own, from other inputs
    before = [p.clone().double() for p in teacher.parameters()]
    own_statistics = [b.clone() for b in teacher.buffers()]
    follow(teacher, student, 0.9)
    for old, new, target in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new.double(), 0.9 * old + 0.1 * target.double(), rtol=1e-6, atol=1e-7)
    for ours, kept in zip(teacher.buffers(), own_statistics, strict=True):
        assert torch.equal(ours, kept)  # the teacher's running statistics are its own
    assert not torch.equal(teacher[1].running_mean, student[1].running_mean)


def byol(**settings):
    torch.manual_seed(0)
    return BYOL(encoder_config("fashion-mnist"), projector_hidden_dim=32, predictor_hidden_dim=16, **settings)


def test_the_optimiser_never_sees_the_teacher():
    method = byol()
    optimised = {id(p) for group in build_optimizer(method, TrainConfig()).param_groups for p in group["params"]}
    teacher = {id(p) for module in (method.teacher_encoder, method.teacher_projector) for p in module.parameters()}
    assert not optimised & teacher and optimised == {id(p) for p in method.parameters() if p.requires_grad}


def test_a_training_step_moves_the_teacher_by_the_scheduled_momentum(train_data, monkeypatch):
    images, _ = train_data
    method = byol(base_momentum=0.9)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=32, warmup_epochs=0, lr=0.05)
    recorded = []
    original = sslkit.methods.follow

    def spy(teacher, student, momentum):
        recorded.append(
            (momentum, [p.clone() for p in teacher.parameters()], [p.clone() for p in student.parameters()])
        )
        original(teacher, student, momentum)

    monkeypatch.setattr(sslkit.methods, "follow", spy)
    train(method, images[:64], None, config, "cpu", progress=False)
    # two steps, each moving the encoder's and the projector's teacher: progress 1/2, then 1 (τ = 1)
    assert [m for m, _, _ in recorded] == pytest.approx([momentum_at(k / 2, 0.9) for k in (1, 1, 2, 2)])
    assert recorded[-1][0] == 1.0  # the last step leaves the teacher where the first one put it
    momentum, teacher_before, student = recorded[1]  # the projector's teacher after step 1, τ = 0.95
    for old, new, target in zip(teacher_before, method.teacher_projector.parameters(), student, strict=True):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * target)


def test_constant_momentum_zero_makes_the_teacher_the_student_and_one_freezes_it(train_data):
    images, _ = train_data
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=32, warmup_epochs=0, lr=0.05)
    copied, frozen = byol(base_momentum=0.0, constant_momentum=True), byol(base_momentum=1.0, constant_momentum=True)
    initial = [p.clone() for p in frozen.teacher_encoder.parameters()]
    for method in (copied, frozen):
        train(method, images[:64], None, config, "cpu", progress=False)
    for ours, theirs in zip(copied.teacher_encoder.parameters(), copied.encoder.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(frozen.teacher_encoder.parameters(), initial, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("build", [byol, lambda: dino()], ids=["byol", "dino"])
def test_a_resumed_run_ends_bitwise_where_an_uninterrupted_one_does_teacher_and_center_included(
    train_data, tmp_path, train_until_the_first_checkpoint, build
):
    images, _ = train_data
    config = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=32, warmup_epochs=0, lr=0.05)
    uninterrupted = build()
    train(uninterrupted, images[:256], None, config, "cpu", tmp_path / "a.ckpt", progress=False)
    train_until_the_first_checkpoint(build(), images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    resumed = build()
    with torch.no_grad():
        for parameter in resumed.parameters():
            parameter.add_(1.0)  # a different starting point: resume must overwrite everything
    train(resumed, images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    state = resumed.state_dict()
    assert any(name.startswith("teacher_") for name in state)  # the teacher is in the checkpoint
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, state[name]), name


# ------------------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "build",
    [
        lambda: SimSiam(encoder_config("fashion-mnist"), projector_hidden_dim=64, predictor_hidden_dim=32),
        lambda: byol(),
        lambda: BarlowTwins(encoder_config("fashion-mnist"), projector_dim=64),
        lambda: dino(base_momentum=1.0, centering=False),  # fixed targets: the student must come closer
    ],
    ids=["simsiam", "byol", "barlow_twins", "dino"],
)
def test_a_few_steps_decrease_each_loss_on_a_fixed_batch(small_batch, build):
    torch.manual_seed(0)
    images, _ = small_batch
    method = build().train()
    config = TrainConfig(**method.recipe)
    optimizer = build_optimizer(method, config)

    def loss_on_fixed_views():
        return method.training_step(images, None, torch.Generator().manual_seed(0))["loss"]

    before = loss_on_fixed_views().item()
    for _ in range(5):
        loss = loss_on_fixed_views()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(0.0)
    assert loss_on_fixed_views().item() < before


def test_the_output_spread_is_reported_and_near_one_over_root_d_at_initialisation(small_batch):
    torch.manual_seed(0)
    images, _ = small_batch
    method = SimSiam(encoder_config("fashion-mnist"), projector_out_dim=64).train()
    spread = method.training_step(images, None, torch.Generator().manual_seed(0))["output_std"].item()
    assert 0.5 / math.sqrt(64) < spread < 1.5 / math.sqrt(64)
    assert F.normalize(torch.ones(4, 64), dim=1).std(dim=0).mean() == 0  # what a collapsed output reports


def test_the_ablations_build_and_bad_settings_say_what_is_wrong():
    config = encoder_config("fashion-mnist")
    assert isinstance(SimSiam(config, predictor_hidden_dim=0).predictor, torch.nn.Identity)
    with pytest.raises(ValueError, match="predictor_hidden_dim must be 0"):
        SimSiam(config, predictor_hidden_dim=-1)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        BYOL(config, base_momentum=-0.1)
    rebuilt = BYOL.from_config(byol(base_momentum=0.9).config())
    assert rebuilt.base_momentum == 0.9 and rebuilt.predictor_hidden_dim == 16


# ------------------------------------------------------------------------------------- DINO


def dino_logits(views=4, teachers=2, n=6, k=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(views, n, k, generator=generator), torch.randn(teachers, n, k, generator=generator)


def test_dino_loss_is_the_cross_entropy_over_pairs_of_different_views_written_as_a_loop():
    student, teacher = dino_logits()
    center = torch.randn(5, generator=torch.Generator().manual_seed(1))
    terms = dino_loss(student, teacher, center, 0.1, 0.04)
    losses, kls, entropies = [], [], []
    for i in range(2):
        for j in range(4):
            if i == j:
                continue
            for b in range(6):
                p_t = [math.exp((teacher[i, b, k] - center[k]) / 0.04) for k in range(5)]
                p_t = [p / sum(p_t) for p in p_t]
                p_s = [math.exp(student[j, b, k] / 0.1) for k in range(5)]
                p_s = [p / sum(p_s) for p in p_s]
                losses.append(-sum(t * math.log(s) for t, s in zip(p_t, p_s, strict=True)))
                kls.append(sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True) if t > 0))
                entropies.append(-sum(t * math.log(t) for t in p_t if t > 0))
    assert terms["loss"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-4, abs=1e-6)
    assert terms["teacher_entropy"].item() == pytest.approx(sum(entropies) / len(entropies), rel=1e-4)


def test_prototypes_in_use_counts_the_prototypes_the_teacher_spreads_the_images_over():
    k, n = 8, 6
    student = torch.zeros(3, n, k)
    one_each = torch.eye(k)[:n].expand(2, n, k) * 50  # image b sharply on prototype b: n prototypes, evenly
    one_for_all = torch.zeros(2, n, k)
    one_for_all[..., 3] = 50  # every image sharply on prototype 3
    uniform = torch.zeros(2, n, k)
    for logits, expected, entropy in ((one_each, n, 0.0), (one_for_all, 1, 0.0), (uniform, k, math.log(k))):
        terms = dino_loss(student, logits, torch.zeros(k))
        assert terms["prototypes_in_use"].item() == pytest.approx(expected, rel=1e-4)
        assert terms["teacher_entropy"].item() == pytest.approx(entropy, abs=1e-4)
    # against the formula exp(−Σ p̄ log p̄), p̄ the teacher's distributions averaged over views and images
    _, teacher = dino_logits()
    center = torch.randn(5, generator=torch.Generator().manual_seed(2))
    p = [[[math.exp((teacher[v, b, j] - center[j]) / 0.04) for j in range(5)] for b in range(6)] for v in range(2)]
    mean = [sum(row[j] / sum(row) for rows in p for row in rows) / 12 for j in range(5)]
    expected = math.exp(-sum(m * math.log(m) for m in mean if m > 0))
    terms = dino_loss(torch.randn(4, 6, 5), teacher, center, 0.1, 0.04)
    assert terms["prototypes_in_use"].item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_and_center_equal_lightlys():
    from lightly.loss import DINOLoss

    student, teacher = dino_logits(k=7)
    lightly = DINOLoss(output_dim=7, teacher_temp=0.04, warmup_teacher_temp=0.04, student_temp=0.1)
    expected = lightly(list(teacher), list(student))  # its center starts at 0, then moves
    torch.testing.assert_close(dino_loss(student, teacher, torch.zeros(7))["loss"], expected)
    center = updated_center(torch.zeros(7), teacher.flatten(0, 1).mean(dim=0), 0.9)
    torch.testing.assert_close(center, lightly.center.flatten())


def test_dino_gradients_reach_the_student_only():
    student, teacher = (x.requires_grad_() for x in dino_logits())
    dino_loss(student, teacher, torch.zeros(5))["loss"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_dino_refuses_shapes_and_temperatures_that_do_not_fit():
    student, teacher = dino_logits()
    with pytest.raises(ValueError, match=r"teacher logits \[G, N, K\]"):
        dino_loss(student, teacher[:, :3], torch.zeros(5))
    with pytest.raises(ValueError, match="temperature must be positive"):
        dino_loss(student, teacher, torch.zeros(5), teacher_temperature=0)


def dino(**settings):
    torch.manual_seed(0)
    return DINO(encoder_config("fashion-mnist"), prototypes=64, head_hidden_dim=32, bottleneck_dim=16, **settings)


def test_a_dino_step_sees_global_and_local_crops_and_moves_the_center(small_batch, monkeypatch):
    images, _ = small_batch
    method = dino(local_crops=3, local_size=12).train()
    seen = []
    monkeypatch.setattr(method.encoder, "features", lambda x, f=method.encoder.features: seen.append(x.shape) or f(x))
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_encoder(torch.zeros(1, 1, 28, 28)))  # warm nothing up
    terms = method.training_step(images, None, torch.Generator().manual_seed(0))
    assert seen == [(128, 1, 28, 28), (192, 1, 12, 12)]  # 2 global crops of 64 images, then 3 local ones
    assert set(terms) == {"loss", "teacher_entropy", "kl", "prototypes_in_use"}
    assert 0 < terms["teacher_entropy"] < math.log(64) and 1 < terms["prototypes_in_use"] <= 64
    assert teacher.shape == (1, 64) and method.center.abs().sum() > 0
    unchanged = dino(centering=False).train()
    unchanged.training_step(images, None, torch.Generator().manual_seed(0))
    assert unchanged.center.abs().sum() == 0


def test_the_center_after_one_step_is_a_tenth_of_the_teachers_mean_output(small_batch):
    images, _ = small_batch
    method = dino().train()
    generator = torch.Generator().manual_seed(0)
    method.training_step(images, None, generator)
    generator = torch.Generator().manual_seed(0)
    views = torch.cat([augment(images, method.augment_config, generator) for _ in range(2)])
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_encoder(views))
    torch.testing.assert_close(method.center, 0.1 * teacher.mean(dim=0))


def test_dino_needs_the_resnet_and_sensible_crops():
    with pytest.raises(ValueError, match="needs the ResNet encoder"):
        DINO(encoder_config("fashion-mnist", "vit"))
    with pytest.raises(ValueError, match="local crops of 8 to 28 pixels"):
        DINO(encoder_config("fashion-mnist"), local_size=4)


def test_dinos_embeddings_are_the_students_prototype_cosines_and_the_monitor_measures_them(train_data):
    images, labels = train_data[0][:640], train_data[1][:640]  # uint8, as the monitor takes them
    method = dino().eval()
    embeddings = method.embed(to_float(images[:64]))
    assert embeddings.shape == (64, 64) and embeddings.abs().max() <= 1 + 1e-5
    record = monitor(method, images, labels, torch.device("cpu"))
    assert set(record) == {"knn_validation_accuracy", "embedding_std", "embedding_effective_rank"}
    assert 0 < record["embedding_std"] and 1 <= record["embedding_effective_rank"] <= 64
