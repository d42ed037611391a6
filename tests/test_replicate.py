"""A second training run of a shipped recipe (sslkit.replicate): it rebuilds the shipped run's recipe
rather than today's defaults, records its results beside the shipped ones, and the README table shows
them."""

import json

import pytest
import torch

import sslkit.replicate
from sslkit.methods import build_method
from sslkit.results import results_table
from sslkit.train import TrainConfig
from sslkit.weights import weights_dir


@pytest.fixture
def root(tmp_path):
    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    manifest["methods"]["rotation"]["train"]["epochs"] = 1
    manifest["methods"]["rotation"]["config"]["head_hidden_dim"] = 64  # not the default: must come from here
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def recorded(root, method="rotation"):
    return json.loads((root / "manifest.json").read_text())["methods"][method]["results"]


def test_a_replicate_needs_a_trained_run_and_another_seed(root):
    with pytest.raises(ValueError, match="hog has no training run to replicate"):
        sslkit.replicate.replicate_config("hog", 1, root=root)
    with pytest.raises(ValueError, match="seed 0's; replicate it with another --seed"):
        sslkit.replicate.replicate_config("rotation", 0, root=root)
    config = sslkit.replicate.replicate_config("rotation", 1, root=root)
    shipped = json.loads((root / "manifest.json").read_text())["methods"]["rotation"]["train"]
    assert config.to_dict() == TrainConfig(**{**shipped, "seed": 1}).to_dict()  # the rest as the shipped run's
    assert (config.epochs, config.optimizer, config.lr) == (1, "sgd", 0.1)


def test_it_trains_the_shipped_recipe_with_the_new_seed_and_records_beside_the_shipped_run(root, monkeypatch, tmp_path):
    trained = []

    def fake_train(model, images, labels, config, device, checkpoint, **_):
        trained.append((model, config))
        torch.save({"devices": ["cpu (test), float32"]}, checkpoint)
        return [{"seconds": 2.5}]

    monkeypatch.setattr(sslkit.replicate, "train", fake_train)
    for seed, limit in ((2, 600), (1, 600), (2, 700)):  # seed 2 again: its second record replaces the first
        sslkit.replicate.replicate(
            "rotation", seed, torch.device("cpu"), root=root, checkpoint=tmp_path / f"s{seed}.ckpt", limit=limit
        )
    model, config = trained[0]
    assert model.head_hidden_dim == 64 and config.seed == 2 and config.epochs == 1  # the shipped run's recipe
    for model, config in trained:  # initialised as pretrain --seed initialises the same recipe
        built = build_method("rotation", seed=config.seed, head_hidden_dim=64)
        assert all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), built.state_dict().values(), strict=True)
        )
    assert not torch.equal(next(trained[0][0].parameters()), next(trained[1][0].parameters()))

    replicates = recorded(root)["replicates"]
    assert [(run["seed"], run["limit"]) for run in replicates] == [(1, 600), (2, 700)]
    sha = json.loads((root / "manifest.json").read_text())["methods"]["rotation"]["sha256"]
    for run in replicates:
        assert 0.1 < run["linear_probe"] <= 1 and 0.1 < run["knn"] <= 1 and 0.1 < run["validation_accuracy"] <= 1
        assert run["device"] == "cpu (test), float32" and run["wall_time_seconds"] == 2.5
        assert run["replicates_sha256"] == sha


def test_a_replicate_of_weights_replaced_while_it_trained_is_not_recorded(root, monkeypatch, tmp_path):
    def train_while_weights_change(model, images, labels, config, device, checkpoint, **_):
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["methods"]["rotation"]["sha256"] = "0" * 64  # new rotation weights are published meanwhile
        (root / "manifest.json").write_text(json.dumps(manifest))
        torch.save({"devices": ["cpu (test), float32"]}, checkpoint)
        return [{"seconds": 1.0}]

    monkeypatch.setattr(sslkit.replicate, "train", train_while_weights_change)
    with pytest.raises(ValueError, match="shipped weights were replaced while this replicate trained"):
        sslkit.replicate.replicate("rotation", 1, torch.device("cpu"), root=root, checkpoint=tmp_path / "c", limit=600)
    assert "replicates" not in recorded(root)


def test_the_command_trains_and_records_a_real_replicate(root, tmp_path, capsys):
    from sslkit.cli import main

    code = main(["replicate", "rotation", "--weights", str(root), "--limit", "600", "--steps-per-epoch", "2",
                 "--device", "cpu", "--checkpoint", str(tmp_path / "r.ckpt"), "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "rotation seed 1: linear probe" in out and "recorded under results.replicates" in out
    (run,) = recorded(root)["replicates"]
    assert run["seed"] == 1 and run["epochs"] == 1 and run["steps_per_epoch"] == 2
    assert run["command"].startswith("python -m sslkit replicate rotation") and run["device"].startswith("cpu")


def test_the_table_gets_a_column_and_a_note_once_a_method_has_another_seed():
    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    for entry in manifest["methods"].values():
        entry["results"].pop("replicates", None)
    assert "other seeds" not in results_table(manifest)
    simclr, dcl = manifest["methods"]["simclr"], manifest["methods"]["dcl"]
    probe = simclr["results"]["linear_probe"]["test_accuracy"]

    def replicate(entry, seed, accuracy, **extra):
        return {"seed": seed, "linear_probe": accuracy, "device": entry["device"], "replicates_sha256": entry["sha256"],
                **extra}  # fmt: skip

    simclr["results"]["replicates"] = [
        replicate(simclr, 1, probe + 0.004),
        replicate(simclr, 2, probe - 0.2, limit=600),  # a smoke run: not shown
        {**replicate(simclr, 3, probe - 0.2), "replicates_sha256": "0" * 64},  # of earlier weights: not shown
    ]
    dcl["results"]["replicates"] = [replicate(dcl, 1, 0.5, steps_per_epoch=2)]  # only a smoke run: no figure
    table = results_table(manifest)
    header, rule, *rows = table.splitlines()
    assert header.count("|") == rule.count("|")
    assert all(row.count("|") == header.count("|") for row in rows if row.startswith("| "))
    simclr_row = next(row for row in rows if row.startswith("| SimCLR |"))
    assert simclr_row.split("|")[3].strip() == f"{100 * probe + 0.4:.2f} (seed 1)"
    assert next(row for row in rows if row.startswith("| DCL |")).split("|")[3].strip() == "–"
    trained = sum("train" in entry for entry in manifest["methods"].values())
    assert f"for 1 of the {trained} trained encoders; the widest gap between two seeds of one method is 0.40 points " \
        "(SimCLR)" in table  # fmt: skip
    assert "another precision" not in table

    simclr["results"]["replicates"][0]["device"] = "cpu (B), float32"  # the shipped run was bf16
    table = results_table(manifest)
    assert f"| {100 * probe + 0.4:.2f} (seed 1, float32) |" in table and "mixes seed and precision" in table
