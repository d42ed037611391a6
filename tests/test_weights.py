import json
import shutil

import pytest
import torch

import sslkit
from sslkit.models import build_encoder, encoder_config
from sslkit.protocol import LinearProbe
from sslkit.weights import (
    WeightsError,
    load_history,
    load_pretrained,
    load_probe,
    load_state,
    manifest_entry,
    publish,
    shipped_names,
    weights_dir,
)


@pytest.fixture
def shipped(tmp_path):
    """A weights folder holding a random encoder and a probe as 'simclr', like the real ones."""
    torch.manual_seed(0)
    encoder = build_encoder(encoder_config())
    probe = LinearProbe(torch.randn(10, 128), torch.randn(10), torch.randn(128), torch.rand(128) + 0.5, 1e-4)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()} | probe.state_dict()
    entry = {"config": {"encoder_config": encoder.config()}, "results": {}}
    publish("simclr", state, entry, history=[{"epoch": 1, "loss": 5.0}], root=tmp_path)
    return tmp_path, encoder.eval(), probe


def test_round_trip_gives_the_frozen_encoder_and_probe(shipped):
    folder, encoder, probe = shipped
    loaded = load_pretrained("simclr", root=folder)
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(images), encoder(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(load_probe("simclr", root=folder).weight, probe.weight)
    assert load_history("simclr", root=folder) == [{"epoch": 1, "loss": 5.0}]
    assert manifest_entry("simclr", root=folder)["dataset"] == "fashion-mnist"  # publish records the dataset


def test_environment_variable_selects_the_weights_folder(shipped, monkeypatch):
    folder, encoder, _ = shipped
    monkeypatch.setenv("SSLKIT_WEIGHTS", str(folder))
    images = torch.rand(2, 1, 28, 28)
    assert torch.equal(sslkit.load_pretrained("simclr")(images), encoder(images))


def test_a_flipped_byte_is_caught(shipped):
    folder, _, _ = shipped
    path = folder / "simclr.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"simclr\.pth.*sha256.*corrupt, truncated or tampered"):
        load_pretrained("simclr", root=folder)


def test_a_tampered_history_is_caught(shipped):
    folder, _, _ = shipped
    (folder / "simclr.history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.1}]))
    with pytest.raises(WeightsError, match="tampered"):
        load_history("simclr", root=folder)


def test_missing_weights_file(shipped):
    folder, _, _ = shipped
    (folder / "simclr.pth").unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_state("simclr", root=folder)


def test_the_weights_of_another_dataset_live_in_their_own_folder_under_the_root(shipped):
    folder, _, _ = shipped
    encoder = build_encoder(encoder_config("cifar10"))
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    entry = {"config": {"encoder_config": encoder.config()}, "results": {}}
    publish("simclr", state, entry, dataset="cifar10", root=folder)
    assert weights_dir("cifar10", folder) == folder / "cifar10" and (folder / "cifar10" / "simclr.pth").is_file()
    assert load_pretrained("simclr", dataset="cifar10", root=folder)(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    assert load_pretrained("simclr", root=folder).config()["in_channels"] == 1  # Fashion-MNIST's are untouched
    assert shipped_names("cifar10", folder) == ["simclr"] and shipped_names("mnist", folder) == []
    # A folder whose manifest records another dataset's weights is refused, naming both datasets.
    shutil.copytree(folder / "cifar10", folder / "mnist")
    with pytest.raises(WeightsError, match="trained on CIFAR-10, not on MNIST"):
        load_pretrained("simclr", dataset="mnist", root=folder)


def test_state_dict_of_another_architecture_is_reported(shipped):
    folder, _, _ = shipped
    small = build_encoder({**encoder_config(), "widths": [16, 32, 64]})
    publish(
        "simclr",
        {f"encoder.{k}": v for k, v in small.state_dict().items()},
        {"config": {"encoder_config": encoder_config()}, "results": {}},  # widths 32, 64, 128
        root=folder,
    )
    with pytest.raises(WeightsError, match="does not fit ResNetEncoder"):
        load_pretrained("simclr", root=folder)


def test_unknown_and_unshipped_names(shipped):
    folder, _, _ = shipped
    methods = "autoencoder, vae, rotation, simclr, dcl, vicreg, barlow_twins, mae, byol, simsiam, dino"
    with pytest.raises(ValueError, match=methods):
        load_pretrained("simclrr", root=folder)
    with pytest.raises(WeightsError, match="python -m sslkit pretrain vicreg"):
        manifest_entry("vicreg", root=folder)


def test_corrupt_manifest_is_reported(shipped):
    folder, _, _ = shipped
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_pretrained("simclr", root=folder)


def test_an_entry_that_does_not_name_its_dataset_is_refused_with_the_command_to_republish(shipped):
    folder, _, _ = shipped
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["methods"]["simclr"]["dataset"]
    manifest["methods"]["simclr"]["command"] = "python -m sslkit pretrain simclr"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="does not say which dataset.*python -m sslkit pretrain simclr"):
        load_pretrained("simclr", root=folder)


def _record_many(root, worker, count):
    from sslkit.weights import record_results

    for i in range(count):
        record_results("simclr", f"worker{worker}_{i}", i, root=root)


def test_concurrent_records_lose_nothing(tmp_path):
    """Sweeps record runs while a training publishes: each read-change-write holds the manifest's lock."""
    import multiprocessing

    publish("simclr", {"encoder.w": torch.zeros(1)}, {"config": {}, "results": {}}, root=tmp_path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_many, args=(tmp_path, w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = manifest_entry("simclr", root=tmp_path)["results"]
    assert len([key for key in results if key.startswith("worker")]) == 100


def test_publishing_again_keeps_the_search_and_the_sweeps_and_summarises_the_run_it_replaces(tmp_path):
    state = {"encoder.w": torch.zeros(1)}
    probe = {"test_accuracy": 0.88, "weight_decay": 1e-4, "validation_accuracy": {"0.0001": 0.89, "0.001": 0.87}}
    first = {
        "config": {"beta": 1.0},
        "train": {"seed": 0},
        "device": "cpu (A), float32",
        "results": {
            "linear_probe": probe,
            "knn": {"test_accuracy": 0.85},
            "search": {"runs": ["a run"]},
            "sweeps": {"beta": "old", "latent_dim": "kept"},
            "fine_tune": "of the first weights",
            "replicates": ["of the first weights"],
        },
    }
    publish("vae", state, first, root=tmp_path)
    sha = manifest_entry("vae", root=tmp_path)["sha256"]
    second = {"config": {"beta": 0.5}, "train": {"seed": 0}, "results": {"linear_probe": {}, "sweeps": {"beta": "new"}}}
    publish("vae", {"encoder.w": torch.ones(1)}, second, root=tmp_path)
    results = manifest_entry("vae", root=tmp_path)["results"]
    assert results["search"] == {"runs": ["a run"]}
    assert results["sweeps"] == {"beta": "new", "latent_dim": "kept"}  # the new run's sweep of the same name wins
    assert "fine_tune" not in results and "replicates" not in results  # measurements of the replaced weights
    assert results["previous_run"] == {
        "sha256": sha,
        "config": {"beta": 1.0},
        "train": {"seed": 0},
        "linear_probe": 0.88,
        "validation_accuracy": 0.89,
        "knn": 0.85,
        "device": "cpu (A), float32",
    }
