import json
import os
import sys

import pytest
import torch

import sslkit.train
from sslkit.methods import Method, build_method
from sslkit.models import encoder_config
from sslkit.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    TrainState,
    build_optimizer,
    cosine_with_warmup,
    history_path,
    plan_steps,
    train,
    train_one_epoch,
)

SMOKE = {"batch_size": 32, "lr": 0.05, "warmup_epochs": 0}


def fresh(name="simclr", seed=0):
    return build_method(name, seed=seed)


@pytest.mark.parametrize("name", ["autoencoder", "vae", "rotation", "simclr", "dcl", "vicreg", "mae", "supervised"])
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch(small_batch, name):
    images, labels = small_batch
    method = fresh(name).train()
    # Each method's own optimizer family (AdamW for the reconstruction losses in nats per image).
    optimizer = (
        torch.optim.AdamW(method.parameters(), lr=1e-3)
        if method.recipe["optimizer"] == "adamw"
        else torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    )

    def loss_on_fixed_views():
        return method.training_step(images, labels, torch.Generator().manual_seed(0))["loss"]

    before = loss_on_fixed_views()
    for _ in range(5):
        loss = loss_on_fixed_views()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_on_fixed_views()
    assert torch.isfinite(before) and torch.isfinite(after)
    assert after < before


def test_training_is_deterministic_under_a_seed(train_data):
    images, _ = train_data
    config = TrainConfig(epochs=1, steps_per_epoch=2, **SMOKE)
    first, second = fresh(), fresh()
    history1 = train(first, images[:256], None, config, "cpu", progress=False)
    history2 = train(second, images[:256], None, config, "cpu", progress=False)
    assert history1[0]["loss"] == history2[0]["loss"]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("amp_dtype", [None, "float16"])  # float16: with the gradient scaler, as on a Colab T4
def test_resume_ends_bitwise_where_an_uninterrupted_run_ends(
    train_data, tmp_path, train_until_the_first_checkpoint, amp_dtype
):
    images, _ = train_data
    config = TrainConfig(epochs=2, steps_per_epoch=2, amp_dtype=amp_dtype, **SMOKE)
    uninterrupted = fresh()
    train(uninterrupted, images[:256], None, config, "cpu", tmp_path / "a.ckpt", progress=False)
    # Interrupted after epoch 1: the process dies right after the first checkpoint is written.
    train_until_the_first_checkpoint(fresh(), images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["epoch"] == 1

    resumed = fresh(seed=123)  # a different initialisation: resume must overwrite everything
    history = train(resumed, images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    assert [record["epoch"] for record in history] == [1, 2]
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    scalers = [torch.load(tmp_path / name, weights_only=True)["scaler"] for name in ("a.ckpt", "b.ckpt")]
    assert scalers[0] == scalers[1] and bool(scalers[0]) == (amp_dtype == "float16")  # {} when it is off
    saved_history = json.loads(history_path(tmp_path / "b.ckpt").read_text())
    assert [r["loss"] for r in saved_history] == [r["loss"] for r in history]
    assert not list(tmp_path.glob("*.tmp"))  # atomic saves leave no temporary files


def test_resume_refuses_a_checkpoint_of_another_run(train_data, tmp_path):
    images, _ = train_data
    train(
        fresh(),
        images[:64],
        None,
        TrainConfig(epochs=1, steps_per_epoch=1, **SMOKE),
        "cpu",
        tmp_path / "c.ckpt",
        progress=False,
    )
    other = TrainConfig(epochs=1, steps_per_epoch=1, **{**SMOKE, "lr": 0.01})
    with pytest.raises(CheckpointMismatchError, match="different run .*train_config"):
        train(fresh(), images[:64], None, other, "cpu", tmp_path / "c.ckpt", progress=False)


class ExplodingMethod(Method):
    name = "exploding"

    def __init__(self):
        super().__init__(encoder_config())
        self.steps = 0

    def training_step(self, images, labels=None, generator=None):
        self.steps += 1
        loss = self.encoder(images).mean()
        return {"loss": loss * float("nan") if self.steps == 3 else loss}


def test_non_finite_loss_stops_training_and_names_the_steps_since_the_last_check(train_data, monkeypatch):
    images, _ = train_data  # 8 steps of 32; the loss is NaN at step 3
    method = ExplodingMethod()
    with pytest.raises(NonFiniteLossError, match=r"in epoch 1, between steps 1 and 8 \(global steps 1 to 8\)"):
        train(method, images[:256], None, TrainConfig(epochs=1, **SMOKE), "cpu", progress=False)
    monkeypatch.setattr(sslkit.train, "FINITE_CHECK_EVERY", 2)
    method = ExplodingMethod()
    with pytest.raises(NonFiniteLossError, match=r"nan in epoch 1, between steps 3 and 4 \(global steps 3 to 4\)"):
        train(method, images[:256], None, TrainConfig(epochs=1, **SMOKE), "cpu", progress=False)
    assert method.steps == 4  # stopped at the first check after the NaN


def host_reads_by_sslkit(monkeypatch) -> list[str]:
    """Every read of a tensor's value by the host (``.item()``, ``bool``, ``float``, ``int``, ``.tolist()``)
    made by sslkit's own code: on a GPU each one waits for the device."""
    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, _name=name):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}sslkit{os.sep}" in caller:
                reads.append(f"{_name} in {os.path.basename(caller)}")
            return _original(tensor, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("name", ["simclr", "mae"])
def test_the_loop_reads_values_back_once_per_check_not_once_per_step(train_data, monkeypatch, name):
    images, _ = train_data
    counts = {}
    for steps in (3, 6):
        reads = host_reads_by_sslkit(monkeypatch)
        config = TrainConfig(epochs=1, steps_per_epoch=steps, **SMOKE)
        train(fresh(name), images[:256], None, config, "cpu", progress=False)
        counts[steps] = len(reads)
        monkeypatch.undo()
    assert counts[3] == counts[6] > 0, counts  # one check per 25 steps, then the epoch's means
    monkeypatch.setattr(sslkit.train, "FINITE_CHECK_EVERY", 3)
    reads = host_reads_by_sslkit(monkeypatch)
    train(fresh(name), images[:256], None, TrainConfig(epochs=1, steps_per_epoch=6, **SMOKE), "cpu", progress=False)
    assert len(reads) == counts[6] + 1, reads  # one more check


class OverflowingMethod(Method):
    """Its second loss is 10³⁰ times too large: scaled by the gradient scaler, its gradients overflow."""

    name = "overflowing"

    def __init__(self):
        super().__init__(encoder_config())
        self.steps, self.dtypes = 0, []

    def training_step(self, images, labels=None, generator=None):
        self.steps += 1
        features = self.encoder(images)
        self.dtypes.append(features.dtype)
        loss = features.float().square().mean()
        return {"loss": loss * 1e30 if self.steps == 2 else loss}


def test_float16_with_the_gradient_scaler_skips_the_step_whose_gradients_overflow(train_data):
    images, _ = train_data
    method = OverflowingMethod()
    config = TrainConfig(epochs=3, steps_per_epoch=1, amp_dtype="float16", **SMOKE)
    plan = plan_steps(64, config)
    state = TrainState.start(method, config, plan, torch.device("cpu"))
    assert state.scaler.is_enabled() and state.scaler.get_scale() == 2.0**16
    snapshots = [[p.detach().clone() for p in method.parameters()]]
    scales = []
    for epoch in range(3):
        state.epoch = epoch
        train_one_epoch(method, state, images[:64], None, config, plan, progress=False)
        snapshots.append([p.detach().clone() for p in method.parameters()])
        scales.append(state.scaler.get_scale())

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert method.dtypes == [torch.float16] * 3  # the encoder ran under fp16 autocast
    assert not same(snapshots[0], snapshots[1])  # step 1 updated the weights
    assert same(snapshots[1], snapshots[2])  # step 2's gradients were inf: skipped
    assert not same(snapshots[2], snapshots[3])  # step 3 went on
    assert scales == [2.0**16, 2.0**15, 2.0**15]  # the skip halved the scale
    assert state.optimizer.state[next(method.parameters())]["momentum_buffer"] is not None


def test_compile_trains_like_eager(train_data):
    """Two steps through torch.compile (inductor's C++ kernels on the CPU) against the eager steps: the
    same loss and the same update, up to the rounding of fused kernels. In float32: under bfloat16
    autocast the two differ by bfloat16's rounding (0.3% in the loss on a processor with AMX)."""
    images, _ = train_data
    config = TrainConfig(epochs=1, steps_per_epoch=2, amp=False, **SMOKE)
    eager, compiled, start = fresh("rotation"), fresh("rotation"), fresh("rotation")
    eager_history = train(eager, images[:64], None, config, "cpu", progress=False)
    compiled_history = train(compiled, images[:64], None, config, "cpu", progress=False, compile_model=True)
    assert compiled_history[0]["loss"] == pytest.approx(eager_history[0]["loss"], rel=1e-3)

    def update(method):
        return torch.cat(
            [(p - p0).detach().flatten() for p, p0 in zip(method.parameters(), start.parameters(), strict=True)]
        )

    eager_update, compiled_update = update(eager), update(compiled)
    assert eager_update.norm() > 0.1
    assert torch.nn.functional.cosine_similarity(eager_update, compiled_update, dim=0) > 0.99
    assert (compiled_update - eager_update).norm() < 0.05 * eager_update.norm()


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [cosine_with_warmup(step, 10, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lrs[i] >= lrs[i + 1] for i in range(9, 99))
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "bad", [{"epochs": 0}, {"optimizer": "lamb"}, {"lr": -1.0}, {"amp_dtype": "float8"}, {"decay_every_parameter": 2}]
)
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_supervised_needs_labels(train_data):
    with pytest.raises(ValueError, match="labels"):
        train(fresh("supervised"), train_data[0][:64], None, TrainConfig(epochs=1, **SMOKE), "cpu", progress=False)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_without_decay_on_norms_and_biases_only_the_weights_of_layers_shrink(optimizer):
    method = fresh("mae")  # convolution, linear, LayerNorm and the mask token
    config = TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5, decay_every_parameter=0)  # 0: a sweep's value
    assert config.decay_every_parameter is False
    step = build_optimizer(method, config)
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    for p in method.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the weight decay moves a parameter
    step.step()
    for name, p in method.named_parameters():
        kept = p.ndim == 1 or name == "decoder.mask_token"
        assert torch.equal(p, before[name]) == kept, name  # biases, norms and the token untouched, weights shrunk
    decayed_everything = build_optimizer(fresh("mae"), TrainConfig(optimizer=config.optimizer, weight_decay=0.5))
    assert [group["weight_decay"] for group in decayed_everything.param_groups] == [0.5]
    assert [group["weight_decay"] for group in step.param_groups] == [0.5, 0.0]
