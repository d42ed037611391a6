"""The FLOP count of `bench` against convolution and linear layers counted by hand."""

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
