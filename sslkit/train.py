"""The one training loop every method uses.

Data stay on the device as a uint8 tensor; each step indexes a batch, converts it to floats and
hands it to ``method.training_step``. Around that: SGD with momentum or AdamW, a per-step cosine
schedule with linear warm-up, mixed precision on CUDA, a tqdm progress bar, a per-epoch history,
atomic checkpoints with every RNG state (so a resumed CPU run ends bitwise where an uninterrupted
one would), and a hard stop on a non-finite loss.

Under torchrun the same loop runs in every process (``distributed.py``): the method is wrapped in
DistributedDataParallel, each process takes its share of every global batch, and only rank 0 shows
progress and writes the checkpoint and the history.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .data import to_float
from .methods import Method


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


@dataclass
class TrainConfig:
    """Plain values; every one can be overridden from the CLI."""

    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adamw"
    lr: float = 0.1  # peak learning rate, reached after the warm-up
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    seed: int = 0
    steps_per_epoch: int | None = None  # None: one pass over the data (drop_last); fewer for smoke runs
    amp: bool = True  # bf16/fp16 mixed precision on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16, AMX)

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        for field in ("epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be positive, weight_decay and warmup_epochs non-negative")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return device


def mixed_precision_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None where mixed precision would not pay off.

    On CUDA: bf16 where supported, else fp16 (with a gradient scaler). On CPU: bf16 only where
    the processor computes it natively (oneDNN reports AVX512-BF16 or AMX); elsewhere it would be
    emulated and slower than float32. Losses stay in float32 either way (see ``losses.py``).
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def describe_device(device: torch.device) -> str:
    """E.g. ``cuda (NVIDIA H100 80GB HBM3), bf16 autocast`` or ``cpu (AMD EPYC ...), float32``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    dtype = mixed_precision_dtype(device)
    return f"{device.type} ({name}), " + (f"{str(dtype).removeprefix('torch.')} autocast" if dtype else "float32")


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from 0 to 1, then a cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def history_path(checkpoint_path: str | Path) -> Path:
    """The per-epoch history is saved beside the checkpoint: ``run.ckpt`` → ``run.history.json``."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".history.json")


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_states(data_generator: torch.Generator, augment_generator: torch.Generator) -> dict:
    states = {
        "data": data_generator.get_state(),
        "augment": augment_generator.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict, data_generator: torch.Generator, augment_generator: torch.Generator):
    data_generator.set_state(states["data"])
    augment_generator.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train(
    method: Method,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: TrainConfig,
    device: str | torch.device = "auto",
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    on_epoch_end=None,
    compile_model: bool = False,
) -> list[dict]:
    """Train ``method`` on ``images`` (uint8 ``[N, 28, 28]``), resuming from ``checkpoint_path``.

    Args:
        method: the model to train, freshly built (its parameters are overwritten on resume).
        images: uint8 ``[N, 28, 28]``; moved to ``device`` once.
        labels: int64 ``[N]``, used only when ``method.uses_labels``.
        config: optimisation settings.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint_path: where to save after every epoch (atomically) and resume from if it
            exists. None trains without checkpoints.
        progress: show a tqdm progress bar.
        on_epoch_end: optional ``f(method, epoch) -> dict`` called after each epoch (``epoch`` counts
            from 1); what it returns is added to the epoch's history record (e.g. a validation
            accuracy). The method is in eval mode during the call.
        compile_model: run the training step through ``torch.compile`` (CUDA; the first steps
            are slower while it compiles).

    Across processes (torchrun), ``config.batch_size`` is the global batch: each of the K
    processes takes ``batch_size / K`` images of it, and losses that span the batch see all of it.

    Returns:
        The history: one dict per epoch with its mean loss (and the method's extra metrics),
        the learning rate at its end and its wall time. Also saved as JSON beside the checkpoint.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names epoch and step.
    """
    device = resolve_device(device)
    if method.uses_labels and labels is None:
        raise ValueError(f"{method.name} trains on labels, but none were given")
    if len(images) < config.batch_size:
        raise ValueError(f"{len(images)} images are fewer than one batch of {config.batch_size}")
    processes, rank = distributed.world_size(), distributed.rank()
    if config.batch_size % processes:
        raise ValueError(
            f"the batch of {config.batch_size} does not split evenly over {processes} processes; "
            f"choose a batch size divisible by {processes}"
        )
    local_batch = config.batch_size // processes
    progress = progress and distributed.is_main_process()
    steps_per_epoch = len(images) // config.batch_size
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps)

    images = images.to(device)
    labels = labels.to(device) if (labels is not None and method.uses_labels) else None
    # Channels-last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolution kernels.
    method.to(device, memory_format=torch.channels_last)
    model = method  # what the step runs through: the method, or its DDP / compiled wrapper
    if processes > 1:
        if device.type == "cuda":  # BatchNorm statistics over the global batch (NCCL only)
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        device_ids = [device] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=device_ids)
    if compile_model:
        model = torch.compile(model)
    # A loss computed on the gathered global batch already has the single-process gradient; DDP's
    # averaging over processes would divide it by K, so it is multiplied back.
    loss_scale = processes if method.loss_spans_global_batch else 1
    optimizer = build_optimizer(method, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup_steps, total_steps)
    )
    amp_dtype = mixed_precision_dtype(device, config.amp)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    data_generator = torch.Generator().manual_seed(config.seed)
    augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1 + rank)  # other views per process

    history: list[dict] = []
    start_epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        expected = {
            "method": method.name,
            "method_config": method.config(),
            "train_config": config.to_dict(),
            "processes": processes,
        }
        for key, value in expected.items():
            recorded = state.get(key, 1 if key == "processes" else None)
            if recorded != value:
                raise ValueError(
                    f"checkpoint {checkpoint_path} was written for a different run ({key} differs: "
                    f"{recorded} vs {value}); delete it or pass another --checkpoint path"
                )
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _restore_rng_states(state["rng"], data_generator, augment_generator)
        if processes > 1:
            augment_generator.set_state(state["augment_rng_per_process"][rank])
        history = list(state["history"])
        start_epoch = state["epoch"]

    method.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=data_generator).to(device)
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{method.name} epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            start = step * config.batch_size + rank * local_batch  # this process's share of the global batch
            index = order[start : start + local_batch]
            batch = to_float(images[index]).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                outputs = model(batch, labels[index] if labels is not None else None, augment_generator)
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{method.name}: the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(global step {epoch * steps_per_epoch + step + 1}); training stopped. Lower the "
                    f"learning rate (now {scheduler.get_last_lr()[0]:.3g}) or check the inputs."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * loss_scale).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for key, value in outputs.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        record = {"epoch": epoch + 1}
        means = {key: float(total) / steps_per_epoch for key, total in sums.items()}
        means = distributed.average_across_processes(means)
        record.update({key: round(value, 6) for key, value in means.items()})
        record["lr"] = scheduler.get_last_lr()[0]
        record["seconds"] = round(time.perf_counter() - started, 3)
        if on_epoch_end is not None:
            method.eval()
            record.update(on_epoch_end(method, epoch + 1))
            method.train()
        history.append(record)
        if progress:
            tqdm.write(
                f"{method.name} epoch {epoch + 1}/{config.epochs}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            )
        augment_states = None
        if processes > 1:  # every process's view generator, so that each resumes its own views
            augment_states = [None] * processes
            torch.distributed.all_gather_object(augment_states, augment_generator.get_state())
        if checkpoint_path is not None and distributed.is_main_process():
            atomic_save(
                {
                    "method": method.name,
                    "method_config": method.config(),
                    "train_config": config.to_dict(),
                    "epoch": epoch + 1,
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": _rng_states(data_generator, augment_generator),
                    "history": history,
                    **({"processes": processes, "augment_rng_per_process": augment_states} if processes > 1 else {}),
                },
                checkpoint_path,
            )
            atomic_write_text(json.dumps(history, indent=1), history_path(checkpoint_path))
    method.eval()
    return history
