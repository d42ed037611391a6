import json

import pytest
import torch

import sslkit.train
from sslkit.methods import Method, build_method
from sslkit.models import encoder_config
from sslkit.train import (
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    cosine_with_warmup,
    history_path,
    train,
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


def test_resume_ends_bitwise_where_an_uninterrupted_run_ends(train_data, tmp_path, monkeypatch):
    images, _ = train_data
    config = TrainConfig(epochs=2, steps_per_epoch=2, **SMOKE)
    uninterrupted = fresh()
    train(uninterrupted, images[:256], None, config, "cpu", tmp_path / "a.ckpt", progress=False)

    # Interrupted after epoch 1: the process dies right after the first checkpoint is written.
    def write_then_die(path, text):
        original_write(path, text)
        raise KeyboardInterrupt

    original_write = sslkit.train.write_text_atomically
    monkeypatch.setattr(sslkit.train, "write_text_atomically", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    monkeypatch.setattr(sslkit.train, "write_text_atomically", original_write)
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["epoch"] == 1

    resumed = fresh(seed=123)  # a different initialisation: resume must overwrite everything
    history = train(resumed, images[:256], None, config, "cpu", tmp_path / "b.ckpt", progress=False)
    assert [record["epoch"] for record in history] == [1, 2]
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
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


def test_non_finite_loss_stops_training_and_names_the_step(train_data):
    images, _ = train_data
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3"):
        train(ExplodingMethod(), images[:256], None, TrainConfig(epochs=1, **SMOKE), "cpu", progress=False)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [cosine_with_warmup(step, 10, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lrs[i] >= lrs[i + 1] for i in range(9, 99))
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"optimizer": "lamb"}, {"lr": -1.0}])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_supervised_needs_labels(train_data):
    with pytest.raises(ValueError, match="labels"):
        train(fresh("supervised"), train_data[0][:64], None, TrainConfig(epochs=1, **SMOKE), "cpu", progress=False)
