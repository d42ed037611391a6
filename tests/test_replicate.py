"""A second training run of a shipped recipe (sslkit.replicate): it rebuilds the shipped run's recipe
rather than today's defaults, records its results beside the shipped ones, and the README table shows
them."""

import json

import pytest
import torch

import sslkit.replicate
from sslkit.results import results_table
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
    assert {key: config.to_dict()[key] for key in shipped} == {**shipped, "seed": 1}  # the rest unchanged


def test_it_trains_the_shipped_recipe_with_the_new_seed_and_records_beside_the_shipped_run(root, monkeypatch, tmp_path):
    trained = []

    def fake_train(model, images, labels, config, device, checkpoint, **_):
        trained.append((model, config))
        torch.save({"devices": ["cpu (test), float32"]}, checkpoint)
        return [{"seconds": 2.5}]

    monkeypatch.setattr(sslkit.replicate, "train", fake_train)
    for seed in (2, 1, 2):  # seed 2 twice: the second record replaces the first
        sslkit.replicate.replicate(
            "rotation", seed, torch.device("cpu"), root=root, checkpoint=tmp_path / f"s{seed}.ckpt", limit=600
        )
    model, config = trained[0]
    assert model.head_hidden_dim == 64 and config.seed == 2 and config.epochs == 1  # the shipped run's recipe
    for model, config in trained:  # initialised with the replicate's seed, as pretrain --seed does
        with sslkit.replicate.seeded(config.seed):
            fresh = sslkit.replicate.method_from_config("rotation", model.config())
        assert all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
        )
    assert not torch.equal(next(trained[0][0].parameters()), next(trained[1][0].parameters()))

    replicates = recorded(root)["replicates"]
    assert [run["seed"] for run in replicates] == [1, 2]
    for run in replicates:
        assert 0.1 < run["linear_probe"] <= 1 and 0.1 < run["knn"] <= 1 and 0.1 < run["validation_accuracy"] <= 1
        assert run["device"] == "cpu (test), float32" and run["wall_time_seconds"] == 2.5 and run["limit"] == 600


def test_the_command_trains_and_records_a_real_replicate(root, tmp_path, capsys):
    from sslkit.cli import main

    code = main(["replicate", "rotation", "--weights", str(root), "--limit", "600", "--steps-per-epoch", "2",
                 "--checkpoint", str(tmp_path / "r.ckpt"), "--no-progress"])  # fmt: skip
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
    simclr = manifest["methods"]["simclr"]["results"]
    simclr["replicates"] = [{"seed": 1, "linear_probe": simclr["linear_probe"]["test_accuracy"] + 0.004}]
    table = results_table(manifest)
    header, rule, *rows = table.splitlines()
    assert header.count("|") == rule.count("|")
    assert all(row.count("|") == header.count("|") for row in rows if row.startswith("| "))
    simclr_row = next(row for row in rows if row.startswith("| SimCLR |"))
    assert f"| {100 * simclr['linear_probe']['test_accuracy'] + 0.4:.2f} (seed 1) |" in simclr_row
    assert next(row for row in rows if row.startswith("| DCL |")).split("|")[3].strip() == "–"
    assert "for 1 of the methods; the widest gap between a method's seeds is 0.40 points (SimCLR)" in table
