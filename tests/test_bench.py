"""The FLOP count of `bench` against convolution and linear layers counted by hand."""

import pytest
import torch

from sslkit.bench import peak_matmul_flops, training_step_flops
from sslkit.methods import build_method


def forward_flops_by_hand(model: torch.nn.Module, run) -> list[int]:
    """2 × multiply-adds of every convolution and linear layer during ``run()``, in call order."""
    counted = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            counted.append(2 * per_output * output.numel())
        elif isinstance(module, torch.nn.Linear):
            counted.append(2 * module.in_features * output.numel())

    handles = [module.register_forward_hook(count) for module in model.modules()]
    run()
    for handle in handles:
        handle.remove()
    return counted


def test_a_training_step_costs_three_forward_passes_less_the_input_gradient_of_the_first_layer():
    batch = 8
    model = build_method("supervised", seed=0)
    forward = forward_flops_by_hand(model, lambda: model.logits(torch.rand(batch, 1, 28, 28)))
    # backward: a gradient for each layer's weights and one for its input, each as costly as the
    # forward product, except the input gradient of the first convolution (the images need none)
    assert training_step_flops("supervised", batch) == 3 * sum(forward) - forward[0]


def test_the_peak_is_a_matrix_products_rate():
    rate = peak_matmul_flops(torch.device("cpu"), None, size=256, repeats=3)
    assert 1e8 < rate < 1e14  # between a slow phone and far beyond any CPU: a rate in FLOP/s


def test_the_compile_payoff_counts_the_compilation_against_a_whole_run(monkeypatch):
    import sslkit.bench

    calls = []

    def fake_run(function, name, device, batch_size, steps, compiled, dataset):
        calls.append(compiled)
        repeat = sum(1 for c in calls if c == compiled)  # 1, 2: the second run of each mode a bit slower
        step = (0.3 if compiled else 0.4) + 0.01 * (repeat - 1)
        warmup = 60.0 if compiled else 2.0  # compiling costs 58 s more than eager's own first steps
        return {"seconds_per_step": step, "first_epoch_seconds": warmup + steps * step}

    monkeypatch.setattr(sslkit.bench, "in_fresh_process", fake_run)
    payoff = sslkit.bench.compile_payoff("simclr", torch.device("cpu"), 256, 10, repeats=2)
    assert calls == [False, True, False, True]  # alternating, so drifts of the machine hit both
    assert payoff["seconds_per_step"] == pytest.approx({"eager": 0.405, "compiled": 0.305})
    assert payoff["spread"] == pytest.approx({"eager": 0.01, "compiled": 0.01})
    assert payoff["compile_seconds"] == pytest.approx(58.0)
    assert payoff["run_steps"] == 100 * (60_000 // 256)
    assert payoff["run_seconds"]["compiled"] == pytest.approx(60.0 + 23_400 * 0.305)
    assert payoff["run_seconds"]["eager"] == pytest.approx(2.0 + 23_400 * 0.405)


def test_the_compile_payoff_refuses_options_it_ignores():
    from sslkit.cli import main

    assert main(["bench", "--compile-payoff", "1", "--record"]) == 2


def test_a_method_s_figure_is_its_median_round_and_its_noise_the_spread_of_the_rounds():
    from sslkit.bench import median_round, relative_spread

    rounds = [{"images_per_second": rate, "round": i} for i, rate in enumerate([1_000.0, 1_200.0, 900.0])]
    middle = median_round(rounds)
    assert middle["round"] == 0 and middle["round_images_per_second"] == [1_000.0, 1_200.0, 900.0]
    assert median_round(rounds[:2])["round"] == 0  # an even count: the lower middle, a value that was measured
    assert relative_spread([1_000.0, 1_200.0, 900.0]) == pytest.approx(0.3)  # (1,200 - 900) / 1,000
    assert relative_spread([1_000.0]) == 0
