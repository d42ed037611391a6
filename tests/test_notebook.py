import math

import pytest
import torch

from sslkit.notebook import print_gain_over_scratch, setup


def _results(ours, scratch, labels=600):
    def entry(accuracies):
        return {"fractions": {"0.01": {"labels": labels, "test_accuracy": accuracies}}}

    return {"vae": entry(ours), "random": entry(scratch)}


def test_gain_over_scratch_matches_welchs_t_test_by_hand(capsys):
    ours, scratch = [0.84, 0.85, 0.86], [0.80, 0.83, 0.81]
    gains = print_gain_over_scratch(_results(ours, scratch), "vae")
    assert gains["0.01"] == pytest.approx(0.85 - 0.8133333, abs=1e-6)

    # Welch by hand: t = difference / standard error, Welch–Satterthwaite degrees of freedom, and
    # the two-sided p-value by integrating the Student-t density numerically.
    def variance(values):
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / (len(values) - 1)

    a, b = variance(ours) / 3, variance(scratch) / 3
    t = gains["0.01"] / math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)
    x = torch.linspace(t, 2000, 2_000_001, dtype=torch.float64)
    log_density = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                   - (df + 1) / 2 * torch.log1p(x**2 / df))
    p_value = 2 * torch.trapezoid(log_density.exp(), x).item()
    out = capsys.readouterr().out
    assert f"p = {p_value:.3f}, significant at 5%" in out
    assert "600 images" in out and f"+3.67 ± {100 * math.sqrt(a + b):.2f} points" in out


def test_gain_over_scratch_is_not_significant_for_overlapping_seeds(capsys):
    gains = print_gain_over_scratch(_results([0.80, 0.83, 0.81], [0.81, 0.80, 0.83]), "vae")
    assert gains["0.01"] == pytest.approx(0.0, abs=1e-9)
    out = capsys.readouterr().out
    assert "+0.00 ±" in out and "p = 1.000, not significant at 5%" in out


def test_setup_rejects_a_bad_pretrain_switch(monkeypatch):
    monkeypatch.setenv("SSLKIT_PRETRAIN", "yes")
    with pytest.raises(ValueError, match="SSLKIT_PRETRAIN must be 0 or 1"):
        setup()
