import json

import pytest
import torch

import sslkit
from sslkit.evaluate import LinearProbe
from sslkit.models import build_encoder
from sslkit.weights import WeightsError, load_history, load_pretrained, load_probe, load_state, manifest_entry, publish


@pytest.fixture
def shipped(tmp_path):
    """A weights folder holding a random encoder and a probe as 'simclr', like the real ones."""
    torch.manual_seed(0)
    encoder = build_encoder()
    probe = LinearProbe(torch.randn(10, 128), torch.randn(10), torch.randn(128), torch.rand(128) + 0.5, 1e-4)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()} | probe.state_dict()
    entry = {"config": {"encoder": encoder.config()}, "results": {}}
    publish("simclr", state, entry, history=[{"epoch": 1, "loss": 5.0}], directory=tmp_path)
    return tmp_path, encoder.eval(), probe


def test_round_trip_gives_the_frozen_encoder_and_probe(shipped):
    folder, encoder, probe = shipped
    loaded = load_pretrained("simclr", directory=folder)
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(images), encoder(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(load_probe("simclr", folder).weight, probe.weight)
    assert load_history("simclr", folder) == [{"epoch": 1, "loss": 5.0}]


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
        load_pretrained("simclr", directory=folder)


def test_a_tampered_history_is_caught(shipped):
    folder, _, _ = shipped
    (folder / "simclr.history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.1}]))
    with pytest.raises(WeightsError, match="tampered"):
        load_history("simclr", folder)


def test_missing_weights_file(shipped):
    folder, _, _ = shipped
    (folder / "simclr.pth").unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_state("simclr", folder)


def test_state_dict_of_another_architecture_is_reported(shipped):
    folder, _, _ = shipped
    small = build_encoder({"widths": [16, 32, 64], "in_channels": 1})
    publish(
        "simclr",
        {f"encoder.{k}": v for k, v in small.state_dict().items()},
        {"config": {"encoder": {"widths": [32, 64, 128], "in_channels": 1}}, "results": {}},
        directory=folder,
    )
    with pytest.raises(WeightsError, match="does not fit ResNetEncoder"):
        load_pretrained("simclr", directory=folder)


def test_unknown_and_unshipped_names(shipped):
    folder, _, _ = shipped
    with pytest.raises(ValueError, match="autoencoder, vae, rotation, simclr, dcl, vicreg, mae"):
        load_pretrained("simsiam", directory=folder)
    with pytest.raises(WeightsError, match="python -m sslkit pretrain vicreg"):
        manifest_entry("vicreg", folder)


def test_corrupt_manifest_is_reported(shipped):
    folder, _, _ = shipped
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_pretrained("simclr", directory=folder)


def _record_many(directory, worker, count):
    from sslkit.weights import record_results

    for i in range(count):
        record_results("simclr", f"worker{worker}_{i}", i, directory)


def test_concurrent_records_lose_nothing(tmp_path):
    """Sweeps record runs while a training publishes: each read-change-write holds the manifest's lock."""
    import multiprocessing

    publish("simclr", {"encoder.w": torch.zeros(1)}, {"config": {}, "results": {}}, directory=tmp_path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_many, args=(tmp_path, w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = manifest_entry("simclr", tmp_path)["results"]
    assert len([key for key in results if key.startswith("worker")]) == 100
