import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import torch

from sslkit.cli import main


def sslkit(*args):
    """``python -m sslkit ARGS`` run in this process, as ``__main__`` runs it (``cli.main``): its exit status
    and output. In-process, so that each call does not pay for importing PyTorch again; the entry point
    itself is tested as a real subprocess below."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse: --help and bad arguments
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def test_python_dash_m_sslkit_is_the_command_line():
    ran = subprocess.run([sys.executable, "-m", "sslkit", "pretrain", "--epochs", "0"], capture_output=True, text=True)
    assert ran.returncode == 2 and "argument --epochs: must be a positive integer, got 0" in ran.stderr
    assert subprocess.run([sys.executable, "-m", "sslkit", "--help"], capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize(
    "command", ["pretrain", "evaluate", "geometry", "transfer", "finetune", "sweep", "bench", "results"]
)
def test_every_command_explains_its_options(command):
    result = sslkit(command, "--help")
    assert result.returncode == 0
    assert "usage: python -m sslkit " + command in result.stdout
    assert "--device" in result.stdout or command == "results"


@pytest.mark.parametrize(
    "args,message",
    [
        (["pretrain", "simclr", "--epochs", "0"], "must be a positive integer"),
        (["pretrain", "simclr", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["pretrain", "simclrr"], "invalid choice: 'simclrr'"),
        (["evaluate", "simclrr"], "unknown method 'simclrr'; methods are autoencoder"),
        (["pretrain", "supervised", "--temperature", "0.5"], "temperature does not apply to supervised; its settings"),
        (["pretrain", "vae", "--set", "crop_min_area=0.5"], "crop_min_area does not apply to vae; its settings"),
        (["pretrain", "vae", "--set", "beta"], "--set takes NAME=VALUE, e.g."),
        (["pretrain", "vae", "--lr", "0.1", "--set", "lr=0.2"], "lr has an option of its own (--lr); not --set lr="),
        (["pretrain", "vae", "--set", "batch_size=64"], "batch_size has an option of its own (--batch-size)"),
        (["finetune", "pixels"], "'pixels' has no network to fine-tune"),
        (["finetune", "hog"], "'hog' has no network to fine-tune"),
        (["finetune", "simclr", "--fractions", "2"], "--fractions must be in (0, 1]"),
        (["sweep", "vae", "gamma", "1"], "vae has no setting 'gamma'; choose one of batch_size, beta"),
        (["sweep", "simclr", "temperature", "0.5", "--lr-scaling", "linear"], "applies only when sweeping batch_size"),
        (["sweep", "vae", "beta", "1", "--diagnostics"], "--diagnostics needs a method with embeddings"),
        (["sweep", "simclr", "views", "all", "sideways"], "unknown views ['sideways']; choose among all, no_crop"),
        (["sweep", "simclr", "temperature", "warm"], "temperature takes numbers, got ['warm']"),
        (["sweep", "vae", "views", "all"], "vae has no setting 'views'"),
        (["sweep", "rotation", "jitter_strength", "0.4"], "apply no brightness/contrast jitter"),
        (["sweep", "simclr", "crop_min_area", "0.2", "1.5"], "crop_min_area is a fraction of the image's area"),
        (["sweep", "simclr", "views", "all", "--dataset", "cifar10"], "defined for greyscale images"),
    ],
)
def test_invalid_values_get_a_clear_error(args, message):
    result = sslkit(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_tiny_pretrain_run_publishes_weights_that_evaluate_reproduces(tmp_path):
    out = tmp_path / "weights"
    result = sslkit(
        "pretrain",
        "simclr",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "64",
        "--limit",
        "600",
        "--out",
        str(out),
        "--checkpoint",
        str(tmp_path / "run.ckpt"),
        "--no-progress",
        *("--set", "crop_min_area=0.5", "--set", "decay_every_parameter=0", "--set", "projector_out_dim=32"),
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["methods"]["simclr"]
    assert entry["epochs"] == 1 and entry["batch_size"] == 64
    # --set changes the views, the training and the method, and the record says so
    assert entry["config"]["augment_config"]["crop_scale"][0] == 0.5 and entry["config"]["projector_out_dim"] == 32
    assert entry["train"]["decay_every_parameter"] in (0, False) and "--set crop_min_area=0.5" in entry["command"]
    assert entry["command"].startswith("python -m sslkit pretrain simclr --epochs 1")
    assert 0.0 < entry["results"]["linear_probe"]["test_accuracy"] <= 1.0
    assert len(entry["results"]["linear_probe"]["per_class_accuracy"]) == 10
    assert 0 <= entry["results"]["geometry"]["alignment"] <= 4 and entry["results"]["geometry"]["uniformity"] <= 0
    assert (out / "simclr.pth").stat().st_size == entry["size_bytes"]
    assert (tmp_path / "run.ckpt").exists() and (tmp_path / "run.history.json").exists()

    evaluated = sslkit("evaluate", "simclr", "--weights", str(out), "--limit", "600", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "simclr" in evaluated.stdout

    # geometry re-measures what pretrain recorded, from the published weights and the same seeded views
    recorded = entry["results"]["geometry"]
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "methods": {
                    "simclr": {**entry, "results": {k: v for k, v in entry["results"].items() if k != "geometry"}}
                }
            }
        )
    )
    measured = sslkit("geometry", "simclr", "--weights", str(out), "--limit", "600", "--device", "cpu")
    assert measured.returncode == 0, measured.stderr
    remeasured = json.loads((out / "manifest.json").read_text())["methods"]["simclr"]["results"]["geometry"]
    assert remeasured["alignment"] == pytest.approx(recorded["alignment"], abs=1e-4)
    assert remeasured["uniformity"] == pytest.approx(recorded["uniformity"], abs=1e-4)

    # transfer re-measures what pretrain recorded (one shuffling of two folds in a smoke run)
    transfer = entry["results"]["transfer"]
    assert transfer["folds"] == 2 and transfer["repeats"] == 1 and transfer["images"] == 600  # the first 600 digits
    assert 0.1 < transfer["mean"] <= 1 and len(transfer["accuracies"]) == 2
    transferred = sslkit(
        "transfer", "simclr", "--weights", str(out), "--repeats", "1", "--limit", "600", "--device", "cpu"
    )
    assert transferred.returncode == 0, transferred.stderr
    remeasured = json.loads((out / "manifest.json").read_text())["methods"]["simclr"]["results"]["transfer"]
    assert remeasured == transfer

    # The batch-size experiment of notebook 05: learning rate scaled linearly, two seeds, diagnostics.
    swept = sslkit(
        "sweep",
        "simclr",
        "batch_size",
        "32",
        "64",
        "--seeds",
        "0",
        "1",
        "--lr-scaling",
        "linear",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--limit",
        "600",
        "--weights",
        str(out),
        "--diagnostics",
    )
    assert swept.returncode == 0, swept.stderr
    sweep = json.loads((out / "manifest.json").read_text())["methods"]["simclr"]["results"]["sweeps"]["batch_size"]
    assert [(run["value"], run["seed"]) for run in sweep["runs"]] == [(32, 0), (32, 1), (64, 0), (64, 1)]
    assert [run["lr"] for run in sweep["runs"]] == pytest.approx([0.0125, 0.0125, 0.025, 0.025])
    assert sweep["lr_scaling"] == "linear" and sweep["runs"][0]["validation_accuracy"] > 0
    diagnostics = sweep["runs"][0]["diagnostics"]
    # 60 validation images (a tenth of 600) of 128-d features and embeddings: 60 singular values each.
    assert len(diagnostics["embedding_std"]) == 128 and diagnostics["images"] == 60
    assert len(diagnostics["feature_singular_values"]) == len(diagnostics["embedding_singular_values"]) == 60
    assert len(diagnostics["embedding_covariance_block"]) == 32 and 1 <= diagnostics["feature_effective_rank"] <= 128

    # An interrupted sweep resumes: runs already recorded with the same settings are not trained again.
    again = sslkit(
        "sweep",
        "simclr",
        "batch_size",
        "32",
        "64",
        "--seeds",
        "0",
        "1",
        "--lr-scaling",
        "linear",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--limit",
        "600",
        "--weights",
        str(out),
        "--diagnostics",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("recorded by an earlier, interrupted sweep") == 4
    assert (
        json.loads((out / "manifest.json").read_text())["methods"]["simclr"]["results"]["sweeps"]["batch_size"]["runs"]
        == sweep["runs"]
    )

    # The augmentation ablation of notebook 04, each run monitored without labels along the way.
    ablation = sslkit(
        "sweep",
        "simclr",
        "views",
        "all",
        "no_crop",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "1",
        "--limit",
        "600",
        "--weights",
        str(out),
        "--monitor-every",
        "1",
    )
    assert ablation.returncode == 0, ablation.stderr
    sweep = json.loads((out / "manifest.json").read_text())["methods"]["simclr"]["results"]["sweeps"]["views"]
    assert [run["value"] for run in sweep["runs"]] == ["all", "no_crop"] and sweep["monitor_every"] == 1
    history = sweep["runs"][0]["history"]
    assert [record["epoch"] for record in history] == [1, 2] and history[-1]["loss"] == sweep["runs"][0]["loss"]
    step_metrics = set(sweep["runs"][0]) - {
        "value",
        "seed",
        "lr",
        "validation_accuracy",
        "seconds",
        "history",
        "device",
    }
    assert all(history[-1][key] == sweep["runs"][0][key] for key in step_metrics)  # each epoch keeps all of them
    assert all(0 <= record["knn_validation_accuracy"] <= 1 for record in history)
    # the normalised embeddings' per-dimension std is at most 1/√D = 0.088 for D = 128; the rank at most 60 images
    assert all(0 < record["embedding_std"] <= 128**-0.5 + 1e-6 for record in history)
    assert all(1 <= record["embedding_effective_rank"] <= 60 for record in history)
    assert sweep["runs"][0]["validation_accuracy"] != sweep["runs"][1]["validation_accuracy"]  # other views

    # results on two shipped encoders: re-measured, recorded, and a well-formed table written between the markers
    random = sslkit("pretrain", "random", "--limit", "600", "--out", str(out), "--no-progress")
    assert random.returncode == 0, random.stderr
    readme = tmp_path / "README.md"
    readme.write_text(
        "# title\n<!-- results:start (generated by `python -m sslkit results`; do not edit) -->\n"
        "stale\n<!-- results:end -->\nafter\n"
    )
    stale = sslkit("results", "--check", "--readme", str(readme), "--weights", str(out))
    assert stale.returncode == 1 and "out of date" in stale.stderr
    written = sslkit("results", "--readme", str(readme), "--weights", str(out), "--limit", "600", "--device", "cpu")
    assert written.returncode == 0, written.stderr
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("<!-- results:end -->\nafter\n") and "stale" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| SimCLR", "| Random encoder (untrained)"]
    assert all(row.count("|") == rows[0].count("|") for row in rows)  # every row has every column
    entries = json.loads((out / "manifest.json").read_text())["methods"]
    assert all(
        f"{100 * entries[name]['results']['transfer']['mean']:.2f} ± " in row
        for name, row in zip(("simclr", "random"), rows[1:], strict=True)
    )
    assert sslkit("results", "--check", "--readme", str(readme), "--weights", str(out)).returncode == 0

    # a record that the weights no longer reproduce is an error, not a new row
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["methods"]["random"]["results"]["knn"]["test_accuracy"] += 0.01
    (out / "manifest.json").write_text(json.dumps(manifest))
    mismatch = sslkit("results", "--readme", str(readme), "--weights", str(out), "--limit", "600", "--device", "cpu")
    assert mismatch.returncode == 2 and "random: knn test accuracy" in mismatch.stderr
    assert "the weights and their record disagree" in mismatch.stderr and "linear_probe" not in mismatch.stderr
    evaluated = sslkit("evaluate", "random", "--weights", str(out), "--limit", "600", "--device", "cpu")
    assert evaluated.returncode == 1 and "differs from the manifest by more than 0.002: random" in evaluated.stderr

    (out / "simclr.pth").write_bytes((out / "simclr.pth").read_bytes()[:-10])  # truncated download
    broken = sslkit("evaluate", "simclr", "--weights", str(out), "--limit", "600")
    assert broken.returncode == 2 and "corrupt, truncated or tampered" in broken.stderr


def test_readme_results_table_matches_the_manifest():
    result = sslkit("results", "--check")
    assert result.returncode == 0, result.stderr


def test_bench_prints_the_ratios_and_records_costs_that_the_results_table_shows(tmp_path):
    from sslkit.results import results_table
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    result = sslkit(
        "bench",
        "--device",
        "cpu",
        "--batch-size",
        "32",
        "--batches",
        "2",
        "--steps",
        "1",
        "--rounds",
        "2",
        "--methods",
        "simclr",
        "rotation",
        "--record",
        "--weights",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "x the DataLoader path" in result.stdout and "sslkit / kornia" in result.stdout
    assert "simclr" in result.stdout and "images/s" in result.stdout
    assert "peak rise of resident memory" in result.stdout  # CPU memory, as CUDA's allocator peak on a GPU
    assert re.search(r"simclr +[\d,.]+ GFLOP/s +[\d.]+% of the peak", result.stdout)  # the step against a matmul
    assert re.search(
        r"peer +[\d,]+ images/s +rounds [\d,]+–[\d,]+ \(spread \d+%\)\n  sslkit / peer: [\d.]+x \(from", result.stdout
    )
    assert "median of 2 rounds" in result.stdout and re.search(
        r"moves by up to \d+% \((simclr|rotation)\)", result.stdout
    )
    assert "recorded results.cost for simclr, rotation" in result.stdout
    assert "removed the costs of" in result.stdout and "dcl" in result.stdout  # shipped costs come from another run

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    costs = {name: manifest["methods"][name]["results"].get("cost") for name in ("simclr", "rotation", "dcl")}
    assert costs["dcl"] is None and costs["simclr"]["command"] == costs["rotation"]["command"]
    for name in ("simclr", "rotation"):
        cost = costs[name]
        assert cost["batch_size"] == 32 and cost["images_per_second"] > 0 and cost["rounds"] == 2
        assert cost["images_per_second"] == min(cost["round_images_per_second"])  # the median of two: the lower
        assert cost["seconds_per_epoch"] == pytest.approx(60_000 // 32 * 32 / cost["images_per_second"], rel=0.01)
    table = results_table(manifest)
    simclr_row = next(line for line in table.splitlines() if line.startswith("| SimCLR |"))
    assert f"| {costs['simclr']['images_per_second']:,.0f} | {costs['simclr']['seconds_per_epoch']:.0f} |" in simclr_row
    dcl_row = next(line for line in table.splitlines() if line.startswith("| DCL |"))
    assert dcl_row.endswith(f"| – | – | {manifest['methods']['dcl']['device']} |")  # not timed in this run
    assert f"one run of `{costs['simclr']['command']}`" in table
    assert "Each figure is the median of 2 rounds" in table and "moved by up to" in table
    manifest["methods"]["rotation"]["results"]["cost"]["device"] = "another machine"
    with pytest.raises(ValueError, match="more than one bench run"):
        results_table(manifest)


def test_finetune_and_sweep_record_their_results_in_the_manifest(tmp_path):
    out = tmp_path / "weights"
    common = ["--limit", "600", "--weights", str(out)]
    published = sslkit(
        "pretrain",
        "vae",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "64",
        "--limit",
        "600",
        "--out",
        str(out),
        "--checkpoint",
        str(tmp_path / "vae.ckpt"),
        "--no-progress",
    )
    assert published.returncode == 0, published.stderr

    tuned = sslkit("finetune", "vae", "--steps", "3", "--seeds", "0", "1", "--device", "cpu", *common)
    assert tuned.returncode == 0, tuned.stderr
    assert "vae: 0.1 of the labels:" in tuned.stdout
    fine_tune = json.loads((out / "manifest.json").read_text())["methods"]["vae"]["results"]["fine_tune"]
    assert set(fine_tune["fractions"]) == {"0.01", "0.1"}
    ten_percent = fine_tune["fractions"]["0.1"]
    assert ten_percent["labels"] == 60 and len(ten_percent["test_accuracy"]) == 2 and len(ten_percent["curves"]) == 2
    assert min(ten_percent["test_accuracy"]) <= ten_percent["mean"] <= max(ten_percent["test_accuracy"])

    # another fraction with the same recipe is added beside the recorded ones
    everything = sslkit(
        "finetune", "vae", "--steps", "3", "--seeds", "0", "1", "--fractions", "1", "--device", "cpu", *common
    )
    assert everything.returncode == 0, everything.stderr
    merged = json.loads((out / "manifest.json").read_text())["methods"]["vae"]["results"]["fine_tune"]
    assert list(merged["fractions"]) == ["0.01", "0.1", "1"]
    assert merged["fractions"]["0.1"]["mean"] == ten_percent["mean"]
    assert merged["fractions"]["1"]["labels"] == 540  # all 600 but the validation tenth
    assert merged["seconds"] > fine_tune["seconds"] and merged["device"] == merged["fractions"]["1"]["device"]
    # a new recipe replaces the record instead of mixing with it
    other = sslkit(
        "finetune", "vae", "--steps", "2", "--seeds", "0", "1", "--fractions", "1", "--device", "cpu", *common
    )
    assert other.returncode == 0, other.stderr
    replaced = json.loads((out / "manifest.json").read_text())["methods"]["vae"]["results"]["fine_tune"]
    assert list(replaced["fractions"]) == ["1"] and replaced["config"]["steps"] == 2

    swept = sslkit(
        "sweep", "vae", "beta", "0.5", "2", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu", *common
    )
    assert swept.returncode == 0, swept.stderr
    results = json.loads((out / "manifest.json").read_text())["methods"]["vae"]["results"]
    runs = results["sweeps"]["beta"]["runs"]
    assert [run["value"] for run in runs] == [0.5, 2.0]
    assert all(run["kl"] >= 0 and 0 < run["validation_accuracy"] <= 1 for run in runs)
    assert "fine_tune" in results  # recording one result keeps the others


def test_mae_and_its_random_vit_baseline_publish_vit_encoders(tmp_path):
    from sslkit.models import ViTEncoder, encoder_config
    from sslkit.weights import load_method, load_pretrained

    out = tmp_path / "weights"
    for name in ("mae", "random_vit"):
        result = sslkit(
            "pretrain",
            name,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "64",
            "--limit",
            "300",
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / f"{name}.ckpt"),
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
    entries = json.loads((out / "manifest.json").read_text())["methods"]
    vit = encoder_config("fashion-mnist", "vit")
    assert entries["mae"]["config"]["encoder_config"] == entries["random_vit"]["config"]["encoder_config"] == vit
    assert entries["mae"]["config"]["mask_ratio"] == 0.75 and entries["random_vit"]["epochs"] == 0
    for name in ("mae", "random_vit"):
        encoder = load_pretrained(name, root=out)
        assert isinstance(encoder, ViTEncoder) and encoder(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    mae = load_method("mae", root=out)  # encoder and decoder, for the reconstructions of notebook 07
    masked, reconstruction = mae.reconstruct(torch.rand(2, 1, 28, 28), 0.75)
    assert masked.shape == reconstruction.shape == (2, 1, 28, 28)


def test_a_sweep_of_a_view_setting_trains_with_the_views_it_names(tmp_path, monkeypatch):
    import sslkit.pipeline
    from sslkit.pipeline import Sweep
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    trained_with = []

    def spy(method, *args, **kwargs):
        trained_with.append(method.augment_config)
        return train(method, *args, **kwargs)

    train = sslkit.pipeline.train
    monkeypatch.setattr(sslkit.pipeline, "train", spy)
    sweep = Sweep("rotation", "crop_min_area", [0.3, 1.0], epochs=1, root=tmp_path, limit=600, steps_per_epoch=1)
    runs = sweep.run(torch.device("cpu"), report=lambda *_: None)
    assert [views.crop_scale for views in trained_with] == [(0.3, 1.0), (1.0, 1.0)]
    assert trained_with[1].crop_ratio == (1.0, 1.0) and trained_with[0].flip_prob == trained_with[1].flip_prob
    recorded = json.loads((tmp_path / "manifest.json").read_text())["methods"]["rotation"]["results"]["sweeps"]
    assert [run["value"] for run in recorded["crop_min_area"]["runs"]] == [0.3, 1.0] == [run["value"] for run in runs]


def test_a_sweep_holds_its_fixed_settings_in_every_run_and_is_stored_under_its_own_key(tmp_path, monkeypatch):
    import sslkit.pipeline
    from sslkit.pipeline import Sweep
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    built = []

    def spy(name, settings, *args, **kwargs):
        built.append(build(name, settings, *args, **kwargs))
        return built[-1]

    build = sslkit.pipeline.build_varied_method
    monkeypatch.setattr(sslkit.pipeline, "build_varied_method", spy)
    shipped = json.loads((tmp_path / "manifest.json").read_text())["methods"]["vae"]["results"]["sweeps"]
    sweep = Sweep(
        "vae", "beta", [0.5, 2.0], fixed={"latent_dim": 8}, epochs=1, root=tmp_path, limit=600, steps_per_epoch=1
    )
    sweep.run(torch.device("cpu"), report=lambda *_: None)
    assert [(method.beta, method.latent_dim) for method in built] == [(0.5, 8), (2.0, 8)]
    sweeps = json.loads((tmp_path / "manifest.json").read_text())["methods"]["vae"]["results"]["sweeps"]
    record = sweeps["beta, latent_dim=8"]
    assert record["fixed"] == {"latent_dim": 8} and [run["value"] for run in record["runs"]] == [0.5, 2.0]
    assert sweeps.get("beta") == shipped.get("beta")  # the sweep of beta alone is another record, left as it was


def test_a_budget_sweep_trains_each_run_for_its_value_of_epochs_with_its_own_schedule(tmp_path, monkeypatch):
    import sslkit.pipeline
    from sslkit.pipeline import Sweep
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    configs = []

    def spy(method, images, labels, config, *args, **kwargs):
        configs.append(config)
        return train(method, images, labels, config, *args, **kwargs)

    train = sslkit.pipeline.train
    monkeypatch.setattr(sslkit.pipeline, "train", spy)
    sweep = Sweep("rotation", "epochs", [1, 2], warmup_epochs=1, root=tmp_path, limit=600, steps_per_epoch=1)
    runs = sweep.run(torch.device("cpu"), report=lambda *_: None)
    assert [(config.epochs, config.warmup_epochs) for config in configs] == [(1, 1), (2, 1)]
    assert [run["value"] for run in runs] == [1, 2]
    record = json.loads((tmp_path / "manifest.json").read_text())["methods"]["rotation"]["results"]["sweeps"]["epochs"]
    assert "epochs" not in record and [run["value"] for run in record["runs"]] == [1, 2]


def test_a_sweep_run_interrupted_after_training_resumes_from_its_checkpoint_and_the_record_deletes_it(
    tmp_path, monkeypatch
):
    import sslkit.pipeline
    import sslkit.train
    from sslkit.pipeline import Sweep
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    epochs_trained = []
    train_one_epoch = sslkit.train.train_one_epoch

    def counted(*args, **kwargs):
        epochs_trained.append(1)
        return train_one_epoch(*args, **kwargs)

    def killed(*_, **__):
        raise KeyboardInterrupt  # the sweep is stopped while the probe is fitted

    probe = sslkit.pipeline.select_and_fit_linear_probe
    monkeypatch.setattr(sslkit.train, "train_one_epoch", counted)
    monkeypatch.setattr(sslkit.pipeline, "select_and_fit_linear_probe", killed)
    checkpoints = tmp_path / "ckpt"
    sweep = Sweep("rotation", "epochs", [2], root=tmp_path, limit=600, steps_per_epoch=1, checkpoints=checkpoints)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(torch.device("cpu"), report=lambda *_: None)
    checkpoint = sweep.checkpoint_path(2, 0)
    assert checkpoint.name == "rotation.fashion-mnist.smoke.sweep.shipped.epochs2.seed0.ckpt" and checkpoint.exists()
    assert len(epochs_trained) == 2

    monkeypatch.setattr(sslkit.pipeline, "select_and_fit_linear_probe", probe)
    (run,) = sweep.run(torch.device("cpu"), report=lambda *_: None)
    assert len(epochs_trained) == 2  # both epochs came from the checkpoint
    assert not list(checkpoints.iterdir())  # its checkpoint and history are deleted
    record = json.loads((tmp_path / "manifest.json").read_text())["methods"]["rotation"]["results"]["sweeps"]["epochs"]
    assert record["runs"] == [run] and run["device"].startswith("cpu") and run["seconds"] > 0
    assert record["device"] == run["device"]  # the sweep's devices are those of its runs


def test_a_sweep_run_names_its_checkpoint_by_what_it_changes_and_its_length(tmp_path):
    from sslkit.pipeline import Sweep

    sweep = Sweep("byol", "base_momentum", [0.99], fixed={"constant_momentum": 1}, epochs=5, checkpoints=tmp_path)
    path = sweep.checkpoint_path(0.99, 1)
    assert path == tmp_path / "byol.fashion-mnist.sweep.base_momentum=0.99-constant_momentum=1.epochs5.seed1.ckpt"
    assert Sweep("simclr", "epochs", [25], checkpoints=tmp_path).checkpoint_path(25, 0).name == (
        "simclr.fashion-mnist.sweep.shipped.epochs25.seed0.ckpt"
    )
    widths = Sweep("autoencoder", "decoder_widths", [[32, 16, 8]], checkpoints=tmp_path)
    assert widths.checkpoint_path([32, 16, 8], 0).name == (  # a list is spelled as the search spells it
        "autoencoder.fashion-mnist.sweep.decoder_widths=32x16x8.epochs5.seed0.ckpt"
    )


def test_a_sweep_lists_the_devices_of_its_runs_and_gives_older_runs_the_sweep_s(tmp_path, monkeypatch):
    import sslkit.pipeline
    from sslkit.pipeline import Sweep
    from sslkit.weights import weights_dir

    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    sweeps = manifest["methods"]["vae"]["results"].setdefault("sweeps", {})
    sweeps["beta"] = {**Sweep("vae", "beta", [1.0]).settings(), "command": "", "device": "cpu (older)",
                      "runs": [{"value": 1.0, "seed": 0, "validation_accuracy": 0.8}]}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sslkit.pipeline, "load_splits", lambda *_: ((None, None), None))
    monkeypatch.setattr(
        sslkit.pipeline,
        "short_run",
        lambda *_, **__: {"validation_accuracy": 0.9, "seconds": 1.0, "device": "cuda (X)"},
    )
    Sweep("vae", "beta", [1.0, 2.0], root=tmp_path, checkpoints=tmp_path).run(
        torch.device("cpu"), report=lambda *_: None
    )
    record = json.loads((tmp_path / "manifest.json").read_text())["methods"]["vae"]["results"]["sweeps"]["beta"]
    assert [run["device"] for run in record["runs"]] == ["cpu (older)", "cuda (X)"]  # as the older record said
    assert record["device"] == "cpu (older); cuda (X)"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["epochs", "10", "--epochs", "5"], "leave out --epochs"),
        (["epochs", "0.5"], "epochs takes whole numbers"),
        (["beta", "0.5", "--set", "epochs=3"], "not --set epochs=N"),
    ],
)
def test_a_budget_sweep_refuses_a_second_length(arguments, message, tmp_path, capsys):
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    code = main(["sweep", "vae", *arguments, "--weights", str(tmp_path), "--limit", "600"])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--set", "latent_dim"], "--set takes NAME=VALUE"),
        (["--set", "latent_dim=wide"], "--set latent_dim takes a number"),
        (["--set", "latent_dim=8", "--set", "latent_dim=16"], "--set names latent_dim more than once"),
        (["--set", "width=8"], "vae has no setting 'width'"),
        (["--set", "beta=2"], "beta is the setting the sweep varies"),
    ],
)
def test_sweep_rejects_a_fixed_setting_it_cannot_hold(arguments, message, tmp_path, capsys):
    from sslkit.weights import weights_dir

    (tmp_path / "manifest.json").write_text((weights_dir() / "manifest.json").read_text())
    try:  # argparse exits on a malformed option; main returns 2 on a well-formed one the sweep refuses
        code = main(["sweep", "vae", "beta", "0.5", "--weights", str(tmp_path), "--limit", "600", *arguments])
    except SystemExit as exit:
        code = exit.code
    assert code == 2 and message in capsys.readouterr().err
