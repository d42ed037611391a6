import math

import matplotlib.pyplot as plt
import pytest
import torch

from sslkit.data import FASHION_MNIST
from sslkit.finetune import low_label_linear_probe
from sslkit.notebook import (
    FEW_LABELS,
    RUN,
    SMOKE_IMAGES,
    FrozenEvaluationReport,
    StaleClaimError,
    accuracy_noise,
    claim,
    fine_tune_config,
    print_frozen_against_fine_tuned,
    print_gain_over_scratch,
    print_label_efficiency,
    seed_noise,
    setup,
    smoke_slice,
    training_budget,
)
from sslkit.protocol import FrozenEvaluation
from sslkit.weights import save_manifest


def _results(ours, scratch, labels=600):
    def entry(accuracies, start):  # learning curves: validation accuracy at steps 100 and 200 of each seed
        curves = [
            [{"step": 100, "validation_accuracy": start}, {"step": 200, "validation_accuracy": accuracy}]
            for accuracy in accuracies
        ]
        return {"fractions": {"0.01": {"labels": labels, "test_accuracy": accuracies, "curves": curves}}}

    return {"vae": entry(ours, 0.7), "random": entry(scratch, 0.6)}


def test_gain_over_scratch_matches_welchs_t_test_by_hand(capsys):
    ours, scratch = [0.84, 0.85, 0.86], [0.80, 0.83, 0.81]
    comparison = print_gain_over_scratch(_results(ours, scratch), "vae")["0.01"]
    assert comparison["gain"] == pytest.approx(0.85 - 0.8133333, abs=1e-6)
    assert comparison["first_gap"] == pytest.approx(0.1) and comparison["last_gap"] == pytest.approx(comparison["gain"])

    # Welch by hand: t = difference / standard error, Welch–Satterthwaite degrees of freedom, and
    # the two-sided p-value by integrating the Student-t density numerically.
    def variance(values):
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / (len(values) - 1)

    a, b = variance(ours) / 3, variance(scratch) / 3
    assert comparison["standard_error"] == pytest.approx(math.sqrt(a + b))
    t = comparison["gain"] / math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)
    x = torch.linspace(t, 2000, 2_000_001, dtype=torch.float64)
    log_density = (
        math.lgamma((df + 1) / 2)
        - math.lgamma(df / 2)
        - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * torch.log1p(x**2 / df)
    )
    p_value = 2 * torch.trapezoid(log_density.exp(), x).item()
    out = capsys.readouterr().out
    assert comparison["p_value"] == pytest.approx(p_value, abs=1e-4)
    assert f"p = {p_value:.3f}, significant at 5%" in out and "+10.0 points at step 100, +3.7 at step 200" in out
    assert "600 images" in out and f"+3.67 ± {100 * math.sqrt(a + b):.2f} points" in out


def test_gain_over_scratch_reports_tiny_p_values_as_below_one_in_a_thousand(capsys):
    comparison = print_gain_over_scratch(_results([0.900, 0.901, 0.902], [0.800, 0.801, 0.802]), "vae")["0.01"]
    assert comparison["p_value"] < 0.001 and "p < 0.001, significant at 5%" in capsys.readouterr().out


def test_gain_over_scratch_is_not_significant_for_overlapping_seeds(capsys):
    comparison = print_gain_over_scratch(_results([0.80, 0.83, 0.81], [0.81, 0.80, 0.83]), "vae")["0.01"]
    assert comparison["gain"] == pytest.approx(0.0, abs=1e-9) and comparison["p_value"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "+0.00 ±" in out and "p = 1.000, not significant at 5%" in out


def test_setup_rejects_a_bad_pretrain_switch(monkeypatch):
    monkeypatch.setenv("SSLKIT_PRETRAIN", "yes")
    with pytest.raises(ValueError, match="SSLKIT_PRETRAIN must be 0 or 1"):
        setup()


@pytest.fixture
def run_mode():
    """Gives ``notebook.RUN`` back as it was: ``setup`` sets it for the whole process."""
    saved = (RUN.pretrain, RUN.smoke)
    yield RUN
    RUN.pretrain, RUN.smoke = saved


def test_a_claim_that_does_not_hold_is_an_error_on_the_shipped_weights_and_a_note_on_a_new_run(
    monkeypatch, run_mode, capsys
):
    monkeypatch.delenv("SSLKIT_PRETRAIN", raising=False)
    setup()
    claim(torch.tensor(True), "the probe beats kNN")  # a tensor's truth value, as comparisons of results give
    with pytest.raises(StaleClaimError, match="the text says that the probe beats kNN, but the shipped results"):
        claim(0.85 > 0.86, "the probe beats kNN")
    monkeypatch.setenv("SSLKIT_PRETRAIN", "1")
    setup()
    claim(0.85 > 0.86, "the probe beats kNN")
    assert "Note: the text says that the probe beats kNN; this does not hold for your run" in capsys.readouterr().out


def test_the_smoke_configuration_shrinks_every_run_and_needs_pretrain(monkeypatch, run_mode):
    entry = {"epochs": 100, "batch_size": 256}
    images, labels = torch.zeros(12_000, 28, 28, dtype=torch.uint8), torch.arange(12_000) % 10
    monkeypatch.delenv("SSLKIT_PRETRAIN", raising=False)
    monkeypatch.delenv("SSLKIT_SMOKE", raising=False)
    setup()
    assert training_budget(entry) == entry and fine_tune_config().steps == 1000
    assert smoke_slice("train", images, labels)[0] is images  # every image outside the smoke configuration
    monkeypatch.setenv("SSLKIT_SMOKE", "1")
    with pytest.raises(ValueError, match="needs SSLKIT_PRETRAIN=1 as well"):
        setup()
    monkeypatch.setenv("SSLKIT_PRETRAIN", "1")
    setup()
    assert training_budget(entry) == {"epochs": 2, "batch_size": 256, "steps_per_epoch": 3}
    assert fine_tune_config().steps < 10 and run_mode.smoke and run_mode.pretrain
    for split in ("train", "test"):
        sliced_images, sliced_labels = smoke_slice(split, images, labels)
        assert len(sliced_images) == len(sliced_labels) == SMOKE_IMAGES[split] < len(images)
        assert torch.equal(sliced_labels, labels[: SMOKE_IMAGES[split]])


def test_accuracy_noise_is_the_binomial_standard_error_of_the_test_set():
    assert accuracy_noise(0.9) == pytest.approx(math.sqrt(0.9 * 0.1 / 10_000))
    assert accuracy_noise(0.9, 0.8) == pytest.approx(math.sqrt((0.09 + 0.16) / 10_000))
    # simulated: the spread of accuracies over many draws of a 10,000-image test set
    draws = (torch.rand(2000, 10_000, generator=torch.Generator().manual_seed(0)) < 0.9).double().mean(dim=1)
    assert draws.std().item() == pytest.approx(accuracy_noise(0.9), rel=0.1)


def test_frozen_evaluation_reports_per_class_accuracy_and_the_largest_confusions(capsys):
    labels = torch.arange(10).repeat(10)  # 10 images per class
    predictions = labels.clone()
    predictions[labels == 6] = torch.tensor([0, 0, 0, 0, 2, 2, 6, 6, 6, 6])  # shirts: 4 → T-shirt, 2 → pullover
    predictions[labels == 4] = torch.tensor([2, 4, 4, 4, 4, 4, 4, 4, 4, 4])  # one coat → pullover
    evaluation = FrozenEvaluationReport(
        torch.zeros(1),
        torch.zeros(1),
        probe=None,
        predictions=predictions,
        knn_predictions=labels,
        probe_accuracy=0.0,
        knn_accuracy=1.0,
        macro_f1=0.0,
        class_names=FASHION_MNIST.class_names,
    )
    per_class = evaluation.per_class(labels, "test")
    assert per_class["linear probe"][6].item() == pytest.approx(0.4) and per_class["linear probe"][4].item() == 0.9
    assert torch.equal(per_class["kNN"], torch.ones(10))
    matrix, pairs = evaluation.confusions(labels, "test", top=3)
    assert matrix.sum() == 100 and matrix[6, 0] == 4
    assert pairs == [(6, 0), (6, 2), (4, 2)]
    out = capsys.readouterr().out
    assert "Shirt        probe  40.0%   kNN 100.0%" in out and "Shirt taken for T-shirt/top: 4 test images" in out
    plt.close("all")


def test_frozen_against_fine_tuned_fits_the_probe_on_each_fine_tuning_subset(capsys):
    generator = torch.Generator().manual_seed(0)
    train_labels, test_labels = torch.arange(2000) % 10, torch.arange(500) % 10
    centers = 3 * torch.randn(10, 8, generator=generator)
    train_features = centers[train_labels] + 2 * torch.randn(2000, 8, generator=generator)
    test_features = centers[test_labels] + 2 * torch.randn(500, 8, generator=generator)
    evaluation = FrozenEvaluation(
        train_features,
        test_features,
        probe=None,
        predictions=None,
        knn_predictions=None,
        probe_accuracy=0.9,
        knn_accuracy=0.8,
        macro_f1=0.0,
    )
    fine_tune = {
        name: {"fractions": {"0.1": {"mean": mean, "std": 0.01}}} for name, mean in (("vae", 0.8), ("random", 0.7))
    }
    frozen = print_frozen_against_fine_tuned(evaluation, train_labels, test_labels, fine_tune, "vae", "VAE")
    expected = [
        low_label_linear_probe(train_features, train_labels, test_features, test_labels, 0.1, seed)["test_accuracy"]
        for seed in (0, 1, 2)
    ]
    assert frozen["0.1"].tolist() == pytest.approx(expected)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == " labels  VAE, frozen + linear probe  VAE, fine-tuned  from scratch"
    assert lines[1].startswith("    10% ") and "80.00 ± 1.00" in lines[1] and "70.00 ± 1.00" in lines[1]
    assert len(lines[1]) == len(lines[0])  # the columns line up under their headers
    assert lines[2] == f"   100% {90.0:>20.2f} (the shipped probe)"


def test_label_efficiency_shows_the_few_label_fractions_unless_asked_for_others(tmp_path, monkeypatch, capsys):
    def entry(means):
        fractions = {f: {"mean": m, "std": 0.01} for f, m in means.items()}
        return {"dataset": "fashion-mnist", "results": {"fine_tune": {"fractions": fractions}}}

    save_manifest(
        {"methods": {"vae": entry({"0.01": 0.8, "0.1": 0.85, "1": 0.9}), "random": entry({"0.01": 0.7, "0.1": 0.8})}},
        root=tmp_path,
    )
    monkeypatch.setenv("SSLKIT_WEIGHTS", str(tmp_path))
    few = print_label_efficiency(["vae", "random"])
    assert FEW_LABELS == ("0.01", "0.1") and all(list(r["fractions"]) == ["0.01", "0.1"] for r in few.values())
    lines = capsys.readouterr().out.splitlines()
    assert "1% labels" in lines[0] and "10% labels" in lines[0] and "100%" not in lines[0]
    assert lines[1].split() == ["vae", "80.00", "±", "1.00", "85.00", "±", "1.00"]
    assert list(print_label_efficiency(["vae"], ("1",))["vae"]["fractions"]) == ["1"]
    with pytest.raises(ValueError, match=r"random: no fine-tuning result .* finetune random --fractions 1`"):
        print_label_efficiency(["vae", "random"], ("0.1", "1"))


def test_seed_noise_pools_the_variance_over_seeds_of_each_value(monkeypatch):
    runs = [
        {"value": 32, "seed": 0, "validation_accuracy": 0.80},
        {"value": 32, "seed": 1, "validation_accuracy": 0.82},
        {"value": 64, "seed": 0, "validation_accuracy": 0.85},
        {"value": 64, "seed": 1, "validation_accuracy": 0.85},
        {"value": 64, "seed": 2, "validation_accuracy": 0.88},
    ]
    sweeps = {"batch_size": {"runs": runs}, "lr": {"runs": runs[:1]}}
    monkeypatch.setattr("sslkit.notebook.manifest_entry", lambda name, dataset: {"results": {"sweeps": sweeps}})
    # pooled: (0.02²/2 · 1 + var(0.85, 0.85, 0.88) · 2) / (1 + 2)
    expected = math.sqrt((0.0002 + 0.0003 * 2) / 3)
    assert seed_noise("simclr", "batch_size") == pytest.approx(expected)
    with pytest.raises(ValueError, match="one seed per value"):
        seed_noise("simclr", "lr")
