"""The recipe search (sslkit.search, docs/design.md §13): its grids, its decision rule, and that it
resumes without training a run twice."""

import json
import math

import pytest
import torch

import sslkit.search
from sslkit.pipeline import build_varied_method, method_settings_of
from sslkit.search import (
    GRIDS,
    NOISE_SEEDS,
    RecipeSearch,
    changed,
    describe_decision,
    describe_search,
    shipped_value,
    train_config,
)
from sslkit.weights import weights_dir


@pytest.fixture
def root(tmp_path):
    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for entry in manifest["methods"].values():
        entry.get("results", {}).pop("search", None)  # a search of the shipped weights may be under way
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.mark.parametrize("method", sorted(GRIDS))
def test_every_grid_holds_the_shipped_value_and_every_value_builds_a_run(method):
    recipe = sslkit.search.method_class(method).recipe
    for setting, values in GRIDS[method]:
        shipped = shipped_value(method, setting)
        assert any(sslkit.search.same(value, shipped) for value in values), (setting, shipped, values)
        for value in values:
            settings = changed(method, {setting: value})
            config = train_config(settings, 0, recipe)
            built = build_varied_method(method, method_settings_of(settings))
            assert config.epochs == sslkit.search.EPOCHS and config.warmup_epochs == sslkit.search.WARMUP_EPOCHS
            if setting in sslkit.search.SWEEPABLE_TRAIN_SETTINGS:
                assert getattr(config, setting) == value
            elif setting == "crop_min_area":
                assert built.augment_config.crop_scale == (value, 1.0)
            elif setting == "jitter_strength":
                assert built.augment_config.brightness == built.augment_config.contrast == value
            else:
                assert sslkit.search.same(getattr(built, setting), value)


def test_a_run_is_named_by_what_differs_from_the_shipped_recipe():
    assert changed("simclr", {"temperature": 0.3, "decay_every_parameter": 1}) == {}
    assert changed("simclr", {"projector_out_dim": 64, "temperature": 0.1}) == {
        "projector_out_dim": 64,
        "temperature": 0.1,
    }
    assert list(changed("simclr", {"temperature": 0.1, "crop_min_area": 0.08})) == ["crop_min_area", "temperature"]
    assert changed("autoencoder", {"decoder_widths": (32, 16, 8)}) == {"decoder_widths": [32, 16, 8]}
    assert changed("autoencoder", {"decoder_widths": [64, 32, 16]}) == {}
    with pytest.raises(ValueError, match="no setting 'beta'"):
        changed("simclr", {"beta": 1.0})


def fake_scores(method):
    """A validation accuracy for each run that depends only on its settings and seed: the noise runs
    differ by 0.1 points (σ = 0.1 points, threshold 0.28), decay_every_parameter=0 leads by 0.2 (kept
    out), crop area 0.4 by 0.5 (kept), and from there jitter 0.6 by 0.3 (kept)."""
    trained = []

    def short_run(name, settings, config, images, labels, device, dataset, **_):
        assert name == method and config.epochs == sslkit.search.EPOCHS
        trained.append((dict(settings), config.seed, config.decay_every_parameter))
        score = 0.85 + 0.001 * config.seed
        score += 0.002 * (not config.decay_every_parameter)
        score += 0.005 * (settings.get("crop_min_area") == 0.4)
        score += 0.003 * (settings.get("jitter_strength") == 0.6 and settings.get("crop_min_area") == 0.4)
        score -= 0.01 * (settings.get("temperature", 0.3) != 0.3)
        return {"loss": 1.0, "validation_accuracy": score, "seconds": 0.0, "device": short_run.device}

    short_run.device = "cpu (test)"  # where the runs say they trained
    return trained, short_run


def test_the_search_keeps_a_value_only_beyond_the_noise_and_resumes_without_retraining(root, monkeypatch):
    trained, short_run = fake_scores("simclr")
    monkeypatch.setattr(sslkit.search, "short_run", short_run)
    monkeypatch.setattr(sslkit.search, "load_splits", lambda *_: ((None, None), None))
    search = RecipeSearch("simclr", root=root)
    assert search.run(torch.device("cpu"), max_runs=5, report=lambda *_: None) is False
    assert len(trained) == 5
    assert search.run(torch.device("cpu"), report=lambda *_: None) is True

    # the noise runs first; no run is trained twice, the shipped recipe's seed-0 run is reused by every grid
    assert [(settings, seed) for settings, seed, _ in trained[:3]] == [({}, seed) for seed in NOISE_SEEDS]
    keys = [(json.dumps(settings, sort_keys=True), seed, decay) for settings, seed, decay in trained]
    assert len(keys) == len(set(keys))
    runs = json.loads((root / "manifest.json").read_text())["methods"]["simclr"]["results"]["search"]["runs"]
    assert len(runs) == len(trained) == 3 + 1 + 3 + 2 + 2 + 1 + 2
    assert math.isclose(search.noise(), 0.001, rel_tol=1e-9)

    decisions = {d["setting"]: d for d in search.record()["decisions"]}
    assert list(decisions) == [setting for setting, _ in GRIDS["simclr"]]
    assert decisions["decay_every_parameter"]["kept"] == 1  # leads by 0.2 points: within 2·√2·σ = 0.28
    assert math.isclose(decisions["decay_every_parameter"]["threshold"], 2 * math.sqrt(2) * 0.001, abs_tol=1e-6)
    assert decisions["crop_min_area"]["kept"] == 0.4 and decisions["crop_min_area"]["current"] == 0.25
    assert decisions["jitter_strength"]["kept"] == 0.6  # measured with crop area 0.4 kept
    assert decisions["temperature"]["kept"] == 0.3
    assert search.kept() == {"crop_min_area": 0.4, "jitter_strength": 0.6}
    assert "0.6 replaces 0.4: it leads by 0.30 points, beyond 0.28" in describe_decision(decisions["jitter_strength"])
    assert "1 stays: the best, 0, leads by 0.20 points, within 0.28" in describe_decision(
        decisions["decay_every_parameter"]
    )
    assert "0.3 stays: it scores best" in describe_decision(decisions["temperature"])
    assert search.next_step() is None

    summary = describe_search("simclr", root=root).splitlines()
    assert summary[0] == "simclr: 14 runs of 20 epochs, scored by the probe on the validation split"
    assert summary[1] == (
        "seed noise: the starting recipe (shipped when the search began) with seeds 0, 1, 2: 85.00%, 85.10%, 85.20%;"
    )
    assert summary[2] == "    σ = 0.10 points, so a value must lead the kept one by more than 2·√2·σ = 0.28 points"
    assert summary[3:6] == describe_decision(decisions["decay_every_parameter"]).splitlines()
    assert (
        summary[4] == "    (1: weight decay on every parameter; 0: none on biases, normalisation layers or mask tokens)"
    )
    assert summary[-1] == "settings kept: {'crop_min_area': 0.4, 'jitter_strength': 0.6}"
    assert len(summary) == 3 + 2 * len(GRIDS["simclr"]) + 1 + 1  # the decay gloss; one device: no device lines


def test_a_method_without_a_search_says_how_to_run_one(root):
    with pytest.raises(ValueError, match="run python -m sslkit search dcl"):
        describe_search("dcl", root=root)


def test_a_decision_records_the_devices_of_the_runs_it_rests_on(root, monkeypatch):
    _, short_run = fake_scores("vae")
    monkeypatch.setattr(sslkit.search, "short_run", short_run)
    monkeypatch.setattr(sslkit.search, "load_splits", lambda *_: ((None, None), None))
    first, noise, fp32 = "cpu (A), bfloat16 autocast", "cpu (N), bfloat16 autocast", "cpu (B), float32"
    search = RecipeSearch("vae", root=root)
    for device, runs in ((first, 1), (noise, 2), (first, 1), (fp32, 3)):  # seed 0; seeds 1, 2; decay 0; β 1, 2, 4
        short_run.device = device
        search.run(torch.device("cpu"), max_runs=runs, report=lambda *_: None)
    decay, beta = search.record()["decisions"]
    assert decay["devices"] == [first, noise]  # the noise runs, which set the threshold, count too
    assert beta["devices"] == [first, fp32, noise]  # β = 0.5 is the starting recipe's seed-0 noise run
    assert describe_decision(beta).endswith(f"the runs compared trained on 3 devices: {first}; {fp32}; {noise}")


def beta_wins():
    """Scores of a VAE search in which β = 0.5 leads β = 1 by 1 point (σ = 0.1 point): it replaces it."""

    def short_run(name, settings, config, *_, **__):
        return {"loss": 1.0, "validation_accuracy": 0.85 + 0.001 * config.seed + 0.01 * (settings.get("beta") == 0.5),
                "seconds": 0.0, "device": "cpu (test)"}  # fmt: skip

    return short_run


def search_from_beta_one(root, monkeypatch):
    """Run a VAE search, with fake scores, from the recipe shipped before β = 0.5 was chosen: β = 1 in the
    code and in the manifest (no ``previous_run``)."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["methods"]["vae"]
    entry["config"]["beta"] = 1.0
    entry["results"].pop("previous_run", None)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with monkeypatch.context() as patch:
        shipped = sslkit.search.shipped_value
        patch.setattr(
            sslkit.search,
            "shipped_value",
            lambda method, setting, *a: 1.0 if setting == "beta" else shipped(method, setting),
        )
        patch.setattr(sslkit.search, "short_run", beta_wins())
        patch.setattr(sslkit.search, "load_splits", lambda *_: ((None, None), None))
        RecipeSearch("vae", root=root).run(torch.device("cpu"), report=lambda *_: None)
        before = describe_search("vae", root=root)
        assert RecipeSearch("vae", root=root).start()["beta"] == 1.0 and "settings kept: {'beta': 0.5}" in before
    return before


def test_run_names_keep_their_meaning_when_the_chosen_recipe_is_shipped(root, monkeypatch):
    before = search_from_beta_one(root, monkeypatch)
    assert shipped_value("vae", "beta") == 0.5  # the code's default is now the chosen value, as shipped
    search = RecipeSearch("vae", root=root)
    assert search.kept() == {"beta": 0.5} and search.score({}, 0) == pytest.approx(0.85)  # {} is still β = 1
    assert search.next_step() is None and describe_search("vae", root=root) == before


def test_the_search_says_whether_the_full_length_runs_rank_as_the_short_ones(root, monkeypatch):
    search_from_beta_one(root, monkeypatch)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["methods"]["vae"]
    assert "at 100 epochs" not in describe_search("vae", root=root)  # the chosen recipe is not shipped yet
    probe = entry["results"]["linear_probe"]
    chosen = probe["validation_accuracy"][f"{probe['weight_decay']:g}"]
    entry["results"]["previous_run"] = {"config": dict(entry["config"]), "train": entry["train"],
                                        "validation_accuracy": chosen - 0.004}  # fmt: skip
    entry["config"]["beta"] = 0.5  # the shipped run now has the chosen recipe
    for old, verdict in ((chosen - 0.004, "holds"), (chosen + 0.004, "does not hold")):
        entry["results"]["previous_run"]["validation_accuracy"] = old
        (root / "manifest.json").write_text(json.dumps(manifest))
        lines = describe_search("vae", root=root).splitlines()[-3:-1]
        assert lines == [
            f"at 100 epochs (the shipped runs): the chosen recipe scores {100 * chosen:.2f}% on the validation probe, "
            f"the starting one {100 * old:.2f}%:",
            f"    the ranking of the 20-epoch runs {verdict}",
        ]
    entry["results"]["previous_run"]["config"]["latent_dim"] = 64  # the replaced run was not the starting recipe
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert "at 100 epochs" not in describe_search("vae", root=root)


def test_runs_of_another_protocol_are_not_mixed_in(root, monkeypatch):
    _, short_run = fake_scores("rotation")
    monkeypatch.setattr(sslkit.search, "short_run", short_run)
    monkeypatch.setattr(sslkit.search, "load_splits", lambda *_: ((None, None), None))
    RecipeSearch("rotation", root=root).run(torch.device("cpu"), max_runs=1, report=lambda *_: None)
    with pytest.raises(ValueError, match="runs of two protocols cannot be compared"):
        RecipeSearch("rotation", root=root, steps_per_epoch=2).next_step()


def test_only_searched_methods_have_a_search(root):
    with pytest.raises(ValueError, match="the recipe search covers"):
        RecipeSearch("supervised", root=root)


def test_the_command_trains_and_records_a_real_run(root, capsys):
    from sslkit.cli import main

    code = main(["search", "rotation", "--weights", str(root), "--limit", "600", "--steps-per-epoch", "1",
                 "--max-runs", "1"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "rotation starting recipe seed 0: validation probe accuracy" in out and "search stopped" in out
    search = json.loads((root / "manifest.json").read_text())["methods"]["rotation"]["results"]["search"]
    (run,) = search["runs"]
    assert run["settings"] == {} and run["seed"] == 0 and 0.1 < run["validation_accuracy"] <= 1
    assert run["command"].startswith("python -m sslkit search rotation") and run["device"].startswith("cpu")
    assert search["protocol"]["smoke"] == {"limit": 600, "steps_per_epoch": 1}


def test_a_sweep_invoked_again_with_other_values_keeps_the_runs_it_has(root, monkeypatch):
    import sslkit.pipeline
    from sslkit.pipeline import Sweep

    trained = []

    def short_run(name, settings, config, *args, **kwargs):
        trained.append(settings["beta"])
        return {
            "loss": 1.0,
            "validation_accuracy": 0.8 + settings["beta"] / 100,
            "seconds": 0.0,
            "device": "cpu (test)",
        }

    monkeypatch.setattr(sslkit.pipeline, "short_run", short_run)
    monkeypatch.setattr(sslkit.pipeline, "load_splits", lambda *_: ((None, None), None))
    Sweep("vae", "beta", [0.5, 2.0], root=root).run(torch.device("cpu"), report=lambda *_: None)
    Sweep("vae", "beta", [4.0, 2.0], root=root).run(torch.device("cpu"), report=lambda *_: None)
    runs = json.loads((root / "manifest.json").read_text())["methods"]["vae"]["results"]["sweeps"]["beta"]["runs"]
    assert trained == [0.5, 2.0, 4.0]  # 2.0 was recorded already
    assert sorted(run["value"] for run in runs) == [0.5, 2.0, 4.0]


def test_a_run_interrupted_after_training_resumes_from_its_checkpoint_and_the_record_deletes_it(
    root, tmp_path, monkeypatch
):
    import sslkit.pipeline
    import sslkit.train

    epochs_trained = []
    train_one_epoch = sslkit.train.train_one_epoch

    def counted(*args, **kwargs):
        epochs_trained.append(1)
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(sslkit.train, "train_one_epoch", counted)
    monkeypatch.setattr(sslkit.search, "EPOCHS", 2)
    probe = sslkit.pipeline.select_and_fit_linear_probe

    def killed(*_, **__):
        raise KeyboardInterrupt  # the search is stopped while the probe is fitted

    monkeypatch.setattr(sslkit.pipeline, "select_and_fit_linear_probe", killed)
    search = RecipeSearch("rotation", root=root, limit=600, steps_per_epoch=1, checkpoints=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        search.run(torch.device("cpu"), max_runs=1, report=lambda *_: None)
    checkpoint = search.checkpoint_path({}, 0)
    assert checkpoint.name == "rotation.fashion-mnist.smoke.start.seed0.ckpt" and checkpoint.exists()
    assert len(epochs_trained) == 2

    monkeypatch.setattr(sslkit.pipeline, "select_and_fit_linear_probe", probe)
    search.run(torch.device("cpu"), max_runs=1, report=lambda *_: None)
    assert len(epochs_trained) == 2  # both epochs came from the checkpoint
    (run,) = json.loads((root / "manifest.json").read_text())["methods"]["rotation"]["results"]["search"]["runs"]
    assert not list((tmp_path / "ckpt").iterdir())  # its checkpoint and history are deleted
    assert run["device"].startswith("cpu") and run["seconds"] > 0


def test_a_run_names_its_checkpoint_by_its_settings_and_seed(root, tmp_path):
    search = RecipeSearch("autoencoder", root=root, checkpoints=tmp_path)
    path = search.checkpoint_path({"decoder_widths": [32, 16, 8], "noise_std": 0.2}, 2)
    assert path == tmp_path / "autoencoder.fashion-mnist.decoder_widths=32x16x8-noise_std=0.2.seed2.ckpt"
