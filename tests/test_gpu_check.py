"""scripts/gpu_check.py, the check for the day a GPU is at hand, runs in its CPU smoke mode: every part
(mixed precision in both dtypes, compile, resume, one-process torchrun, augmentation) a few steps."""

import re
import subprocess
import sys
from pathlib import Path

from sslkit.methods import TRAINABLE

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_passes_every_part_in_cpu_smoke_mode(tmp_path):
    ran = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--smoke"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    checks = 2 * len(TRAINABLE) + 1 + 1 + 1 + 1  # both dtypes per method, compile, resume, torchrun, views
    assert re.search(rf"^{checks} of {checks} checks passed", ran.stdout, re.MULTILINE), ran.stdout[-3000:]
    rows = [line for line in ran.stdout.splitlines() if re.match(r"^\d \S", line)]
    assert len(rows) == checks and all(" ok " in row for row in rows), rows
    for name in TRAINABLE:  # each method's throughput, in both dtypes
        assert len([row for row in rows if row.startswith("1 mixed precision") and f" {name}," in row]) == 2
    assert "backend gloo, ddp True, sync_batch_norms 0" in ran.stdout  # the one-process torchrun's report
    assert not list(tmp_path.iterdir())  # nothing written where it ran
