"""``python -m sslkit bench``: augmentation and training throughput, measured side by side.

Three ways to make SimCLR views of the same images with the same augmentation settings:

1. sslkit's batched pipeline (``augment.py``): the dataset is one tensor on the device, every op
   handles the whole batch with per-sample random parameters;
2. the same batched idea with ``kornia.augmentation``;
3. the classic path: torchvision.transforms.v2 applied image by image in a ``DataLoader``.

All three run in one process, one after the other, on the same images, and the ratios are
printed, so the comparison never mixes machines or runs. Then the training throughput (images/s,
peak memory) of each trainable method with its shipped recipe.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from .augment import AugmentConfig, augment, simclr_views
from .data import DEFAULT_DATASET, PRETRAIN_DATASETS, dataset_info, load_dataset, to_float
from .methods import METHOD_CLASSES, build_method
from .train import TrainConfig, describe_device, resolve_device, train


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
    config, size = simclr_views(images), images.shape[-1]
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
    workers = min(4, os.cpu_count() or 1)
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
) -> dict:
    """Images/s, seconds per epoch and peak memory of ``steps`` training steps of ``name`` on ``dataset``,
    measured in this process.

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
    torch.manual_seed(0)
    method = build_method(name, dataset)
    config = TrainConfig(epochs=2, batch_size=batch_size, steps_per_epoch=steps, **METHOD_CLASSES[name].recipe)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakResidentMemory() as resident:
        history = train(method, images, labels, config, device, progress=False, compile_model=compile_model)
    seconds = history[1]["seconds"] / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else resident.peak_mib
    return {
        "images_per_second": batch_size / seconds,
        "seconds_per_epoch": (len(images) // batch_size) * seconds,
        "peak_memory_mib": peak,
    }


def bench_training(
    device: torch.device,
    batch_size: int,
    steps: int,
    methods,
    compile_model: bool = False,
    dataset: str = DEFAULT_DATASET,
) -> dict:
    """Training images/s (one image = all its views) and peak memory of each method.

    Times the real loop of ``train.train`` (two epochs of ``steps`` steps; the first is warm-up),
    so the figure includes everything a training run pays for, the per-step loss check included.
    Each method runs in a fresh process, one after the other, so that its peak memory (CUDA's
    allocator peak on a GPU, the rise of resident memory on a CPU) is its own and not memory that
    an earlier method left to the allocator.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    results = {}
    for name in methods:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(
                train_throughput, name, str(device), batch_size, steps, compile_model, dataset
            ).result()
    return results


def add_bench_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure augmentation and training throughput on this device",
        description=(
            "Measure, in one run on one device: images/s of sslkit's batched augmentation, of the same "
            "pipeline in kornia.augmentation and of torchvision.transforms.v2 in a DataLoader, with the "
            "speed-ups; then training images/s (and peak CUDA memory) of each trainable method."
        ),
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument(
        "--batches",
        type=int,
        default=100,
        help="timed augmentation batches per pipeline (default 100; fewer gives noisy ratios)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method (default 10)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=sorted(METHOD_CLASSES),
        choices=sorted(METHOD_CLASSES),
        help="methods whose training step is timed (default: all trainable)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time the training step through torch.compile (the first, untimed epoch compiles)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="store each method's training cost under results.cost in the manifest (the README's "
        "cost columns); only shipped methods are recorded",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="folder with manifest.json for --record (default: $SSLKIT_WEIGHTS or weights/)",
    )
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        choices=PRETRAIN_DATASETS,
        help="the images to augment and train on (default fashion-mnist); with another, --record "
        "writes to that dataset's weights folder, weights/DATASET/",
    )
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if args.batch_size < 2 or args.batches < 1 or args.steps < 1:
        raise ValueError("--batch-size must be at least 2, --batches and --steps at least 1")
    device = resolve_device(args.device)
    images, labels = load_dataset(args.dataset, "train")
    print(
        f"{dataset_info(args.dataset).title}; device: {describe_device(device)}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(f"\nSimCLR augmentation, batch {args.batch_size}, {args.batches} batches per pipeline:")
    augmentation = bench_augmentation(images, device, args.batch_size, args.batches)
    baseline = augmentation[next(k for k in augmentation if k.startswith("torchvision"))]
    for name, rate in augmentation.items():
        print(f"  {name:<48} {rate:>12,.0f} images/s   {rate / baseline:6.1f}x the DataLoader path")
    if "kornia.augmentation (batched)" in augmentation:
        ratio = augmentation["sslkit (batched, hand-written)"] / augmentation["kornia.augmentation (batched)"]
        print(f"  sslkit / kornia: {ratio:.1f}x")
    print(
        f"\nTraining throughput, batch {args.batch_size}, {args.steps} steps per method"
        + (", torch.compile" if args.compile else "")
        + ":"
    )
    training = bench_training(device, args.batch_size, args.steps, args.methods, args.compile, args.dataset)
    memory_kind = "peak CUDA memory" if device.type == "cuda" else "peak rise of resident memory"
    for name, result in training.items():
        memory = f", {memory_kind} {result['peak_memory_mib']:.0f} MiB"
        print(
            f"  {name:<12} {result['images_per_second']:>10,.0f} images/s "
            f"(~{result['seconds_per_epoch']:.0f} s per epoch of {len(images):,} images){memory}"
        )
    if args.record:
        record_costs(training, describe_device(device), args)
    return 0


def record_costs(training: dict, device: str, args: argparse.Namespace) -> None:
    """Store one bench run's training cost in the manifest entry of every shipped method it timed.

    All methods of one run share the device, the batch size and the command, so the costs in the
    README are comparable with each other (never with a run on another machine). Costs an earlier
    run recorded for methods this run did not time are removed, so the table never mixes runs."""

    from .weights import manifest_update

    command = args.command_line
    with manifest_update(args.weights) as manifest:
        shipped = manifest.get("methods", {})
        recorded = [name for name in training if name in shipped]
        removed = [name for name in shipped if name not in training and "cost" in shipped[name].get("results", {})]
        for name in removed:
            del shipped[name]["results"]["cost"]
        for name in recorded:
            result = training[name]
            shipped[name].setdefault("results", {})["cost"] = {
                "images_per_second": round(result["images_per_second"], 1),
                "seconds_per_epoch": round(result["seconds_per_epoch"], 1),
                "peak_memory_mib": round(result["peak_memory_mib"], 1),
                "device": device,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "command": command,
            }
    print(f"\nrecorded results.cost for {', '.join(recorded) or 'no shipped method'}")
    if removed:
        print(
            f"removed the costs of {', '.join(removed)}: an earlier bench run measured them, and one table "
            "compares one run; time them again with --methods to restore them"
        )
