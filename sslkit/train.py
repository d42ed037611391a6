"""The one training loop every method uses.

Data stay on the device as a uint8 tensor; each step indexes a batch, converts it to floats and
hands it to ``method.training_step``. Around that: SGD with momentum or AdamW, a per-step cosine
schedule with linear warm-up, mixed precision where the device computes it natively, a tqdm
progress bar, a per-epoch history, and a hard stop on a non-finite loss.

``TrainState`` is everything that changes during a run (weights, optimiser, schedule, gradient
scaler, every random generator, the history). It is saved atomically after every epoch with the
*identity* of the run (method and its config, training config, dataset, the number and sha256 of
the training images, processes), and a run resumes from it only when its identity is the same:
a resumed CPU run ends bitwise where an uninterrupted one would, and a checkpoint of another run
is refused with an error naming what differs.

Under torchrun the same loop runs in every process (``distributed.py``): the method is wrapped in
DistributedDataParallel, each process takes its share of every global batch, and only rank 0 shows
progress and writes the checkpoint and the history.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .data import to_float
from .devices import describe_device, mixed_precision_dtype, resolve_device
from .files import save_torch_atomically, sha256_tensor, write_text_atomically
from .methods import Method


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a run that differs from the one asked for."""


@dataclass
class TrainConfig:
    """Plain values; every one can be overridden from the CLI."""

    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adamw"
    lr: float = 0.1  # peak learning rate, reached after the warm-up
    weight_decay: float = 5e-4
    # False: no weight decay on biases, normalisation layers' scales and shifts and MAE's mask token, only
    # on the weights of convolutions and linear layers ("no bias decay", He et al. 2019, Sec. 3.1)
    decay_every_parameter: bool = True
    warmup_epochs: int = 5
    seed: int = 0
    steps_per_epoch: int | None = None  # None: one pass over the data (drop_last); fewer for smoke runs
    amp: bool = True  # bf16/fp16 mixed precision on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16, AMX)
    amp_dtype: str | None = None  # None: the device's choice (above); "float16" or "bfloat16" to force one

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be positive, weight_decay and warmup_epochs non-negative")
        if self.decay_every_parameter not in (True, False):  # 0 and 1 (a sweep's values) are accepted
            raise ValueError(f"decay_every_parameter must be True or False, got {self.decay_every_parameter!r}")
        self.decay_every_parameter = bool(self.decay_every_parameter)
        if self.amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {self.amp_dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run takes and how each global batch is shared between processes."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    local_batch: int  # this process's share of every global batch


def plan_steps(images: int, config: TrainConfig, processes: int = 1) -> StepPlan:
    if images < config.batch_size:
        raise ValueError(f"{images} images are fewer than one batch of {config.batch_size}")
    if config.batch_size % processes:
        raise ValueError(
            f"the batch of {config.batch_size} does not split evenly over {processes} processes; "
            f"choose a batch size divisible by {processes}"
        )
    steps_per_epoch = images // config.batch_size
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps)
    return StepPlan(steps_per_epoch, total_steps, warmup_steps, config.batch_size // processes)


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from 0 to 1, then a cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def without_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Biases and normalisation layers' scales and shifts (every parameter of one dimension) and MAE's
    mask token: the parameters ``decay_every_parameter=False`` keeps out of the weight decay."""
    return parameter.ndim <= 1 or name.endswith("mask_token")


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: one, or (``decay_every_parameter=False``) the decayed weights
    and the rest with weight decay 0."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]  # not a teacher's (ema.py)
    if config.decay_every_parameter:
        return [{"params": [p for _, p in named], "weight_decay": config.weight_decay}]
    return [
        {"params": [p for name, p in named if not without_decay(name, p)], "weight_decay": config.weight_decay},
        {"params": [p for name, p in named if without_decay(name, p)], "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def history_path(checkpoint_path: str | Path) -> Path:
    """The per-epoch history is saved beside the checkpoint: ``run.ckpt`` → ``run.history.json``."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".history.json")


def delete_checkpoint(checkpoint_path: str | Path) -> None:
    """Delete a finished run's checkpoint and its history, once a record holds what the run measured."""
    Path(checkpoint_path).unlink(missing_ok=True)
    history_path(checkpoint_path).unlink(missing_ok=True)


def run_identity(
    method: Method,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: TrainConfig,
    processes: int,
    dataset: str | None,
) -> dict:
    """Everything that defines a run: a checkpoint resumes only a run with the same identity."""
    identity = {
        "method": method.name,
        "method_config": method.config(),
        "train_config": config.to_dict(),
        "dataset": dataset,
        "images": len(images),
        "images_sha256": sha256_tensor(images),
        "processes": processes,
    }
    if method.uses_labels:
        identity["labels_sha256"] = sha256_tensor(labels)
    return identity


def check_identity(recorded: dict | None, expected: dict, path: Path) -> None:
    """A ``CheckpointMismatchError`` naming every field where the checkpoint's run differs from this one."""
    if recorded is None:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not say which run wrote it; delete it or pass another --checkpoint path"
        )
    differences = [
        f"{key}: {recorded.get(key)!r} in the checkpoint, {value!r} now"
        for key, value in expected.items()
        if recorded.get(key) != value
    ]
    if differences:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a different run ("
            + "; ".join(differences)
            + "); delete it or pass another --checkpoint path"
        )


@dataclass
class TrainState:
    """Everything that changes during a run, saved after every epoch so that a run can resume."""

    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    data_generator: torch.Generator  # the order of the images
    augment_generator: torch.Generator  # the views, masks and noise of this process
    history: list[dict] = field(default_factory=list)
    devices: list[str | None] = field(default_factory=list)  # where each epoch ran (None: not recorded)
    epoch: int = 0  # epochs completed

    @classmethod
    def start(cls, method: Method, config: TrainConfig, plan: StepPlan, device: torch.device) -> TrainState:
        optimizer = build_optimizer(method, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, plan.warmup_steps, plan.total_steps)
        )
        amp_dtype = mixed_precision_dtype(device, config.amp, config.amp_dtype)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        data_generator = torch.Generator().manual_seed(config.seed)
        # Each process draws other views of its share of the batch.
        augment_generator = torch.Generator(device=device).manual_seed(config.seed + 1 + distributed.rank())
        return cls(method, optimizer, scheduler, scaler, data_generator, augment_generator)

    def save(self, path: Path, identity: dict) -> None:
        """Write the checkpoint and the history beside it (main process; every process must call it)."""
        augment_states = [self.augment_generator.get_state()]
        if distributed.world_size() > 1:  # every process's view generator, so that each resumes its own views
            augment_states = [None] * distributed.world_size()
            torch.distributed.all_gather_object(augment_states, self.augment_generator.get_state())
        if not distributed.is_main_process():
            return
        rng = {"data": self.data_generator.get_state(), "augment": augment_states, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint = {
            "identity": identity,
            "epoch": self.epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": self.history,
            "devices": self.devices,
        }
        save_torch_atomically(checkpoint, path)
        write_text_atomically(history_path(path), json.dumps(self.history, indent=1))

    def load(self, path: Path, identity: dict, device: torch.device) -> None:
        """Resume from ``path``, after checking that it was written by the same run."""
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        check_identity(checkpoint.get("identity"), identity, path)
        self.method.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        # Generator states are CPU byte tensors whatever the device; map_location moved them.
        rng = {
            key: [s.cpu() for s in value] if isinstance(value, list) else value.cpu()
            for key, value in checkpoint["rng"].items()
        }
        self.data_generator.set_state(rng["data"])
        self.history, self.epoch = list(checkpoint["history"]), checkpoint["epoch"]
        self.devices = list(checkpoint.get("devices", [None] * self.epoch))
        self.resume_views(rng["augment"][distributed.rank()])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def resume_views(self, saved_state: torch.Tensor) -> None:
        """Continue the view generator; a run moved to another kind of device (CPU and CUDA generators
        keep different states) draws its views from a generator seeded with the epoch instead, so the
        order of the images stays the same but the views after the move differ from an unmoved run's."""
        if len(saved_state) == len(self.augment_generator.get_state()):
            self.augment_generator.set_state(saved_state)
            return
        seed = self.augment_generator.initial_seed() + 1_000_003 * self.epoch
        print(f"the run moved to {self.augment_generator.device.type}: its views continue from seed {seed}")
        self.augment_generator.manual_seed(seed)


def devices_of_run(checkpoint_path: str | Path) -> str:
    """Where the run in ``checkpoint_path`` trained, e.g. ``cuda (NVIDIA H200), bfloat16 autocast`` or,
    for a run resumed elsewhere, ``epochs 1–73: cuda (...); epochs 74–100: cpu (...)``."""
    devices = torch.load(checkpoint_path, map_location="cpu", weights_only=True).get("devices", [])
    spans: list[list] = []  # [first epoch, last epoch, device]
    for epoch, device in enumerate(devices, start=1):
        if spans and spans[-1][2] == device:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch, device])
    if len(spans) == 1:
        return spans[0][2] or "not recorded"
    return "; ".join(f"epochs {first}–{last}: {device or 'not recorded'}" for first, last, device in spans)


def wrap_for_training(method: Method, device: torch.device, compile_model: bool) -> torch.nn.Module:
    """What each step runs through: the method, in DistributedDataParallel under torchrun, compiled if asked."""
    model: torch.nn.Module = method
    if torch.distributed.is_initialized():  # under torchrun, with one process or more
        # SyncBatchNorm (statistics over the global batch) works with NCCL only, so on CUDA only.
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


FINITE_CHECK_EVERY = 25  # steps between checks that the loss is finite: each one waits for the device


def train_one_epoch(
    model: torch.nn.Module,
    state: TrainState,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: TrainConfig,
    plan: StepPlan,
    progress: bool,
) -> dict:
    """One pass of ``plan.steps_per_epoch`` steps; returns the epoch's record (mean loss and extras).

    The losses are summed on the device; only every ``FINITE_CHECK_EVERY`` steps (and at the end) is
    the sum read, to check that it is finite, so a GPU never waits for the host in between.
    """
    method, device, epoch = state.method, images.device, state.epoch
    amp_dtype = mixed_precision_dtype(device, config.amp, config.amp_dtype)
    # A loss computed on the gathered global batch already has the single-process gradient; DDP's
    # averaging over processes would divide it by K, so it is multiplied back.
    loss_scale = distributed.world_size() if method.loss_spans_global_batch else 1
    started = time.perf_counter()
    order = torch.randperm(len(images), generator=state.data_generator).to(device)
    sums: dict[str, torch.Tensor] = {}
    checked = 0  # steps whose losses are known to be finite
    description = f"{method.name} epoch {epoch + 1}/{config.epochs}"
    bar = tqdm(range(plan.steps_per_epoch), desc=description, disable=not progress, leave=False)
    for step in bar:
        start = step * config.batch_size + distributed.rank() * plan.local_batch  # this process's share
        index = order[start : start + plan.local_batch]
        batch = to_float(images[index]).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch, labels[index] if labels is not None else None, state.augment_generator)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(outputs["loss"] * loss_scale).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        method.after_optimizer_step((epoch * plan.steps_per_epoch + step + 1) / plan.total_steps)
        for key, value in outputs.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == plan.steps_per_epoch:
            total = sums["loss"].item()  # NaN or ±inf stays in the sum once it is there
            if not math.isfinite(total):
                first = epoch * plan.steps_per_epoch + checked + 1
                raise NonFiniteLossError(
                    f"{method.name}: the loss became {total} in epoch {epoch + 1}, between steps {checked + 1} "
                    f"and {step + 1} (global steps {first} to {first + step - checked}); training stopped. "
                    f"Lower the learning rate (its peak is {config.lr:g}) or check the inputs."
                )
            checked = step + 1
            bar.set_postfix(loss=f"{total / checked:.4f}")
    means = distributed.average_across_processes(
        {key: float(total) / plan.steps_per_epoch for key, total in sums.items()}
    )
    return {
        "epoch": epoch + 1,
        **{key: round(value, 6) for key, value in means.items()},
        "lr": state.scheduler.get_last_lr()[0],
        "seconds": round(time.perf_counter() - started, 3),
    }


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
    dataset: str | None = None,
) -> list[dict]:
    """Train ``method`` on ``images``, resuming from ``checkpoint_path`` when it holds this run.

    Args:
        method: the model to train, freshly built (its parameters are overwritten on resume).
        images: uint8 ``[N, H, W]`` (grey) or ``[N, C, H, W]``; moved to ``device`` once.
        labels: int64 ``[N]``, used only when ``method.uses_labels``.
        config: optimisation settings.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        checkpoint_path: where to save after every epoch (atomically) and resume from if it
            exists. None trains without checkpoints.
        progress: show a tqdm progress bar.
        on_epoch_end: optional ``f(method, epoch) -> dict`` called after each epoch (``epoch`` counts
            from 1); what it returns is added to the epoch's history record (e.g. a validation
            accuracy). The method is in eval mode during the call.
        compile_model: run the training step through ``torch.compile`` (the first steps are slower
            while it compiles).
        dataset: the dataset's name, recorded in the checkpoint's run identity (beside the images'
            number and fingerprint), so that resuming on another dataset says so.

    Across processes (torchrun), ``config.batch_size`` is the global batch: each of the K
    processes takes ``batch_size / K`` images of it, and losses that span the batch see all of it.

    Returns:
        The history: one dict per epoch with its mean loss (and the method's extra metrics),
        the learning rate at its end and its wall time. Also saved as JSON beside the checkpoint.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names the epoch and the
            steps between the last two checks (``FINITE_CHECK_EVERY``).
        CheckpointMismatchError: ``checkpoint_path`` holds another run; the message names the fields.
    """
    device = resolve_device(device)
    if method.uses_labels and labels is None:
        raise ValueError(f"{method.name} trains on labels, but none were given")
    plan = plan_steps(len(images), config, distributed.world_size())
    labels = labels if method.uses_labels else None
    identity = run_identity(method, images, labels, config, distributed.world_size(), dataset)
    images = images.to(device)
    labels = labels.to(device) if labels is not None else None
    # Channels-last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolution kernels.
    method.to(device, memory_format=torch.channels_last)
    model = wrap_for_training(method, device, compile_model)
    state = TrainState.start(method, config, plan, device)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state.load(Path(checkpoint_path), identity, device)
    progress = progress and distributed.is_main_process()
    method.train()
    while state.epoch < config.epochs:
        record = train_one_epoch(model, state, images, labels, config, plan, progress)
        if on_epoch_end is not None:
            method.eval()
            record.update(on_epoch_end(method, state.epoch + 1))
            method.train()
        state.history.append(record)
        state.devices.append(describe_device(device, config.amp, config.amp_dtype))
        state.epoch += 1
        if progress:
            tqdm.write(
                f"{method.name} epoch {state.epoch}/{config.epochs}: "
                + ", ".join(f"{key}={value:.4g}" for key, value in record.items() if key != "epoch")
            )
        if checkpoint_path is not None:
            state.save(Path(checkpoint_path), identity)
    method.eval()
    return state.history
