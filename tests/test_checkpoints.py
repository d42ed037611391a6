"""A checkpoint resumes only the run that wrote it.

The original bug, as a user met it: ``pretrain rotation --limit 600`` left a checkpoint that the same
command without ``--limit`` resumed, publishing weights trained on 600 images as if on 60,000. Now
the checkpoint records the run's identity (method and its config, training config, dataset, the
number and sha256 of the images, the labels' sha256 for methods that use them, processes) and a run
with any of them different is refused with an error naming the fields, before anything is trained,
saved or published."""

import re
from pathlib import Path

import pytest
import torch

from sslkit.cli import main
from sslkit.devices import describe_device
from sslkit.methods import build_method
from sslkit.train import CheckpointMismatchError, TrainConfig, devices_of_run, train

CONFIG = TrainConfig(epochs=1, batch_size=64, steps_per_epoch=2, warmup_epochs=0)


@pytest.fixture
def one_thread():
    """Tiny runs and many small probe fits: one thread is several times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def folder_bytes(folder) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def named_fields(message: str) -> set[str]:
    """The fields a ``CheckpointMismatchError`` names: ``... a different run (FIELD: ...; FIELD: ...)``."""
    return set(re.findall(r"(?:different run \(|; )(\w+): ", message))


# -------------------------------------------------------------------------- through the command line


def test_a_checkpoint_of_a_limited_run_is_refused_by_the_full_run_and_nothing_is_published(
    tmp_path, monkeypatch, capsys, one_thread
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "weights"
    command = ["pretrain", "rotation", "--epochs", "1", "--batch-size", "64", "--steps-per-epoch", "2"]
    command += ["--out", str(out), "--checkpoint", str(out / "c.ckpt"), "--no-progress"]
    assert main(command + ["--limit", "600"]) == 0
    published = folder_bytes(out)
    assert {Path("manifest.json"), Path("rotation.pth"), Path("c.ckpt")} <= set(published)
    assert b'"limit": 600' in published[Path("manifest.json")]
    capsys.readouterr()

    assert main(command) == 2  # the same command on all 60,000 images
    error = capsys.readouterr().err
    assert error.startswith(f"error: checkpoint {out / 'c.ckpt'} was written by a different run (")
    assert "images: 600 in the checkpoint, 60000 now" in error
    assert named_fields(error) == {"images", "images_sha256"}
    assert "delete it or pass another --checkpoint path" in error
    assert folder_bytes(out) == published  # manifest, weights and checkpoint byte for byte as they were

    assert main(command + ["--limit", "1000"]) == 2  # another limit: also another run
    error = capsys.readouterr().err
    assert "images: 600 in the checkpoint, 1000 now" in error and named_fields(error) == {"images", "images_sha256"}
    assert folder_bytes(out) == published


# -------------------------------------------------------------------------- one identity field at a time


@pytest.fixture(scope="module")
def images(train_data):
    return train_data[0][:512]


@pytest.fixture(scope="module")
def labels(train_data):
    return train_data[1][:512]


def run(name, images, labels, checkpoint, config=CONFIG, dataset="fashion-mnist", **settings):
    """A fresh method of ``name`` trained (or resumed from ``checkpoint``) for one tiny epoch."""
    method = build_method(name, "fashion-mnist", seed=0, **settings)
    history = train(method, images, labels, config, "cpu", checkpoint, progress=False, dataset=dataset)
    return method, history


def refusal(checkpoint, *args, **kwargs) -> str:
    """The message of the ``CheckpointMismatchError`` that ``run(*args, **kwargs)`` raises; the checkpoint
    and its history are left as they were."""
    before = checkpoint.read_bytes(), checkpoint.with_name(checkpoint.stem + ".history.json").read_bytes()
    with pytest.raises(CheckpointMismatchError) as error:
        run(*args, **kwargs)
    assert (checkpoint.read_bytes(), checkpoint.with_name(checkpoint.stem + ".history.json").read_bytes()) == before
    message = str(error.value)
    assert message.startswith(f"checkpoint {checkpoint} was written by a different run (")
    return message


def test_a_checkpoint_of_simclr_is_refused_by_dcl_with_the_method_named(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    run("simclr", images[:256], labels[:256], checkpoint)
    message = refusal(checkpoint, "dcl", images[:256], labels[:256], checkpoint)
    assert named_fields(message) == {"method"}  # DCL's constructor arguments are SimCLR's
    assert "method: 'simclr' in the checkpoint, 'dcl' now" in message


def test_a_checkpoint_of_another_temperature_is_refused_with_the_method_config_named(
    images, labels, tmp_path, one_thread
):
    checkpoint = tmp_path / "run.ckpt"
    run("simclr", images[:256], labels[:256], checkpoint, temperature=0.3)
    message = refusal(checkpoint, "simclr", images[:256], labels[:256], checkpoint, temperature=0.5)
    assert named_fields(message) == {"method_config"}
    assert "'temperature': 0.3" in message and "'temperature': 0.5" in message


def test_a_checkpoint_of_another_learning_rate_is_refused_with_the_train_config_named(
    images, labels, tmp_path, one_thread
):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint)
    other = TrainConfig(epochs=1, batch_size=64, steps_per_epoch=2, warmup_epochs=0, lr=0.05)
    message = refusal(checkpoint, "rotation", images[:256], labels[:256], checkpoint, config=other)
    assert named_fields(message) == {"train_config"}
    assert "'lr': 0.1" in message and "'lr': 0.05" in message


def test_a_checkpoint_of_another_dataset_is_refused_with_the_field_named(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint, dataset="fashion-mnist")
    message = refusal(checkpoint, "rotation", images[:256], labels[:256], checkpoint, dataset="mnist")
    assert named_fields(message) == {"dataset"}  # the very same images, named as another dataset
    assert "dataset: 'fashion-mnist' in the checkpoint, 'mnist' now" in message


def test_a_checkpoint_of_another_number_of_images_is_refused_with_the_count_named(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint)
    message = refusal(checkpoint, "rotation", images[:192], labels[:192], checkpoint)
    assert named_fields(message) == {"images", "images_sha256"}
    assert "images: 256 in the checkpoint, 192 now" in message


def test_a_checkpoint_of_as_many_other_images_is_refused_with_their_fingerprint_named(
    images, labels, tmp_path, one_thread
):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint)
    message = refusal(checkpoint, "rotation", images[256:], labels[256:], checkpoint)
    assert named_fields(message) == {"images_sha256"}


def test_a_checkpoint_of_the_supervised_method_is_refused_with_other_labels_and_the_field_named(
    images, labels, tmp_path, one_thread
):
    checkpoint = tmp_path / "run.ckpt"
    run("supervised", images[:256], labels[:256], checkpoint)
    other_labels = (labels[:256] + 1) % 10
    message = refusal(checkpoint, "supervised", images[:256], other_labels, checkpoint)
    assert named_fields(message) == {"labels_sha256"}


def test_labels_are_not_part_of_the_identity_of_a_method_that_does_not_use_them(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    _, history = run("rotation", images[:256], labels[:256], checkpoint)
    assert "labels_sha256" not in torch.load(checkpoint, weights_only=True)["identity"]
    _, resumed = run("rotation", images[:256], (labels[:256] + 1) % 10, checkpoint)
    assert resumed == history


def test_a_checkpoint_of_another_number_of_processes_is_refused_with_the_field_named(
    images, labels, tmp_path, one_thread
):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["identity"]["processes"] == 1
    saved["identity"]["processes"] = 2  # as a torchrun --nproc_per_node=2 run would have written it
    torch.save(saved, checkpoint)
    message = refusal(checkpoint, "rotation", images[:256], labels[:256], checkpoint)
    assert named_fields(message) == {"processes"}
    assert "processes: 2 in the checkpoint, 1 now" in message


def test_a_checkpoint_that_does_not_say_which_run_wrote_it_is_refused(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    run("rotation", images[:256], labels[:256], checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    del saved["identity"]  # as written before checkpoints recorded their run
    torch.save(saved, checkpoint)
    with pytest.raises(CheckpointMismatchError) as error:
        run("rotation", images[:256], labels[:256], checkpoint)
    assert str(error.value) == (
        f"checkpoint {checkpoint} does not say which run wrote it; delete it or pass another --checkpoint path"
    )


def test_the_run_that_wrote_a_checkpoint_resumes_from_it_and_trains_nothing_more(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    first, history = run("simclr", images[:256], labels[:256], checkpoint)
    saved = checkpoint.read_bytes()
    assert [record["epoch"] for record in history] == [1]
    second, resumed = run("simclr", images[:256], labels[:256], checkpoint)  # a fresh method, the same run
    assert resumed == history
    assert checkpoint.read_bytes() == saved  # nothing trained, nothing saved again
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    fresh = build_method("simclr", "fashion-mnist", seed=0).state_dict()
    assert not torch.equal(fresh["encoder.stem.0.weight"], second_state["encoder.stem.0.weight"])  # it was loaded


# -------------------------------------------------------------------------- where each epoch ran


def test_the_checkpoint_records_the_device_of_every_epoch_and_the_run_names_them(images, labels, tmp_path, one_thread):
    checkpoint = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=2, batch_size=64, steps_per_epoch=1, warmup_epochs=0)
    run("simclr", images[:128], labels[:128], checkpoint, config)
    here = describe_device(torch.device("cpu"), config.amp, config.amp_dtype)
    assert torch.load(checkpoint, weights_only=True)["devices"] == [here, here]
    assert devices_of_run(checkpoint) == here


def test_a_run_resumed_on_another_device_names_each_span_of_epochs(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"devices": ["cuda (GPU), bfloat16 autocast"] * 3 + ["cpu (CPU), float32"] * 2}, checkpoint)
    assert devices_of_run(checkpoint) == "epochs 1–3: cuda (GPU), bfloat16 autocast; epochs 4–5: cpu (CPU), float32"
    torch.save({"devices": [None, "cpu (CPU), float32"]}, checkpoint)  # an epoch from before devices were recorded
    assert devices_of_run(checkpoint) == "epochs 1–1: not recorded; epochs 2–2: cpu (CPU), float32"


def test_a_run_moved_from_a_gpu_continues_with_views_seeded_by_the_epoch(images, labels, tmp_path, one_thread, capsys):
    """A CUDA generator's state (16 bytes) cannot be loaded into a CPU generator: the views after the
    move come from a generator seeded with the epoch, the same on every resume, and the order of the
    images (a CPU generator on every device) continues exactly."""
    config = TrainConfig(epochs=2, batch_size=64, steps_per_epoch=1, warmup_epochs=0)
    one_epoch = TrainConfig(**{**config.to_dict(), "epochs": 1})
    checkpoint = tmp_path / "run.ckpt"
    run("simclr", images[:128], labels[:128], checkpoint, one_epoch)
    saved = torch.load(checkpoint, weights_only=True)
    saved["rng"]["augment"] = [torch.zeros(16, dtype=torch.uint8)]  # what a CUDA generator saves
    saved["identity"]["train_config"]["epochs"] = 2
    saved["devices"] = ["cuda (GPU), bfloat16 autocast"]
    finals = []
    for copy in ("a.ckpt", "b.ckpt"):
        torch.save(saved, tmp_path / copy)
        method, history = run("simclr", images[:128], labels[:128], tmp_path / copy, config)
        finals.append(method.state_dict()["encoder.stem.0.weight"])
        assert [record["epoch"] for record in history] == [1, 2]
        assert devices_of_run(tmp_path / copy).startswith("epochs 1–1: cuda (GPU), bfloat16 autocast; epochs 2–2: cpu")
    assert "the run moved to cpu: its views continue from seed" in capsys.readouterr().out
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=0)
