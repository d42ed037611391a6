"""make's set-up as a laptop user runs it: `TORCH=keep` keeps the PyTorch already in the environment
(e.g. the CPU-only builds from PyTorch's index) and installs the rest of requirements.txt."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dry_run(*variables: str) -> str:
    """The commands ``make setup`` would run for a new environment, without running them."""
    ran = subprocess.run(
        ["make", "-n", "setup", "VENV=/nonexistent/venv", *variables], cwd=ROOT, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_by_default_setup_installs_the_pinned_requirements():
    commands = dry_run()
    assert "pip install --quiet -r requirements.txt" in commands
    assert "requirements-keeping-torch" not in commands and "import torch, torchvision" not in commands


def test_torch_keep_installs_every_requirement_but_torch_and_torchvision():
    commands = dry_run("TORCH=keep")
    assert "-r requirements.txt" not in commands
    filtering = re.search(r"^grep -vE '(?P<pattern>[^']+)' requirements.txt > (?P<out>\S+)$", commands, re.MULTILINE)
    assert filtering and f"pip install --quiet -r {filtering['out']}" in commands
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()]
    kept = [line for line in lines if not re.search(filtering["pattern"], line)]
    assert sorted(set(lines) - set(kept)) == sorted(
        line for line in lines if line.startswith(("torch==", "torchvision=="))
    )
    assert len(lines) - len(kept) == 2  # exactly the two pinned lines


def test_torch_keep_without_a_torch_to_keep_says_what_to_do(tmp_path):
    ran = subprocess.run(
        ["make", "setup", "TORCH=keep", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True
    )
    assert ran.returncode != 0
    assert "TORCH=keep, but" in ran.stdout and "has no torch and torchvision to keep" in ran.stdout
    assert "README: A laptop without a GPU" in ran.stdout
    assert not (tmp_path / "venv" / ".setup-done").exists()
