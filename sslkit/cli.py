"""The command line: ``python -m sslkit pretrain | evaluate | geometry | transfer | finetune | sweep | bench |
results`` (``--help`` on each). Each command parses its options and calls ``pipeline`` (or ``bench``,
``results``); nothing here measures or records by itself."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from . import distributed, search
from .bench import (
    bench_augmentation,
    bench_training,
    compile_payoff,
    in_fresh_process,
    median,
    peak_matmul_flops,
    peer_simclr_throughput,
    relative_spread,
    widest_spread,
)
from .data import DEFAULT_DATASET, PRETRAIN_DATASETS, DataNotFoundError, dataset_info
from .devices import describe_device, mixed_precision_dtype, resolve_device
from .finetune import FINE_TUNE_FRACTIONS, FINE_TUNE_SEEDS, FineTuneConfig, label_efficiency
from .geometry import alignment_and_uniformity
from .methods import BASELINES, HAND_CRAFTED, METHODS, TRAINABLE, UNTRAINED
from .pipeline import (
    REPRODUCTION_TOLERANCE,
    SWEEPABLE_TRAIN_SETTINGS,
    PretrainRun,
    Sweep,
    differences_from_manifest,
    evaluate_shipped,
    load_splits,
    pretrain,
    record_costs,
    record_fine_tune,
    remeasure_shipped,
)
from .replicate import replicate
from .results import README, render_readme, results_table
from .train import CheckpointMismatchError, NonFiniteLossError
from .transfer import TRANSFER_REPEATS, load_imagenet_resnet18, transfer
from .version import __version__
from .weights import WeightsError, load_manifest, load_pretrained, manifest_entry, record_results, shipped_names


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")


def add_weights_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--weights", type=Path, default=None, metavar="ROOT", help=help)


WEIGHTS_HELP = (
    "root folder of the weights (default: $SSLKIT_WEIGHTS or the repository's weights/); those of a dataset "
    "other than fashion-mnist are in ROOT/DATASET/"
)


def add_limit_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--limit", type=positive_int, default=None, help=help)


def add_checkpoint_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"checkpoint to save every epoch and resume from (default: {default})",
    )


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        choices=PRETRAIN_DATASETS,
        help="the dataset (default fashion-mnist, the series' own); the weights of another live in its own folder, "
        "weights/DATASET/, and CIFAR-10's transfer task is 10 classes of CIFAR-100 (the grey datasets': "
        "the digits). Found on disk in torchvision's layout (data/MNIST/raw, data/cifar-10-batches-py, ...) "
        "or downloaded by torchvision when online",
    )


# ---------------------------------------------------------------------------------------- pretrain


def add_pretrain_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train a method (or build a baseline), evaluate it and publish weights + manifest entry",
        description=(
            "Train METHOD on the 60,000 Fashion-MNIST training images (or those of --dataset) with the common budget "
            "(batch 256, 100 epochs), resuming from --checkpoint if it exists; then fit the linear "
            "probe (chosen on the validation split), measure test accuracy and kNN, and write "
            "METHOD.pth, METHOD.history.json and the entry in manifest.json into OUT (OUT/DATASET/ for a dataset "
            "other than fashion-mnist). A checkpoint is resumed only by the run that wrote it (same method, "
            "settings, dataset, images and processes); any other is refused with the difference named. "
            "'random' (the ResNet), 'random_vit' (MAE's ViT), 'pixels' and 'hog' are baselines with nothing to "
            "train: they are only evaluated ('hog' after choosing its cell size and orientations on the validation "
            "split)."
        ),
    )
    parser.add_argument(
        "method",
        choices=TRAINABLE + UNTRAINED,
        metavar="METHOD",
        help=f"one of: {', '.join(TRAINABLE + UNTRAINED)}",
    )
    parser.add_argument("--epochs", type=positive_int, default=100, help="number of epochs (default 100)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="batch size (default 256)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default: the method's recipe)")
    parser.add_argument("--weight-decay", type=float, help="weight decay (default: the method's recipe)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), help="optimizer (default: the method's recipe)")
    parser.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs (default: the method's recipe)")
    parser.add_argument("--temperature", type=positive_float, help="softmax temperature (contrastive methods)")
    add_set_argument(
        parser,
        "change one more setting of the recipe (repeatable): one of the method's (e.g. latent_dim=64), of its views "
        "(crop_min_area, jitter_strength) or of training (e.g. decay_every_parameter=0), as the recipe search "
        "chooses them",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and views (default 0)")
    add_device_argument(parser)
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--no-amp", action="store_true", help="train in float32 even where mixed precision is available"
    )
    precision.add_argument(
        "--amp-dtype",
        choices=("float16", "bfloat16"),
        help="mixed precision in this dtype (default: bfloat16 where the device has it, else float16 on CUDA); "
        "float16 adds a gradient scaler, as on a Colab T4",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="root folder of the weights to publish into (default: $SSLKIT_WEIGHTS or the repository's weights/)",
    )
    add_checkpoint_argument(parser, "checkpoints/METHOD.ckpt")
    add_limit_argument(parser, "use only the first N training and test images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="stop each epoch after N steps (smoke runs and tests)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the training step through torch.compile (whether it pays off here: bench --compile-payoff)",
    )
    parser.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if distributed.launched_by_torchrun():
        device = distributed.initialize(device.type)
    recipe = {
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "optimizer": args.optimizer,
        "warmup_epochs": args.warmup_epochs,
    }
    recipe = {key: value for key, value in recipe.items() if value is not None}
    settings = {"temperature": args.temperature} if args.temperature else {}
    for name, value in args.set:
        if name in recipe or name in settings or name in ("epochs", "batch_size"):
            raise ValueError(f"{name} has an option of its own (--{name.replace('_', '-')}); not --set {name}=...")
        (recipe if name in SWEEPABLE_TRAIN_SETTINGS else settings)[name] = value
    run = PretrainRun(
        method=args.method,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        recipe=recipe,
        settings=settings,
        amp=not args.no_amp,
        amp_dtype=args.amp_dtype,
        steps_per_epoch=args.steps_per_epoch,
        limit=args.limit,
        checkpoint=args.checkpoint,
        root=args.out,
        command=args.command_line,
        progress=not args.no_progress,
        compile_model=args.compile,
    )
    try:
        pretrain(run, device)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- evaluate


def add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="re-measure shipped weights with the protocol and compare with the manifest",
        description=(
            "Load the verified weights of METHOD (or of every shipped method and baseline with 'all'), "
            "compute test features, apply the shipped linear probe and run kNN, print a table beside the "
            "manifest's figures, and exit with status 1 if any differs by more than --tolerance."
        ),
    )
    parser.add_argument("method", metavar="METHOD", help=f"one of {', '.join(METHODS + BASELINES)}, or all")
    add_device_argument(parser)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=REPRODUCTION_TOLERANCE,
        help="largest accepted difference from the manifest, as a fraction (default 0.002)",
    )
    add_weights_argument(parser, WEIGHTS_HELP)
    add_limit_argument(parser, "use only the first N training and test images (to check a `pretrain --limit N` run)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_evaluate)


def names_to_measure(method: str, dataset: str, root: Path | None, exclude: tuple[str, ...] = ()) -> list[str]:
    """``[method]`` if it has weights for ``dataset`` (a clear error if not), or every such name for ``"all"``."""
    if method != "all":
        manifest_entry(method, dataset, root)  # unknown, unshipped or other-dataset names fail here, clearly
        return [method]
    names = [name for name in shipped_names(dataset, root) if name not in exclude]
    if not names:
        option = "" if dataset == DEFAULT_DATASET else f" --dataset {dataset}"
        raise WeightsError(
            f"no weights for {dataset} are there yet; train some with `python -m sslkit pretrain METHOD{option}`"
        )
    return names


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    names = names_to_measure(args.method, args.dataset, args.weights)
    train_data, test_data = load_splits(args.dataset, args.limit)
    print(f"{'method':<12} {'probe %':>8} {'manifest':>9} {'macro-F1':>9} {'kNN %':>7} {'manifest':>9}")
    failed = []
    for name in names:
        measured = evaluate_shipped(name, train_data, test_data, device, args.dataset, args.weights)
        recorded = manifest_entry(name, args.dataset, args.weights)["results"]
        expected_probe, expected_knn = recorded["linear_probe"]["test_accuracy"], recorded["knn"]["test_accuracy"]
        print(
            f"{name:<12} {100 * measured['linear_probe']:8.2f} {100 * expected_probe:9.2f} "
            f"{measured['macro_f1']:9.4f} {100 * measured['knn']:7.2f} {100 * expected_knn:9.2f}"
        )
        if differences_from_manifest(name, measured, args.dataset, args.weights, args.tolerance):
            failed.append(name)
    if failed:
        print(f"differs from the manifest by more than {args.tolerance}: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- geometry


def add_geometry_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "geometry",
        help="alignment and uniformity of shipped encoders' features, recorded in the manifest",
        description=(
            "Draw two seeded SimCLR views of every test image, compute the L2-normalised features of METHOD's "
            "shipped encoder (or of every shipped method and baseline with 'all'), and store alignment (α=2) "
            "and uniformity (t=2) of Wang and Isola (2020) under results.geometry in the manifest."
        ),
    )
    parser.add_argument("method", metavar="METHOD", help=f"one of {', '.join(METHODS + BASELINES)}, or all")
    add_device_argument(parser)
    add_weights_argument(parser, WEIGHTS_HELP)
    add_limit_argument(parser, "use only the first N test images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_geometry)


def run_geometry(args: argparse.Namespace) -> None:
    names = names_to_measure(args.method, args.dataset, args.weights)
    device = resolve_device(args.device)
    _, (test_images, _) = load_splits(args.dataset, args.limit)
    print(f"{'method':<12} {'alignment':>10} {'uniformity':>11}")
    for name in names:
        encoder = load_pretrained(name, device, args.dataset, args.weights)
        measured = alignment_and_uniformity(encoder, test_images, device=device)
        record_results(name, "geometry", measured, args.dataset, args.weights)
        print(f"{name:<12} {measured['alignment']:10.4f} {measured['uniformity']:11.4f}", flush=True)


# ---------------------------------------------------------------------------------------- transfer


def add_transfer_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="linear probe of shipped encoders on a dataset none of them saw, recorded in the manifest",
        description=(
            "Compute the frozen features of METHOD's shipped encoder (or of every shipped method and baseline "
            "with 'all') on scikit-learn's 1,797 handwritten digits (8x8, upsampled to 28x28; they ship with "
            "scikit-learn), or for --dataset cifar10 on the 6,000 images of 10 CIFAR-100 classes, and score the "
            "linear probe by repeated stratified 5-fold cross-validation (3 repeats, "
            "the L2 strength chosen inside each training fold). Stores mean and standard deviation under "
            "results.transfer in the manifest."
        ),
    )
    parser.add_argument("method", metavar="METHOD", help=f"one of {', '.join(METHODS + BASELINES)}, or all")
    add_device_argument(parser)
    add_weights_argument(parser, WEIGHTS_HELP)
    add_dataset_argument(parser)
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=TRANSFER_REPEATS,
        help=f"shufflings of the 5-fold split (default {TRANSFER_REPEATS}; 1 for smoke runs)",
    )
    add_limit_argument(
        parser, "use only the first N images of the transfer task, in 2 folds (to check a `pretrain --limit N` run)"
    )
    parser.add_argument(
        "--imagenet-reference",
        action="store_true",
        help="also print a row for torchvision's ResNet-18 trained with labels on ImageNet (a "
        "different, supervised and 40x larger encoder; its weights are downloaded once, so this "
        "needs network access the first time); the row is printed, never recorded",
    )
    parser.set_defaults(handler=run_transfer)


def run_transfer(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    names = names_to_measure(args.method, args.dataset, args.weights)
    reference = load_imagenet_resnet18() if args.imagenet_reference else None  # fails before the long part
    task = "digits" if dataset_info(args.dataset).channels == 1 else "CIFAR-100, 10 classes"
    print(f"{'method':<18} {task + ', 5-fold CV %':>28}")
    for name in names:
        encoder = load_pretrained(name, device, args.dataset, args.weights)
        measured = transfer(encoder, args.dataset, device, args.repeats, args.limit)
        record_results(name, "transfer", measured, args.dataset, args.weights)
        print(f"{name:<18} {100 * measured['mean']:21.2f} ± {100 * measured['std']:.2f}", flush=True)
    if reference is not None:
        measured = transfer(reference, args.dataset, device, args.repeats, args.limit)
        print(
            f"{'imagenet-resnet18*':<18} {100 * measured['mean']:21.2f} ± {100 * measured['std']:.2f}\n"
            "* torchvision's ResNet-18 trained with the labels of ImageNet's 1.28M photos (11.7M parameters, "
            "inputs resized to 224x224):\n  a different, supervised encoder, shown for reference only; not "
            "recorded in the manifest"
        )


# ---------------------------------------------------------------------------------------- finetune


def add_finetune_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="label efficiency: fine-tune shipped encoders on 1%%, 10%% or 100%% of the labels, record in the manifest",
        description=(
            "For every fraction and seed, fine-tune a copy of METHOD's shipped encoder with a linear head on a "
            "stratified, seeded subset of the training labels (the same images for every method), print its test "
            "accuracy, and store mean ± std over seeds and the validation learning curves under "
            "results.fine_tune in the manifest (beside the fractions an earlier run of the same recipe recorded). "
            "'random' is the same network trained from scratch. Fraction 1 is every label outside the "
            "validation split."
        ),
    )
    networks = [name for name in METHODS + BASELINES if name not in HAND_CRAFTED]
    parser.add_argument("method", metavar="METHOD", help=f"one of {', '.join(networks)}, or all")
    parser.add_argument(
        "--fractions",
        type=positive_float,
        nargs="+",
        default=list(FINE_TUNE_FRACTIONS),
        help="fractions of the training labels (default: 0.01 0.1)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(FINE_TUNE_SEEDS),
        help="seeds: each draws its own subset, head and batches (default: 0 1 2)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=FineTuneConfig.steps,
        help=f"optimisation steps per run (default {FineTuneConfig.steps})",
    )
    add_device_argument(parser)
    add_weights_argument(parser, WEIGHTS_HELP)
    add_limit_argument(parser, "use only the first N training and test images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> None:
    if any(fraction > 1 for fraction in args.fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {args.fractions}")
    if args.method in HAND_CRAFTED:
        raise ValueError(f"{args.method!r} has no network to fine-tune; the from-scratch reference is 'random'")
    names = names_to_measure(args.method, args.dataset, args.weights, exclude=HAND_CRAFTED)
    device = resolve_device(args.device)
    train_data, test_data = load_splits(args.dataset, args.limit)
    config = FineTuneConfig(steps=args.steps)
    for name in names:
        started = time.perf_counter()
        encoder = load_pretrained(name, device, args.dataset, args.weights)

        def report(run, name=name):
            print(
                f"{name}: {run['labels']} labels ({run['fraction']:g}), seed {run['seed']}: "
                f"test accuracy {100 * run['test_accuracy']:.2f}%",
                flush=True,
            )

        summary = label_efficiency(
            encoder, train_data, test_data, tuple(args.fractions), tuple(args.seeds), config, device, progress=report
        )
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["device"] = describe_device(device)
        if args.limit:
            summary["limit"] = args.limit
        record_fine_tune(name, summary, args.dataset, args.weights)
        for fraction, result in summary["fractions"].items():
            print(
                f"{name}: {fraction} of the labels: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}% "
                f"over {len(result['test_accuracy'])} seeds"
            )


# ---------------------------------------------------------------------------------------- sweep


def int_or_float(text: str) -> int | float:
    """``"4"`` → 4, ``"0.25"`` → 0.25."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def number_or_name(text: str) -> int | float | str:
    """``"4"`` → 4, ``"0.25"`` → 0.25, ``"no_crop"`` → ``"no_crop"`` (the sweep checks names against PARAM)."""
    try:
        return int_or_float(text)
    except ValueError:
        return text


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", type=fixed_setting, action="append", default=[], metavar="NAME=VALUE", help=help)


def fixed_setting(text: str) -> tuple[str, int | float]:
    """``"constant_momentum=1"`` → ``("constant_momentum", 1)``."""
    name, equals, value = text.partition("=")
    if not (name and equals and value):
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE, e.g. constant_momentum=1; got {text!r}")
    try:
        return name, int_or_float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {name} takes a number (booleans as 0 or 1), got {value!r}") from None


def add_short_run_arguments(parser, checkpoints: Path | None = None) -> None:
    """The options of ``sweep``, ``search`` and ``replicate``: where to run and record, the smoke-run limits
    and, where ``checkpoints`` is given, ``--checkpoints``: the folder each run saves its epochs in."""
    if checkpoints is not None:
        parser.add_argument(
            "--checkpoints",
            type=Path,
            default=checkpoints,
            metavar="DIR",
            help=f"where a run saves every epoch, to resume if interrupted; deleted once recorded "
            f"(default: {checkpoints})",
        )
    add_device_argument(parser)
    add_weights_argument(parser, WEIGHTS_HELP)
    add_limit_argument(parser, "use only the first N training images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="stop each epoch after N steps (smoke runs and tests)",
    )


def add_sweep_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="short runs over one setting, scored on the validation split, recorded in the manifest",
        description=(
            "For each VALUE, train METHOD for --epochs with PARAM=VALUE (a constructor argument of the method, "
            "e.g. beta or temperature, or a training setting such as lr or batch_size) and everything else at "
            "the shipped recipe, then fit the linear probe on the training split and score it on the validation "
            "split (the test set is never used). Prints and stores, under results.sweeps.PARAM of METHOD's "
            "manifest entry, each run's last-epoch training metrics and its validation accuracy. PARAM epochs "
            "makes each VALUE a run's length (what a longer budget buys; each run's schedule ends at its length)."
        ),
    )
    parser.add_argument("method", choices=TRAINABLE, metavar="METHOD", help=f"one of: {', '.join(TRAINABLE)}")
    parser.add_argument("param", metavar="PARAM", help="the setting to vary")
    parser.add_argument(
        "values",
        type=number_or_name,
        nargs="+",
        metavar="VALUE",
        help="its values: numbers, or for PARAM views the names of view sets (all, no_crop, no_jitter, no_blur, "
        "crop_only: SimCLR's views with one part taken out, or crops and flips alone)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help="epochs per run (default 5; not with PARAM epochs)"
    )
    add_set_argument(
        parser,
        "hold another setting at VALUE in every run (repeatable), e.g. --set constant_momentum=1; "
        'the sweep is then stored under results.sweeps["PARAM, NAME=VALUE"]',
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds: one run per value and seed (default: 0)"
    )
    parser.add_argument(
        "--lr-scaling",
        choices=("none", "linear", "sqrt"),
        default="none",
        help="with PARAM batch_size: scale the recipe's learning rate by B/256 (linear, Goyal et al. "
        "2017) or sqrt(B/256) (default: none, the same learning rate for every batch size)",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=None,
        help="linear warm-up of each run (default: the method's recipe; with a few epochs, 1 keeps "
        "most of each run on the cosine decay, as in the full schedule)",
    )
    parser.add_argument(
        "--diagnostics",
        action="store_true",
        help="also record collapse diagnostics of each run's embeddings (per-dimension std, "
        "covariance block, singular values) on 2,048 validation images",
    )
    parser.add_argument(
        "--monitor-every",
        type=positive_int,
        default=0,
        metavar="N",
        help="every N epochs and at the end, record a kNN accuracy on 2,048 validation images (bank: 10,000 "
        "training images) and, for methods with embeddings (the joint-embedding ones and DINO), the "
        "embeddings' mean standard deviation and effective rank, in each run's history",
    )
    add_short_run_arguments(parser, Sweep.checkpoints)
    parser.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace) -> None:
    names = [name for name, _ in args.set]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--set names {', '.join(repeated)} more than once; give each setting one value")
    if args.param == "epochs" and args.epochs is not None:
        raise ValueError("with PARAM epochs each VALUE is a run's length: leave out --epochs")
    sweep = Sweep(
        method=args.method,
        param=args.param,
        values=args.values,
        fixed=dict(args.set),
        seeds=tuple(args.seeds),
        epochs=args.epochs or Sweep.epochs,
        warmup_epochs=args.warmup_epochs,
        lr_scaling=args.lr_scaling,
        diagnostics=args.diagnostics,
        monitor_every=args.monitor_every,
        dataset=args.dataset,
        root=args.weights,
        limit=args.limit,
        steps_per_epoch=args.steps_per_epoch,
        command=args.command_line,
        checkpoints=args.checkpoints,
    )
    sweep.run(resolve_device(args.device), report=lambda line: print(line, flush=True))


# ---------------------------------------------------------------------------------------- search


def add_search_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="the recipe search of docs/design.md §13: the next runs of METHOD's coordinate search",
        description=(
            f"Run METHOD's recipe search (docs/design.md §13) from where it stopped: first the shipped recipe "
            f"with seeds {', '.join(map(str, search.NOISE_SEEDS))} (the seed noise σ), then each setting in "
            f"order, one {search.EPOCHS}-epoch run per value, keeping a new value only if its validation probe "
            "leads the kept one by more than 2·√2·σ. Each run and decision is stored under results.search of "
            "METHOD's manifest entry as it ends, so an interrupted search resumes. The test split is never used."
        ),
    )
    parser.add_argument(
        "method", choices=tuple(search.GRIDS), metavar="METHOD", help=f"one of: {', '.join(search.GRIDS)}"
    )
    parser.add_argument(
        "--max-runs", type=positive_int, default=None, metavar="N", help="stop after N runs (default: to the end)"
    )
    add_short_run_arguments(parser, search.RecipeSearch.checkpoints)
    parser.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> None:
    recipe_search = search.RecipeSearch(
        method=args.method,
        dataset=args.dataset,
        root=args.weights,
        limit=args.limit,
        steps_per_epoch=args.steps_per_epoch,
        command=args.command_line,
        checkpoints=args.checkpoints,
    )
    finished = recipe_search.run(
        resolve_device(args.device), args.max_runs, report=lambda line: print(line, flush=True)
    )
    kept = recipe_search.kept() or "the shipped recipe"
    print(f"{args.method}: search {'finished' if finished else 'stopped'}; settings kept so far: {kept}")


# ---------------------------------------------------------------------------------------- replicate


def add_replicate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replicate",
        help="train METHOD's shipped recipe again with another seed and record how far its results move",
        description=(
            "Rebuild METHOD from its manifest entry (the shipped run's settings and training config), train it "
            "with --seed, resuming from --checkpoint if it exists, score it with the linear probe (chosen on the "
            "validation split) and kNN on the test split, and record the result under results.replicates of "
            "METHOD's entry. The weights are not published: the shipped run stays the one the notebooks load."
        ),
    )
    parser.add_argument("method", choices=TRAINABLE, metavar="METHOD", help=f"one of: {', '.join(TRAINABLE)}")
    parser.add_argument("--seed", type=int, default=1, help="the replicate's seed (default 1; the shipped run is 0)")
    add_checkpoint_argument(parser, "checkpoints/METHOD.seedSEED.ckpt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_short_run_arguments(parser)
    parser.set_defaults(handler=run_replicate)


def run_replicate(args: argparse.Namespace) -> None:
    record = replicate(
        args.method,
        args.seed,
        resolve_device(args.device),
        dataset=args.dataset,
        root=args.weights,
        checkpoint=args.checkpoint,
        command=args.command_line,
        progress=not args.no_progress,
        limit=args.limit,
        steps_per_epoch=args.steps_per_epoch,
    )
    entry = manifest_entry(args.method, args.dataset, args.weights)
    shipped, shipped_seed = entry["results"], entry["train"]["seed"]
    print(
        f"{args.method} seed {args.seed}: linear probe {100 * record['linear_probe']:.2f}% "
        f"(the shipped run, seed {shipped_seed}: {100 * shipped['linear_probe']['test_accuracy']:.2f}%), kNN "
        f"{100 * record['knn']:.2f}% (shipped: {100 * shipped['knn']['test_accuracy']:.2f}%); recorded under "
        "results.replicates"
    )


# ---------------------------------------------------------------------------------------- results


def add_results_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "results",
        help="re-measure every shipped encoder, record it, and regenerate README.md's results table",
        description=(
            "For every shipped method and baseline: check that the shipped probe and kNN reproduce the manifest's "
            "test accuracies (a mismatch is an error), measure and record alignment/uniformity and the transfer "
            "to the digits; then write the results table between the markers in README.md from the manifest. "
            "Fine-tuning results come from `finetune` and costs from `bench --record`, which take much longer. "
            "With --table-only, only the table is written; with --check, nothing is written and the exit status "
            "is 1 if README.md is out of date."
        ),
    )
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--table-only", action="store_true", help="regenerate the table without measuring")
    parser.add_argument("--readme", type=Path, default=README, help="README file (default: the repository's)")
    add_device_argument(parser)
    add_weights_argument(parser, WEIGHTS_HELP)
    add_limit_argument(
        parser,
        "use only the first N training, test and transfer images, and one shuffling of two "
        "transfer folds (smoke runs and tests; needs weights published with the same limit)",
    )
    parser.set_defaults(handler=run_results)


def measure_all(device: torch.device, root: Path | None, limit: int | None) -> None:
    """Re-measure every shipped Fashion-MNIST encoder and record its geometry and transfer."""
    train_data, test_data = load_splits(DEFAULT_DATASET, limit)
    print(f"{'method':<12} {'probe %':>8} {'kNN %':>7} {'alignment':>10} {'uniformity':>11} {'digits %':>15} {'s':>5}")
    for name in names_to_measure("all", DEFAULT_DATASET, root):
        started = time.perf_counter()
        repeats = 1 if limit else TRANSFER_REPEATS
        measured = remeasure_shipped(
            name, train_data, test_data, device, root=root, transfer_repeats=repeats, transfer_limit=limit
        )
        geometry, transferred = measured["geometry"], measured["transfer"]
        record_results(name, "geometry", geometry, root=root)
        record_results(name, "transfer", transferred, root=root)
        print(
            f"{name:<12} {100 * measured['linear_probe']:8.2f} {100 * measured['knn']:7.2f} "
            f"{geometry['alignment']:10.4f} {geometry['uniformity']:11.4f} "
            f"{100 * transferred['mean']:8.2f} ± {100 * transferred['std']:4.2f} {time.perf_counter() - started:5.0f}",
            flush=True,
        )


def run_results(args: argparse.Namespace) -> int:
    if args.check and args.table_only:
        raise ValueError("--check and --table-only exclude each other")
    current = args.readme.read_text()
    if args.check:
        if render_readme(current, results_table(load_manifest(root=args.weights))) != current:
            print(
                f"{args.readme}: the results table is out of date; run `python -m sslkit results --table-only`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: the results table matches the manifest")
        return 0
    if not args.table_only:
        started = time.perf_counter()
        measure_all(resolve_device(args.device), args.weights, args.limit)
        print(f"measured in {time.perf_counter() - started:.0f} s")
    table = results_table(load_manifest(root=args.weights))
    args.readme.write_text(render_readme(current, table))
    print(table)
    return 0


# ---------------------------------------------------------------------------------------- bench


def add_bench_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure augmentation and training throughput on this device",
        description=(
            "Measure, in one run on one device: images/s of sslkit's batched augmentation, of the same "
            "pipeline in kornia.augmentation and of torchvision.transforms.v2 in a DataLoader, with the "
            "speed-ups; then training images/s (and peak memory) of each trainable method."
        ),
    )
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument(
        "--batches",
        type=int,
        default=100,
        help="timed augmentation batches per pipeline (default 100; fewer gives noisy ratios)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method (default 10)")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="time every method (and the peer pipeline) this many times, in rounds, each in a fresh process; "
        "each figure is the median round, and the spread over the rounds is the bench's noise (default 3)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(TRAINABLE),
        choices=TRAINABLE,
        help="methods whose training step is timed (default: all trainable)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="time the training step through torch.compile (the first, untimed epoch compiles)",
    )
    parser.add_argument(
        "--compile-payoff",
        type=positive_int,
        default=0,
        metavar="REPEATS",
        help="instead of the rest: time eager against torch.compile for each of --methods, REPEATS times "
        "each, alternately, compilation included, and print which is faster for a 100-epoch run",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="store each method's training cost under results.cost in the manifest (the README's "
        "cost columns); only shipped methods are recorded",
    )
    add_weights_argument(parser, WEIGHTS_HELP + " (for --record)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_bench)


def print_peer_comparison(
    device: torch.device, batch_size: int, steps: int, rounds: int, dataset: str, training: dict
) -> None:
    """SimCLR's training images/s in sslkit against the peer pipeline, each timed in fresh processes."""
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("\nlightly is not installed (pip install lightly): skipping the comparison with its pipeline")
        return
    if "simclr" not in training:
        training = bench_training(device, batch_size, steps, ["simclr"], dataset=dataset, rounds=rounds)
    sslkit_rates = training["simclr"]["round_images_per_second"]
    peers = [in_fresh_process(peer_simclr_throughput, str(device), batch_size, steps, dataset) for _ in range(rounds)]
    peer_rates = [peer["images_per_second"] for peer in peers]
    print(
        f"\nSimCLR training against the pipeline most users would write (torchvision.transforms.v2 in a "
        f"DataLoader with {peers[0]['workers']} workers, lightly's NTXentLoss), batch {batch_size}, {steps} steps"
        + (f", median of {rounds} rounds" if rounds > 1 else "")
        + ":"
    )
    print(f"  {'sslkit':<12} {median(sslkit_rates):>10,.0f} images/s   {rate_range(sslkit_rates)}")
    print(f"  {'peer':<12} {median(peer_rates):>10,.0f} images/s   {rate_range(peer_rates)}")
    print(
        f"  sslkit / peer: {median(sslkit_rates) / median(peer_rates):.2f}x "
        f"(from {min(sslkit_rates) / max(peer_rates):.2f}x to {max(sslkit_rates) / min(peer_rates):.2f}x)"
    )


def rate_range(rates: list[float]) -> str:
    """``rounds 1,790–1,900 (spread 6%)``, or nothing for a single round."""
    if len(rates) == 1:
        return ""
    return f"rounds {min(rates):,.0f}–{max(rates):,.0f} (spread {relative_spread(rates):.0%})"


def print_compile_payoff(device: torch.device, args: argparse.Namespace) -> None:
    print(
        f"\nEager against torch.compile, batch {args.batch_size}, {args.compile_payoff} alternating runs of each "
        f"(two epochs of {args.steps} steps, each in a fresh process):"
    )
    for name in args.methods:
        payoff = compile_payoff(name, device, args.batch_size, args.steps, args.compile_payoff, args.dataset)
        step, spread, run = payoff["seconds_per_step"], payoff["spread"], payoff["run_seconds"]
        faster, gain = min(run, key=run.get), abs(run["eager"] - run["compiled"]) / max(run.values())
        print(
            f"  {name:<12} eager {step['eager']:.4f} s/step (spread {spread['eager']:.4f}), compiled "
            f"{step['compiled']:.4f} s/step (spread {spread['compiled']:.4f}), "
            f"compiling {payoff['compile_seconds']:.0f} s"
        )
        print(
            f"  {'':<12} a 100-epoch run ({payoff['run_steps']:,} steps): eager {run['eager'] / 60:.0f} min, "
            f"compiled {run['compiled'] / 60:.0f} min: {faster} is faster by {gain:.1%}"
        )


def run_bench(args: argparse.Namespace) -> int:
    if args.batch_size < 2 or args.batches < 1 or args.steps < 1:
        raise ValueError("--batch-size must be at least 2, --batches and --steps at least 1")
    device = resolve_device(args.device)
    print(
        f"{dataset_info(args.dataset).title}; device: {describe_device(device)}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} CPU threads"
    )
    if args.compile_payoff:
        if args.record or args.compile:
            raise ValueError(
                "--compile-payoff times both modes itself and records nothing: leave out --compile and --record"
            )
        print_compile_payoff(device, args)
        return 0
    images, _ = load_splits(args.dataset)[0]
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
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
        + ":"
    )
    training = bench_training(
        device, args.batch_size, args.steps, args.methods, args.compile, args.dataset, args.rounds
    )
    memory_kind = "peak CUDA memory" if device.type == "cuda" else "peak rise of resident memory"
    for name, result in training.items():
        print(
            f"  {name:<12} {result['images_per_second']:>10,.0f} images/s "
            f"(~{result['seconds_per_epoch']:.0f} s per epoch of {len(images):,} images), "
            f"{memory_kind} {result['peak_memory_mib']:.0f} MiB   {rate_range(result['round_images_per_second'])}"
        )
    if args.rounds > 1:
        widest, spread = widest_spread({name: result["round_images_per_second"] for name, result in training.items()})
        print(
            f"  the bench's noise: the same step timed {args.rounds} times in this run moves by up to "
            f"{spread:.0%} ({widest}); a ratio of two methods closer to 1 than that is no difference"
        )
    print_peer_comparison(device, args.batch_size, args.steps, args.rounds, args.dataset, training)
    dtype = mixed_precision_dtype(device)
    peak = peak_matmul_flops(device, dtype)
    precision = str(dtype or torch.float32).removeprefix("torch.")
    print(
        f"\nAchieved FLOP/s of each training step against a {precision} 2048×2048 matrix product here "
        f"({peak / 1e9:,.0f} GFLOP/s; FlopCounterMode counts matrix products and convolutions):"
    )
    for name, result in training.items():
        achieved = result["flops_per_second"]
        print(f"  {name:<12} {achieved / 1e9:>8,.1f} GFLOP/s   {achieved / peak:6.1%} of the peak")
    if args.record:
        recorded, removed = record_costs(
            training,
            describe_device(device),
            args.batch_size,
            args.steps,
            args.rounds,
            args.command_line,
            args.dataset,
            args.weights,
        )
        print(f"\nrecorded results.cost for {', '.join(recorded) or 'no shipped method'}")
        if removed:
            print(
                f"removed the costs of {', '.join(removed)}: an earlier bench run measured them, and one table "
                "compares one run; time them again with --methods to restore them"
            )
    return 0


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sslkit",
        description="Self-supervised learning for images: pretrain, evaluate, benchmark, report.",
    )
    parser.add_argument("--version", action="version", version=f"sslkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_pretrain_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_geometry_parser(subparsers)
    add_transfer_parser(subparsers)
    add_finetune_parser(subparsers)
    add_sweep_parser(subparsers)
    add_search_parser(subparsers)
    add_replicate_parser(subparsers)
    add_bench_parser(subparsers)
    add_results_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m sslkit " + " ".join(shlex.quote(a) for a in argv)  # recorded with results
    try:
        return args.handler(args) or 0
    except (DataNotFoundError, WeightsError, CheckpointMismatchError, NonFiniteLossError, ValueError) as error:
        # Errors whose cause we know: one clear message, no traceback from deep inside torch.
        print(f"error: {error}", file=sys.stderr)
        return 2
