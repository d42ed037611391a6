"""``python -m sslkit bench``: augmentation and training throughput, measured side by side.

Three ways to make SimCLR views of the same images with the same augmentation settings:

1. sslkit's batched pipeline (``augment.py``): the dataset is one tensor on the device, every op
   handles the whole batch with per-sample random parameters;
2. the same batched idea with ``kornia.augmentation``;
3. the classic path: torchvision.transforms.v2 applied image by image in a ``DataLoader``.

All three run in one process, one after the other, on the same images, and the ratios are
printed, so the comparison never mixes machines or runs. Then the training throughput (images/s,
peak memory) of each trainable method with its shipped recipe; SimCLR's against a peer pipeline
(torchvision transforms in a DataLoader, lightly's NTXentLoss); and the FLOP/s each step achieves as a
fraction of the machine's peak (a large matrix product in the same precision, measured in the same run).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from .augment import AugmentConfig, augment, simclr_augment_config
from .data import DEFAULT_DATASET, dataset_info, load_dataset, to_float
from .devices import mixed_precision_dtype
from .methods import build_method, method_class
from .train import TrainConfig, train


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_batch(run_batch, device: torch.device, batches: int, warmup: int = 2) -> float:
    """Seconds per call of ``run_batch(i)``, after ``warmup`` untimed calls."""
    for i in range(warmup):
        run_batch(i)
    _synchronize(device)
    started = time.perf_counter()
    for i in range(batches):
        run_batch(warmup + i)
    _synchronize(device)
    return (time.perf_counter() - started) / batches


def torchvision_pipeline(config: AugmentConfig, size: int = 28):
    """The same augmentation as ``augment.augment``, as torchvision.transforms.v2 per-image transforms."""
    from torchvision.transforms import v2

    jitter = v2.ColorJitter(
        brightness=config.brightness, contrast=config.contrast, saturation=config.saturation, hue=config.hue
    )  # saturation and hue 0 (the grey presets) are left out by ColorJitter
    grayscale = [v2.RandomGrayscale(config.grayscale_prob)] if config.grayscale_prob > 0 else []
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomResizedCrop(size, scale=config.crop_scale, ratio=config.crop_ratio, antialias=False),
            v2.RandomHorizontalFlip(config.flip_prob),
            v2.RandomApply([jitter], p=config.jitter_prob),
            *grayscale,
            v2.RandomApply([v2.GaussianBlur(config.blur_kernel, sigma=config.blur_sigma)], p=config.blur_prob),
        ]
    )


class _TransformedImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return self.transform(image.unsqueeze(0) if image.ndim == 2 else image)  # [C, H, W]


class _TwoViews(_TransformedImages):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitem__(index), super().__getitem__(index)


def loader_workers() -> int:
    """DataLoader workers: one per CPU core, at most 8 (lightly's examples use 8)."""
    return min(8, os.cpu_count() or 1)


def kornia_pipeline(config: AugmentConfig, size: int = 28):
    """The same augmentation with ``kornia.augmentation`` (batched, per-sample parameters)."""
    import kornia.augmentation as K

    grayscale = [K.RandomGrayscale(p=config.grayscale_prob)] if config.grayscale_prob > 0 else []
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=config.crop_scale, ratio=config.crop_ratio),
        K.RandomHorizontalFlip(p=config.flip_prob),
        K.ColorJitter(
            brightness=config.brightness,
            contrast=config.contrast,
            saturation=config.saturation,
            hue=config.hue,
            p=config.jitter_prob,
        ),
        *grayscale,
        K.RandomGaussianBlur((config.blur_kernel, config.blur_kernel), config.blur_sigma, p=config.blur_prob),
    )


def bench_augmentation(images: torch.Tensor, device: torch.device, batch_size: int, batches: int) -> dict:
    """Images per second of each pipeline; the data start as uint8 on the CPU for the DataLoader path.

    The augmentation is SimCLR's, with its colour jitter and grayscale for colour images."""
    config, size = simclr_augment_config(1 if images.ndim == 3 else images.shape[1]), images.shape[-1]
    on_device = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def batch_of(i: int) -> torch.Tensor:
        start = (i * batch_size) % (len(on_device) - batch_size)
        return to_float(on_device[start : start + batch_size])

    results = {}
    seconds = time_per_batch(lambda i: augment(batch_of(i), config, generator), device, batches)
    results["sslkit (batched, hand-written)"] = batch_size / seconds
    try:
        pipeline = kornia_pipeline(config, size).to(device)
        seconds = time_per_batch(lambda i: pipeline(batch_of(i)), device, batches)
        results["kornia.augmentation (batched)"] = batch_size / seconds
    except ImportError:
        print("kornia is not installed (pip install kornia): skipping its column")
    workers = loader_workers()
    loader = torch.utils.data.DataLoader(
        _TransformedImages(images, torchvision_pipeline(config, size)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    iterator = iter(loader)

    def loader_batch(_: int) -> torch.Tensor:
        return next(iterator).to(device, non_blocking=True)

    seconds = time_per_batch(loader_batch, device, min(batches, len(loader) - 2))
    results[f"torchvision.transforms.v2 + DataLoader ({workers} workers)"] = batch_size / seconds
    return results


def resident_memory_mib() -> float:
    """This process's resident set size (Linux), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakResidentMemory:
    """Samples the resident set size every 5 ms in a thread; ``peak_mib`` is the rise above the start.

    CPU memory has no allocator statistics like ``torch.cuda.max_memory_allocated``; the highest
    sampled RSS during the run, minus the RSS before it, is the memory the run itself needed.
    """

    def __enter__(self):
        self.start = self.peak = resident_memory_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, resident_memory_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_memory_mib())
        self.peak_mib = self.peak - self.start


def train_throughput(
    name: str,
    device: str,
    batch_size: int,
    steps: int,
    compile_model: bool = False,
    dataset: str = DEFAULT_DATASET,
    synthetic: bool = False,
    amp_dtype: str | None = None,
) -> dict:
    """Images/s, seconds per epoch and peak memory of ``steps`` training steps of ``name`` on ``dataset``,
    measured in this process, in the device's mixed precision (or ``amp_dtype``: "float16", "bfloat16").

    ``synthetic``: time random images of the dataset's shape and number instead of the real ones
    (a training step costs the same whatever its pixels show), so the cost of a dataset that is
    not on this machine can be known before it is downloaded.
    """
    device = torch.device(device)
    if synthetic:
        info = dataset_info(dataset)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (info.sizes["train"], *info.stored_shape), dtype=torch.uint8, generator=generator
        )
        labels = torch.randint(0, len(info.class_names), (info.sizes["train"],), generator=generator)
    else:
        images, labels = load_dataset(dataset, "train")
    images, labels = images.to(device), labels.to(device)
    method = build_method(name, dataset, seed=0)
    recipe = method_class(name).recipe
    config = TrainConfig(epochs=2, batch_size=batch_size, steps_per_epoch=steps, amp_dtype=amp_dtype, **recipe)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakResidentMemory() as resident:
        history = train(method, images, labels, config, device, progress=False, compile_model=compile_model)
    seconds = history[1]["seconds"] / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else resident.peak_mib
    return {
        "first_epoch_seconds": history[0]["seconds"],  # with torch.compile, the compilation too
        "seconds_per_step": seconds,
        "images_per_second": batch_size / seconds,
        "flops_per_second": training_step_flops(name, batch_size, dataset) / seconds,
        "seconds_per_epoch": (len(images) // batch_size) * seconds,
        "peak_memory_mib": peak,
        "final_loss": history[-1]["loss"],
    }


def peer_simclr_throughput(device: str, batch_size: int, steps: int, dataset: str = DEFAULT_DATASET) -> dict:
    """Images/s of a SimCLR training step as most users would write it with maintained libraries:
    torchvision.transforms.v2 making two views per image in a ``DataLoader`` (``loader_workers()``
    workers, pinned memory on CUDA), lightly's ``NTXentLoss``, and the loop of lightly's SimCLR example
    (each view through the model on its own). Encoder, projector, views, temperature, optimiser, batch
    and precision are sslkit's SimCLR recipe, so the difference is the pipeline alone."""
    from lightly.loss import NTXentLoss

    device = torch.device(device)
    images, _ = load_dataset(dataset, "train")
    method = build_method("simclr", dataset, seed=0).to(device).train()
    model = torch.nn.Sequential(method.encoder, method.projector)
    criterion = NTXentLoss(temperature=method.temperature)
    recipe = method_class("simclr").recipe
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True, weight_decay=recipe["weight_decay"]
    )
    loader = torch.utils.data.DataLoader(
        _TwoViews(images, torchvision_pipeline(method.augment_config, images.shape[-1])),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=loader_workers(),
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    dtype = mixed_precision_dtype(device)

    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(_: int) -> None:
        x0, x1 = (view.to(device, non_blocking=True) for view in next(batches))
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    seconds = time_per_batch(step, device, steps)
    return {"images_per_second": batch_size / seconds, "workers": loader_workers()}


def in_fresh_process(function, *args):
    """``function(*args)`` in a new process, so that its memory and threads are its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def training_step_flops(name: str, batch_size: int, dataset: str = DEFAULT_DATASET) -> float:
    """Floating-point operations of one training step of ``name`` (forward and backward, every view) on a
    batch of ``batch_size`` images, counted by PyTorch's ``FlopCounterMode``: the matrix products and
    convolutions, which are nearly all of the work; element-wise operations are not counted. The count
    does not depend on the device or the precision."""
    from torch.utils.flop_counter import FlopCounterMode

    info = dataset_info(dataset)
    generator = torch.Generator().manual_seed(0)
    method = build_method(name, dataset, seed=0).train()
    images = torch.rand(batch_size, *info.shape, generator=generator)
    labels = torch.randint(0, len(info.class_names), (batch_size,), generator=generator)
    with FlopCounterMode(display=False) as counter:
        method.training_step(images, labels, generator)["loss"].backward()
    return float(counter.get_total_flops())


def peak_matmul_flops(device: torch.device, dtype: torch.dtype | None, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matrix product (``size``) in ``dtype`` (None: float32) on ``device``: what
    the machine can reach at best, the yardstick for a training step's achieved FLOP/s."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype or torch.float32) for _ in range(2))
    seconds = time_per_batch(lambda _: a @ b, device, repeats)
    return 2 * size**3 / seconds


def bench_training(
    device: torch.device,
    batch_size: int,
    steps: int,
    methods,
    compile_model: bool = False,
    dataset: str = DEFAULT_DATASET,
    rounds: int = 1,
) -> dict:
    """Training images/s (one image = all its views) and peak memory of each method.

    Times the real loop of ``train.train`` (two epochs of ``steps`` steps; the first is warm-up),
    so the figure includes everything a training run pays for, the checks of the loss included.
    Each method runs in a fresh process, one after the other, so that its peak memory (CUDA's
    allocator peak on a GPU, the rise of resident memory on a CPU) is its own and not memory that
    an earlier method left to the allocator.

    ``rounds``: every method is timed once per round, the rounds one after another, so that a slow
    drift of the machine (other load, clock changes) falls on every method alike. Each method's
    result is its median round, with every round's images/s under ``round_images_per_second``.
    """
    runs = {name: [] for name in methods}
    for _ in range(rounds):
        for name in methods:
            runs[name].append(
                in_fresh_process(train_throughput, name, str(device), batch_size, steps, compile_model, dataset)
            )
    return {name: median_round(results) for name, results in runs.items()}


def median(values: list[float]) -> float:
    """The median; for an even count, the lower of the two middle values (a value that was measured)."""
    return sorted(values)[(len(values) - 1) // 2]


def median_round(results: list[dict]) -> dict:
    """The round with the median images/s, with every round's images/s under
    ``round_images_per_second``, in the order they ran."""
    rates = [result["images_per_second"] for result in results]
    middle = next(result for result in results if result["images_per_second"] == median(rates))
    return {**middle, "round_images_per_second": rates}


def relative_spread(rates: list[float]) -> float:
    """(highest − lowest) / median of one method's images/s over the rounds: how far one bench
    figure may move when the same step is timed again in the same run (0 for a single round)."""
    return (max(rates) - min(rates)) / median(rates)


def widest_spread(rates: dict[str, list[float]]) -> tuple[str, float]:
    """The method whose images/s spread most over the rounds, and that spread: the bench's noise."""
    spreads = {name: relative_spread(values) for name, values in rates.items()}
    widest = max(spreads, key=spreads.get)
    return widest, spreads[widest]


def compile_payoff(
    name: str, device: torch.device, batch_size: int, steps: int, repeats: int, dataset: str = DEFAULT_DATASET
) -> dict:
    """Eager against ``torch.compile`` for a whole pretraining run of ``name``, compilation included.

    ``repeats`` times, alternately eager and compiled, each in a fresh process (a compiled graph is
    never reused): two epochs of ``steps`` steps, the first paying the compilation, the second timing
    the step. Returns the mean and spread (max − min) of each mode's seconds per step, the one-off
    cost of compiling (the first epoch less ``steps`` steady steps, less eager's own warm-up), and
    both modes' time for a run of 100 epochs of the dataset at this batch size."""
    runs = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for mode in runs:
            runs[mode].append(
                in_fresh_process(train_throughput, name, str(device), batch_size, steps, mode == "compiled", dataset)
            )
    step = {mode: [run["seconds_per_step"] for run in results] for mode, results in runs.items()}
    warmup = {
        mode: sum(run["first_epoch_seconds"] - steps * run["seconds_per_step"] for run in results) / repeats
        for mode, results in runs.items()
    }
    run_steps = 100 * (dataset_info(dataset).sizes["train"] // batch_size)
    mean = {mode: sum(values) / repeats for mode, values in step.items()}
    return {
        "seconds_per_step": mean,
        "spread": {mode: max(values) - min(values) for mode, values in step.items()},
        "compile_seconds": warmup["compiled"] - warmup["eager"],
        "run_steps": run_steps,
        "run_seconds": {mode: warmup[mode] + run_steps * mean[mode] for mode in runs},
    }
