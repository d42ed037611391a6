"""The evaluation: the protocol (linear probe, kNN, metrics), feature geometry, transfer and fine-tuning."""

import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score

from sslkit.data import validation_split
from sslkit.finetune import FineTuneConfig, fine_tune, fine_tune_subset, low_label_linear_probe
from sslkit.geometry import (
    alignment,
    alignment_and_uniformity,
    effective_rank,
    embedding_diagnostics,
    singular_values,
    uniformity,
)
from sslkit.methods import build_method
from sslkit.models import build_encoder, encoder_config
from sslkit.protocol import (
    LinearProbe,
    accuracy,
    confusion_matrix,
    fit_linear_probe,
    knn_predict,
    macro_f1,
    per_class_accuracy,
    select_and_fit_linear_probe,
)
from sslkit.transfer import transfer_probe


def blobs(n=600, d=8, seed=0, spread=1.5, classes=10):
    """``classes`` Gaussian clusters in d dimensions with labels 0..classes-1."""
    generator = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(classes, d, generator=generator)
    labels = torch.arange(n) % classes
    return centers[labels] + spread * torch.randn(n, d, generator=generator), labels


def test_linear_probe_matches_scikit_learn_logistic_regression():
    features, labels = blobs()
    weight_decay = 1e-3
    probe = fit_linear_probe(features, labels, weight_decay)
    standardised = ((features - probe.mean) / probe.std).numpy()
    # sklearn minimises ½‖W‖² + C·Σ CE; ours minimises mean CE + λ‖W‖², i.e. C = 1 / (2 λ N).
    reference = LogisticRegression(C=1 / (2 * weight_decay * len(labels)), max_iter=5000, tol=1e-10)
    reference.fit(standardised, labels.numpy())
    assert torch.allclose(probe.weight, torch.tensor(reference.coef_, dtype=torch.float32), atol=2e-3)
    assert torch.equal(probe.predict(features), torch.tensor(reference.predict(standardised)))


def test_probe_selection_prefers_validation_accuracy_and_round_trips_through_a_state_dict():
    features, labels = blobs(n=2000, d=16, spread=3.0)
    probe, validation = select_and_fit_linear_probe(features, labels, weight_decays=(1e-4, 10.0))
    assert validation[1e-4] > validation[10.0]  # absurdly strong regularisation loses on validation
    assert probe.weight_decay == 1e-4
    restored = LinearProbe.from_state_dict(probe.state_dict())
    assert torch.equal(restored.logits(features), probe.logits(features))
    with pytest.raises(ValueError, match=r"features \[N, 16\]"):
        probe.logits(features[:, :8])


def test_low_label_probe_fits_the_fine_tuning_subset_and_chooses_on_the_validation_split(train_data):
    labels = train_data[1]
    centers = 3 * torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    features = centers[labels] + 3.0 * torch.randn(len(labels), 16, generator=torch.Generator().manual_seed(1))
    test_labels = torch.arange(1000) % 10
    test_features = centers[test_labels] + 3.0 * torch.randn(1000, 16, generator=torch.Generator().manual_seed(2))
    result = low_label_linear_probe(
        features, labels, test_features, test_labels, 0.01, seed=0, weight_decays=(1e-4, 10.0)
    )
    # By hand: fit on exactly the fine-tuning subset, score both strengths on the validation split.
    subset = fine_tune_subset(labels, 0.01, seed=0)
    _, val_indices = validation_split(labels, 5000)
    scores = {
        wd: accuracy(
            fit_linear_probe(features[subset], labels[subset], wd).predict(features[val_indices]), labels[val_indices]
        )
        for wd in (1e-4, 10.0)
    }
    best = max(scores, key=scores.get)
    assert result["labels"] == len(subset) == 600 and result["weight_decay"] == best
    expected = accuracy(fit_linear_probe(features[subset], labels[subset], best).predict(test_features), test_labels)
    assert result["test_accuracy"] == pytest.approx(expected, abs=1e-3)
    assert 0.5 < result["test_accuracy"] < 1


@pytest.mark.parametrize("classes", [10, 20])
def test_knn_matches_a_brute_force_vote(classes):
    train, train_labels = blobs(n=300, d=6, seed=1, classes=classes)
    query, _ = blobs(n=40, d=6, seed=2, classes=classes)
    k, temperature = 15, 0.1
    expected = []
    for q in query:
        similarity = torch.nn.functional.cosine_similarity(train, q[None], dim=1)
        top = similarity.argsort(descending=True)[:k]
        votes = torch.zeros(classes)
        for i in top:
            votes[train_labels[i]] += torch.exp(similarity[i] / temperature)
        expected.append(votes.argmax())
    assert torch.equal(knn_predict(train, train_labels, query, k=k, temperature=temperature), torch.stack(expected))


def test_probe_and_knn_take_their_classes_from_the_labels_twenty_as_well_as_ten():
    features, labels = blobs(n=1000, d=8, spread=0.3, classes=20)
    query, query_labels = blobs(n=200, d=8, seed=0, spread=0.3, classes=20)
    probe = fit_linear_probe(features, labels, 1e-4)
    assert probe.weight.shape == (20, 8) and probe.bias.shape == (20,)
    assert probe.logits(query).shape == (200, 20)
    for predictions in (probe.predict(query), knn_predict(features, labels, query, k=20)):
        assert set(predictions.tolist()) == set(range(20))  # classes 10 to 19 are predicted too
        assert accuracy(predictions, query_labels) > 0.9


def test_metrics_match_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=generator)
    predictions = torch.where(
        torch.rand(500, generator=generator) < 0.7, labels, torch.randint(0, 10, (500,), generator=generator)
    )
    assert accuracy(predictions, labels) == pytest.approx((predictions == labels).float().mean().item())
    assert macro_f1(predictions, labels) == pytest.approx(f1_score(labels, predictions, average="macro"))
    matrix = confusion_matrix(predictions, labels)
    assert matrix.tolist() == sk_confusion_matrix(labels, predictions, labels=range(10)).tolist()
    expected_recall = matrix.diag().double() / matrix.sum(1)
    assert torch.allclose(per_class_accuracy(predictions, labels), expected_recall)


# ----------------------------------------------------------------------------- label efficiency


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_fine_tune_subsets_are_stratified_seeded_and_outside_validation(train_data, fraction):
    labels = train_data[1]
    subset = fine_tune_subset(labels, fraction, seed=0)
    assert len(subset) == round(fraction * len(labels)) and len(set(subset.tolist())) == len(subset)
    assert torch.equal(subset, fine_tune_subset(labels, fraction, seed=0))  # identical for every method
    assert not torch.equal(subset, fine_tune_subset(labels, fraction, seed=1))  # seeds differ
    counts = torch.bincount(labels[subset], minlength=10)
    assert counts.max() - counts.min() <= 1  # Fashion-MNIST is balanced: equal shares per class
    _, validation = validation_split(labels)
    assert not set(subset.tolist()) & set(validation.tolist())


def test_all_labels_fine_tune_on_every_image_outside_validation(train_data):
    labels = train_data[1]
    _, validation = validation_split(labels)
    subset = fine_tune_subset(labels, 1.0, seed=0)
    assert sorted(subset.tolist() + validation.tolist()) == list(range(len(labels)))


def test_fine_tune_learns_and_is_deterministic(train_data, test_data):
    train_slice = (train_data[0][:2000], train_data[1][:2000])
    test_slice = (test_data[0][:500], test_data[1][:500])
    config = FineTuneConfig(steps=60, batch_size=64, evaluations=3)

    def run():
        torch.manual_seed(0)
        return fine_tune(build_encoder(encoder_config()), train_slice, test_slice, fraction=0.2, seed=0, config=config)

    first, second = run(), run()
    assert first == second
    assert first["labels"] == 400 and first["test_accuracy"] > 0.4  # chance is 0.1
    # 400 labels / 64 = 6 steps an epoch, 10 epochs, evaluated every 3rd epoch and at the end.
    assert [point["step"] for point in first["curve"]] == [18, 36, 54, 60]
    assert first["curve"][-1]["loss"] < first["curve"][0]["loss"]


def test_fine_tuning_leaves_the_global_random_generator_alone(train_data, test_data):
    train_slice = (train_data[0][:500], train_data[1][:500])
    test_slice = (test_data[0][:100], test_data[1][:100])
    config = FineTuneConfig(steps=3, batch_size=32, evaluations=1)
    encoder = build_encoder(encoder_config())
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = fine_tune(encoder, train_slice, test_slice, fraction=0.2, seed=0, config=config)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)  # another global state: the run draws only from its own seed
    assert fine_tune(encoder, train_slice, test_slice, fraction=0.2, seed=0, config=config) == first


# ----------------------------------------------------------------------------------- geometry


def test_alignment_hand_checked_values():
    east, north = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert alignment(east, 5 * east) == 0.0  # same direction: features are L2-normalised first
    assert alignment(east, north) == pytest.approx(2.0)  # ‖e₁ - e₂‖² = 2
    assert alignment(east, -east) == pytest.approx(4.0)  # opposite points, the maximum 2^α
    assert alignment(east, north, alpha=1) == pytest.approx(math.sqrt(2))
    # The mean over pairs: one aligned pair and one orthogonal pair.
    assert alignment(torch.cat([east, east]), torch.cat([east, north])) == pytest.approx(1.0)


def test_uniformity_hand_checked_values():
    # Two opposite points: one pair at squared distance 4, so log e^{-2·4} = -8.
    assert uniformity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)
    # Three points at 120° on the circle: every pair at squared distance 3, so -6.
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    triangle = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert uniformity(triangle) == pytest.approx(-6.0, rel=1e-6)
    assert uniformity(triangle, t=1) == pytest.approx(-3.0, rel=1e-6)
    # Collapse: every feature the same direction, so 0, the worst value.
    assert uniformity(torch.ones(5, 3) * torch.arange(1, 6)[:, None]) == pytest.approx(0.0, abs=1e-12)
    # Two pairs at distances² 2 and 4 (e₁, e₂, -e₁): mean over the 3 pairs of e^{-2 d²}.
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = math.log((2 * math.exp(-4.0) + math.exp(-8.0)) / 3)
    assert uniformity(points) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 64, 1000])
def test_uniformity_in_chunks_equals_the_formula_over_all_pairwise_distances(chunk_size):
    features = torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = 2.0
    distances = torch.nn.functional.pdist(torch.nn.functional.normalize(features, dim=1))  # the N(N-1)/2 pairs
    expected = torch.exp(-t * distances**2).mean().log().item()
    assert abs(uniformity(features, t, chunk_size=chunk_size) - expected) < 1e-12


def test_geometry_is_seeded_and_sees_collapse(test_data):
    images = test_data[0][:200]
    encoder = build_encoder(encoder_config())
    first = alignment_and_uniformity(encoder, images, seed=1)
    assert first == alignment_and_uniformity(encoder, images, seed=1)
    assert alignment_and_uniformity(encoder, images, seed=2) != first
    assert 0 < first["alignment"] < 4 and first["uniformity"] < 0

    class Collapsed(torch.nn.Module):
        def forward(self, x):
            return torch.ones(len(x), 8)

    collapsed = alignment_and_uniformity(Collapsed(), images)
    assert collapsed["alignment"] == 0.0 and collapsed["uniformity"] == pytest.approx(0.0, abs=1e-12)


def test_singular_values_and_effective_rank_hand_checked():
    # Centred features along two orthogonal axes with spreads 3 and 4: singular values 4√2, 3√2.
    features = torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, -4.0, 0.0]]) + 5.0
    values = singular_values(features)
    assert values[:2].tolist() == pytest.approx([4 * math.sqrt(2), 3 * math.sqrt(2)])
    assert values[2].item() == pytest.approx(0.0, abs=1e-9)
    p = torch.tensor([4 / 7, 3 / 7])
    assert effective_rank(values) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert effective_rank(torch.ones(8)) == pytest.approx(8.0)
    assert effective_rank(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(4)) == 0.0


def test_embedding_diagnostics_see_a_collapsed_projector(test_data):
    method = build_method("vicreg", seed=0)
    images = test_data[0][:256]
    healthy = embedding_diagnostics(method, images)
    with torch.no_grad():  # a projector whose last layer outputs a constant: complete collapse
        method.expander.net[-1].weight.zero_()
    collapsed = embedding_diagnostics(method, images)
    assert len(healthy["embedding_std"]) == 1024 and len(healthy["embedding_covariance_block"][0]) == 32
    assert max(collapsed["embedding_std"]) == 0.0 and collapsed["embedding_effective_rank"] == 0.0
    assert healthy["embedding_effective_rank"] > 10 and min(healthy["embedding_std"]) > 0
    assert healthy["feature_singular_values"] == collapsed["feature_singular_values"]  # the encoder is untouched


def test_transfer_probe_matches_scikit_learn_cross_validation_on_the_same_folds():
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = blobs(n=400, d=6, spread=3.0)  # overlapping clusters: accuracy well below 1
    weight_decay = 1e-3  # one candidate, so the folds are comparable with a fixed C
    result = transfer_probe(features, labels, folds=5, repeats=2, seed=3, weight_decays=(weight_decay,))
    assert len(result["accuracies"]) == 10 and result["folds"] == 5 and result["repeats"] == 2
    assert result["mean"] == pytest.approx(sum(result["accuracies"]) / 10, abs=1e-6)
    assert result["std"] == pytest.approx(torch.tensor(result["accuracies"]).std().item(), abs=1e-6)

    splits = RepeatedStratifiedKFold(n_splits=5, n_repeats=2, random_state=3).split(features.numpy(), labels.numpy())
    expected = []
    for train_indices, test_indices in splits:
        # Our objective, mean cross-entropy + wd·‖W‖², is scikit-learn's with C = 1 / (2 · wd · n).
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=1 / (2 * weight_decay * len(train_indices)), max_iter=2000)
        )
        model.fit(features[train_indices].numpy(), labels[train_indices].numpy())
        expected.append(model.score(features[test_indices].numpy(), labels[test_indices].numpy()))
    assert 0.5 < result["mean"] < 0.98
    assert result["accuracies"] == pytest.approx(expected, abs=0.02)
    assert result["mean"] == pytest.approx(sum(expected) / len(expected), abs=0.005)


def test_transfer_probe_is_seeded_and_chooses_its_strength_inside_the_training_folds():
    features, labels = blobs(n=300, d=6, spread=2.0)
    first = transfer_probe(features, labels, repeats=1)
    assert first == transfer_probe(features, labels, repeats=1)
    assert first != transfer_probe(features, labels, repeats=1, seed=1)
    noise = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    assert transfer_probe(noise, labels, repeats=1)["mean"] < 0.25  # nothing to find: near chance (10%)
    with pytest.raises(ValueError, match="300 feature rows but 299 labels"):
        transfer_probe(features, labels[:299])
