"""Everything that runs only on a GPU, checked in one go, with one summary at the end.

    python scripts/gpu_check.py                       # on a GPU machine; meant to finish in under 8 minutes
    python scripts/gpu_check.py --device cpu --smoke  # every part for a few steps on the CPU (CI runs this)

The parts, each reported as ok or FAILED (with the error) in the summary; the exit code is 1 if any
part failed:

1. mixed precision: every trainable method, one epoch (``--smoke``: 2 steps) in bfloat16 and in
   float16 with the gradient scaler (a Colab T4's path): images/s, peak memory, the loss finite;
2. torch.compile: every method (``--smoke``: rotation only) through the compiler;
3. resume: a SimCLR run stopped after its first epoch and resumed (checkpoint, scaler, every
   random generator incl. CUDA's) against the same run uninterrupted;
4. torchrun: ``--nproc_per_node=1``, so one GPU runs the distributed code: NCCL (gloo on the CPU),
   DistributedDataParallel and SyncBatchNorm (CUDA only), a few steps of SimCLR;
5. augmentation: the batched on-device augmentation against torchvision's DataLoader path (the
   bench's aim on a GPU is at least 20x).

Nothing here writes to the repository: checkpoints go to a temporary folder. To record the costs
of a GPU in the manifest, run ``python -m sslkit bench --record --device cuda`` after it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from sslkit.bench import bench_augmentation, train_throughput
from sslkit.data import load_dataset
from sslkit.devices import describe_device, resolve_device
from sslkit.methods import TRAINABLE, build_method, method_class
from sslkit.train import TrainConfig, train

RESULTS: list[dict] = []  # one row per check, printed at the end


def check(part: str, what: str, function, *args, **kwargs) -> None:
    """Run ``function(*args, **kwargs)``; record its figures (a dict) or its error as one row."""
    started = time.perf_counter()
    try:
        row = {"part": part, "what": what, "status": "ok", **(function(*args, **kwargs) or {})}
    except Exception as error:  # a failed part is reported, and the others still run
        traceback.print_exc()
        row = {"part": part, "what": what, "status": f"FAILED: {type(error).__name__}: {error}"}
    row["seconds"] = time.perf_counter() - started
    RESULTS.append(row)
    print(f"[{row['seconds']:6.1f} s] {part}: {what}: {row['status']}", flush=True)


def finite_training(name: str, device: torch.device, batch_size: int, steps: int, **options) -> dict:
    """``bench.train_throughput`` (two epochs of ``steps``; the second timed), and its loss must be finite."""
    result = train_throughput(name, str(device), batch_size, steps, **options)
    if not math.isfinite(result["final_loss"]):
        raise FloatingPointError(f"the final loss is {result['final_loss']}")
    return result


def stopped_and_resumed(device: torch.device, steps: int, batch_size: int) -> dict:
    """A SimCLR run of two epochs stopped after the first and resumed, against the same run uninterrupted."""
    images, _ = load_dataset("fashion-mnist", "train")
    images = images[: steps * batch_size]
    amp_dtype = "float16" if device.type == "cuda" else None  # the scaler's state must resume too
    recipe = method_class("simclr").recipe
    config = TrainConfig(epochs=2, batch_size=batch_size, steps_per_epoch=steps, amp_dtype=amp_dtype, **recipe)
    whole = train(build_method("simclr", seed=0), images, None, config, device, progress=False)

    def stop_after_first_epoch(method, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # before epoch 2 is saved: the checkpoint holds epoch 1
        return {}

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "simclr.ckpt"
        try:
            train(
                build_method("simclr", seed=0), images, None, config, device, checkpoint, False, stop_after_first_epoch
            )
        except KeyboardInterrupt:
            pass
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved["epoch"] != 1 or (device.type == "cuda" and "cuda" not in saved["rng"]):
            raise AssertionError(f"the checkpoint holds epoch {saved['epoch']} and the generators {list(saved['rng'])}")
        resumed = train(build_method("simclr", seed=1), images, None, config, device, checkpoint, False)
    difference = abs(resumed[1]["loss"] - whole[1]["loss"])
    # Bitwise on the CPU; on a GPU the kernels' own nondeterminism leaves a small difference.
    if [r["epoch"] for r in resumed] != [1, 2] or difference > (0 if device.type == "cpu" else 0.02):
        raise AssertionError(f"resumed {resumed} against {whole}")
    return {"loss_difference": difference}


def one_process_torchrun(device: torch.device, steps: int, batch_size: int) -> dict:
    """This script's worker under ``torchrun --nproc_per_node=1``; its report, checked."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", __file__]
    command += ["--torchrun-worker", "--device", device.type, "--steps", str(steps), "--batch-size", str(batch_size)]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if ran.returncode != 0:
        raise RuntimeError(f"torchrun exited with {ran.returncode}:\n{ran.stderr[-3000:]}")
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    backend, sync = ("nccl", True) if device.type == "cuda" else ("gloo", False)
    if report["backend"] != backend or not report["ddp"] or (report["sync_batch_norms"] > 0) != sync:
        raise AssertionError(f"expected {backend}, DistributedDataParallel, SyncBatchNorm {sync}; got {report}")
    return report


def torchrun_worker(device_type: str, steps: int, batch_size: int) -> None:
    """One process of ``torchrun``: a few steps of SimCLR through ``train``, as ``pretrain`` runs them;
    prints one JSON line saying what the loop wrapped the method in."""
    from sslkit import distributed
    from sslkit import train as training

    wrapped = []
    wrap = training.wrap_for_training
    training.wrap_for_training = lambda *args, **kwargs: wrapped.append(wrap(*args, **kwargs)) or wrapped[-1]
    device = distributed.initialize(device_type)
    images, _ = load_dataset("fashion-mnist", "train")
    method = build_method("simclr", seed=0)
    config = TrainConfig(epochs=1, batch_size=batch_size, steps_per_epoch=steps, **method_class("simclr").recipe)
    history = train(method, images[: steps * batch_size], None, config, device, progress=False)
    report = {
        "backend": torch.distributed.get_backend(),
        "ddp": isinstance(wrapped[0], torch.nn.parallel.DistributedDataParallel),
        "sync_batch_norms": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in method.modules()),
        "loss": history[-1]["loss"],
    }
    torch.distributed.destroy_process_group()
    print(json.dumps(report))


def augmentation(device: torch.device, batches: int, batch_size: int) -> dict:
    images, _ = load_dataset("fashion-mnist", "train")
    rates = bench_augmentation(images, device, batch_size, batches)
    loader = next(rate for name, rate in rates.items() if name.startswith("torchvision"))
    ours = rates["sslkit (batched, hand-written)"]
    return {"images_per_second": ours, "x_dataloader": ours / loader}


def summary(device: torch.device) -> int:
    print(f"\nGPU check on {describe_device(device)}, torch {torch.__version__}")
    print(f"{'part':<18} {'what':<44} {'status':<8} {'images/s':>10} {'peak MiB':>9} {'seconds':>8}")
    for row in RESULTS:
        rate = f"{row['images_per_second']:,.0f}" if "images_per_second" in row else ""
        peak = f"{row['peak_memory_mib']:,.0f}" if "peak_memory_mib" in row else ""
        status = "ok" if row["status"] == "ok" else "FAILED"
        print(f"{row['part']:<18} {row['what'][:44]:<44} {status:<8} {rate:>10} {peak:>9} {row['seconds']:8.1f}")
        shown = ("part", "what", "status", "seconds", "images_per_second", "peak_memory_mib", "seconds_per_epoch")
        extra = {key: value for key, value in row.items() if key not in shown}
        if extra:
            print(
                " " * 21
                + ", ".join(
                    f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in extra.items()
                )
            )
    failed = [row for row in RESULTS if row["status"] != "ok"]
    for row in failed:
        print(f"FAILED {row['part']}, {row['what']}: {row['status'][8:]}")
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed, {sum(r['seconds'] for r in RESULTS):.0f} s")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each part (CI, on the CPU)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torchrun_worker:
        torchrun_worker(args.device, args.steps, args.batch_size)
        return 0
    device = resolve_device(args.device)
    batch_size = 32 if args.smoke else args.batch_size
    steps = 2 if args.smoke else 60_000 // batch_size  # per epoch
    for name in TRAINABLE:
        for dtype in ("bfloat16", "float16"):
            check(
                "1 mixed precision",
                f"{name}, {dtype}",
                finite_training,
                name,
                device,
                batch_size,
                steps,
                amp_dtype=dtype,
            )
    for name in ("rotation",) if args.smoke else TRAINABLE:
        check("2 torch.compile", name, finite_training, name, device, batch_size, min(steps, 50), compile_model=True)
    short = 2 if args.smoke else 20
    check("3 resume", f"simclr, 2 epochs of {short} steps", stopped_and_resumed, device, short, batch_size)
    distributed = "NCCL, DDP, SyncBatchNorm" if device.type == "cuda" else "gloo, DDP"
    check("4 torchrun", f"1 process: {distributed}", one_process_torchrun, device, short, batch_size)
    check("5 augmentation", f"batch {batch_size}", augmentation, device, 4 if args.smoke else 100, batch_size)
    return summary(device)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
