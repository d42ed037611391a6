"""Data-parallel training on CPU with the gloo backend, two processes started by torchrun."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import CASES, GLOBAL_BATCH, global_embeddings

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(*args, cwd=None):
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_gathered_losses_and_gradients_equal_one_process_holding_the_whole_batch(tmp_path):
    result = run(str(Path(__file__).with_name("distributed_worker.py")), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for seed, (name, (loss, args)) in enumerate(CASES.items()):
        z1, z2 = (z.clone().requires_grad_() for z in global_embeddings(seed))
        value = loss(z1, z2, *args)
        terms = value if isinstance(value, dict) else {"loss": value}
        terms["loss"].backward()
        for r in range(2):  # every process sees the loss of the whole global batch
            for key, expected in terms.items():
                assert ranks[r][name]["terms"][key] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7), (name, key)
        # ... and each gets exactly the single-process gradient of its own rows
        half = GLOBAL_BATCH // 2
        for r in range(2):
            rows = slice(r * half, (r + 1) * half)
            torch.testing.assert_close(ranks[r][name]["grad1"], z1.grad[rows], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(ranks[r][name]["grad2"], z2.grad[rows], rtol=1e-5, atol=1e-7)
    # DINO's center moves by the mean of the teacher's outputs over the global batch, on every process
    for r in range(2):
        torch.testing.assert_close(ranks[r]["global_mean"], global_embeddings(len(CASES))[0].mean(dim=0))


def test_two_process_pretraining_writes_one_checkpoint_one_history_and_publishes_once(tmp_path):
    out = tmp_path / "weights"
    result = run(
        "-m",
        "sslkit",
        "pretrain",
        "vicreg",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "64",
        "--limit",
        "600",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--checkpoint",
        str(tmp_path / "run.ckpt"),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("vicreg: linear probe") == 1  # rank 0 alone evaluates and publishes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt", "run.history.json", "weights"]
    history = json.loads((tmp_path / "run.history.json").read_text())
    assert len(history) == 1 and all(key in history[0] for key in ("loss", "invariance", "variance", "covariance"))
    entry = json.loads((out / "manifest.json").read_text())["methods"]["vicreg"]
    assert entry["device"].endswith("× 2 processes") and entry["batch_size"] == 64
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert checkpoint["identity"]["processes"] == 2 and len(checkpoint["rng"]["augment"]) == 2
    assert not torch.equal(*checkpoint["rng"]["augment"])  # each process draws its own views

    # Resuming with another number of processes would change the run: refused with a clear message.
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslkit",
            "pretrain",
            "vicreg",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--steps-per-epoch",
            "3",
            "--limit",
            "600",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--checkpoint",
            str(tmp_path / "run.ckpt"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 2
    assert "written by a different run (processes: 2 in the checkpoint, 1 now)" in single.stderr


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    result = run(
        "-m",
        "sslkit",
        "pretrain",
        "simclr",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "63",
        "--limit",
        "600",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--checkpoint",
        str(tmp_path / "c.ckpt"),
    )
    assert result.returncode != 0
    assert "does not split evenly over 2 processes" in result.stderr
