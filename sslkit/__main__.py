"""Command line: ``python -m sslkit pretrain | evaluate | geometry | transfer | finetune | sweep | bench | results``
(``--help`` on each)."""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
import time
from pathlib import Path

import torch

from . import __version__, distributed
from .data import (
    DEFAULT_DATASET,
    PRETRAIN_DATASETS,
    DataNotFoundError,
    dataset_info,
    load_dataset,
    locate,
)
from .evaluate import (
    FINE_TUNE_FRACTIONS,
    FINE_TUNE_SEEDS,
    REPRODUCTION_TOLERANCE,
    TRANSFER_REPEATS,
    FineTuneConfig,
    differences_from_manifest,
    evaluate_features,
    evaluate_shipped,
    extract_features,
    geometry,
    label_efficiency,
    load_imagenet_resnet18,
    remeasure_shipped,
    transfer,
)
from .methods import METHOD_CLASSES, JointEmbedding, build_method
from .models import PixelFeatures, build_encoder, count_parameters, encoder_config
from .results import README, render_readme, results_table
from .train import NonFiniteLossError, TrainConfig, describe_device, resolve_device, train
from .weights import (
    BASELINES,
    METHODS,
    WeightsError,
    load_manifest,
    load_pretrained,
    manifest_entry,
    manifest_update,
    publish,
    record_results,
    weights_dir,
)

UNTRAINED_BASELINES = ("random", "random_vit", "pixels")  # evaluated as they are: nothing to train


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
    parser.add_argument("--weights", type=Path, default=None, help=help)


def add_limit_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--limit", type=positive_int, default=None, help=help)


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


def load_splits(
    limit: int | None, dataset: str = DEFAULT_DATASET
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(train_images, train_labels), (test_images, test_labels)``, each cut to ``limit`` images if given."""
    splits = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if limit:
        splits = tuple((images[:limit], labels[:limit]) for images, labels in splits)
    return splits


# ---------------------------------------------------------------------------------------- pretrain


def add_pretrain_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train a method (or build a baseline), evaluate it and publish weights + manifest entry",
        description=(
            "Train METHOD on the 60,000 Fashion-MNIST training images (or those of --dataset) with the common budget "
            "(batch 256, 100 epochs), resuming from --checkpoint if it exists; then fit the linear "
            "probe (chosen on the validation split), measure test accuracy and kNN, and write "
            "OUT/METHOD.pth, OUT/METHOD.history.json and the entry in OUT/manifest.json. "
            "'random' (the ResNet), 'random_vit' (MAE's ViT) and 'pixels' are baselines with nothing to train: "
            "they are only evaluated."
        ),
    )
    parser.add_argument(
        "method",
        choices=sorted(METHOD_CLASSES) + list(UNTRAINED_BASELINES),
        metavar="METHOD",
        help=f"one of: {', '.join(sorted(METHOD_CLASSES) + list(UNTRAINED_BASELINES))}",
    )
    parser.add_argument("--epochs", type=positive_int, default=100, help="number of epochs (default 100)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="batch size (default 256)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default: the method's recipe)")
    parser.add_argument("--weight-decay", type=float, help="weight decay (default: the method's recipe)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), help="optimizer (default: the method's recipe)")
    parser.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs (default: the method's recipe)")
    parser.add_argument("--temperature", type=positive_float, help="softmax temperature (contrastive methods)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and views (default 0)")
    add_device_argument(parser)
    parser.add_argument(
        "--no-amp", action="store_true", help="train in float32 even where mixed precision is available"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for METHOD.pth and manifest.json (default: the repository's weights/)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint to save every epoch and resume from (default: checkpoints/METHOD.ckpt)",
    )
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
        help="run the training step through torch.compile (CUDA; pays off on long runs)",
    )
    parser.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if distributed.launched_by_torchrun():
        device = distributed.initialize(device.type)
    try:
        pretrain(args, device)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def processes_note() -> str:
    """`` × K processes`` under torchrun, else nothing: appended to the device of a training run."""
    return f" × {distributed.world_size()} processes" if distributed.world_size() > 1 else ""


def pretrain(args: argparse.Namespace, device: torch.device) -> None:
    """Train (in every process under torchrun), then evaluate and publish (in the main process)."""
    (train_images, train_labels), (test_images, test_labels) = load_splits(args.limit, args.dataset)
    if dataset_info(args.dataset).channels == 3:  # the transfer task's files: missing, they stop the run early
        for split in ("train", "test"):
            locate("cifar100", split)
    command = args.command_line
    entry = {
        "command": command,
        "dataset": args.dataset,
        "torch_version": torch.__version__,
        "sslkit_version": __version__,
    }
    history: list[dict] = []
    torch.manual_seed(args.seed)  # the encoder's initialisation

    if args.method == "pixels":
        info = dataset_info(args.dataset)
        encoder, state = PixelFeatures(info.channels, info.image_size), {}
        entry.update(kind="baseline", config={"encoder": None}, epochs=0)
    elif args.method in ("random", "random_vit"):
        encoder = build_encoder(encoder_config(args.dataset, "vit" if args.method == "random_vit" else "resnet"))
        entry.update(kind="baseline", config={"encoder": encoder.config()}, epochs=0)
        state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    else:
        cls = METHOD_CLASSES[args.method]
        if args.temperature and "temperature" not in inspect.signature(cls).parameters:
            raise ValueError(f"--temperature does not apply to {args.method}: it has no softmax temperature")
        method_kwargs = {"temperature": args.temperature} if args.temperature else {}
        method = build_method(args.method, args.dataset, **method_kwargs)
        overrides = {
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "optimizer": args.optimizer,
            "warmup_epochs": args.warmup_epochs,
        }
        recipe = {**cls.recipe, **{k: v for k, v in overrides.items() if v is not None}}
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            amp=not args.no_amp,
            steps_per_epoch=args.steps_per_epoch,
            **recipe,
        )
        checkpoint = args.checkpoint or Path("checkpoints") / f"{args.method}.ckpt"
        history = train(
            method,
            train_images,
            train_labels,
            config,
            device,
            checkpoint,
            progress=not args.no_progress,
            compile_model=args.compile,
        )
        if not distributed.is_main_process():
            return
        encoder = method.encoder
        state = method.state_dict()
        entry.update(
            kind="baseline" if args.method in BASELINES else "method",
            config=method.config(),
            train=config.to_dict(),
            epochs=config.epochs,
            batch_size=config.batch_size,
            device=describe_device(device) + processes_note(),
            wall_time_seconds=round(sum(record["seconds"] for record in history), 1),
            seconds_per_epoch=round(sum(record["seconds"] for record in history) / len(history), 2),
        )

    print(f"evaluating {args.method} with the linear-probe protocol ...", flush=True)
    started = time.perf_counter()
    train_features = extract_features(encoder, train_images, device=device)
    test_features = extract_features(encoder, test_images, device=device)
    probe, results = evaluate_features(train_features, train_labels, test_features, test_labels)
    results["encoder_parameters"] = count_parameters(encoder)
    results["geometry"] = geometry(encoder, test_images, device=device)
    results["transfer"] = transfer(encoder, args.dataset, device, repeats=1 if args.limit else TRANSFER_REPEATS)
    if args.limit:
        results["limit"] = args.limit
    entry["results"] = results
    state.update(probe.state_dict())
    written = publish(args.method, state, entry, history, args.out)
    print(
        f"{args.method}: linear probe {100 * results['linear_probe']['test_accuracy']:.2f}%, "
        f"kNN {100 * results['knn']['test_accuracy']:.2f}% (evaluated in {time.perf_counter() - started:.0f} s); "
        f"wrote {written['file']} and the manifest entry in {args.out or weights_dir()}"
    )


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
    add_weights_argument(parser, "folder with the weights and manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_limit_argument(parser, "use only the first N training and test images (to check a `pretrain --limit N` run)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_evaluate)


def shipped_names(
    method: str, directory: Path | None, exclude: tuple[str, ...] = (), dataset: str = DEFAULT_DATASET
) -> list[str]:
    """``[method]`` if it is shipped (a clear error if not), or every shipped name for ``"all"``; each
    checked to have been trained on ``dataset``."""
    if method == "all":
        names = [n for n in METHODS + BASELINES if n not in exclude and n in load_manifest(directory)["methods"]]
        if not names:
            option = "" if dataset == DEFAULT_DATASET else f" --dataset {dataset}"
            raise WeightsError(
                f"no weights are in {directory or weights_dir()} yet; train some with "
                f"`python -m sslkit pretrain METHOD{option}`"
            )
    else:
        names = [method]
    for name in names:
        manifest_entry(name, directory, dataset)  # unknown, unshipped or other-dataset names fail here, clearly
    return names


def run_evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    names = shipped_names(args.method, args.weights, dataset=args.dataset)
    train_data, test_data = load_splits(args.limit, args.dataset)
    print(f"{'method':<12} {'probe %':>8} {'manifest':>9} {'macro-F1':>9} {'kNN %':>7} {'manifest':>9}")
    failed = []
    for name in names:
        measured = evaluate_shipped(name, train_data, test_data, device, args.weights)
        recorded = manifest_entry(name, args.weights)["results"]
        expected_probe, expected_knn = recorded["linear_probe"]["test_accuracy"], recorded["knn"]["test_accuracy"]
        print(
            f"{name:<12} {100 * measured['linear_probe']:8.2f} {100 * expected_probe:9.2f} "
            f"{measured['macro_f1']:9.4f} {100 * measured['knn']:7.2f} {100 * expected_knn:9.2f}"
        )
        if differences_from_manifest(name, measured, args.weights, args.tolerance):
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
    add_weights_argument(parser, "folder with the weights and manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_limit_argument(parser, "use only the first N test images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_geometry)


def run_geometry(args: argparse.Namespace) -> None:
    names = shipped_names(args.method, args.weights, dataset=args.dataset)
    device = resolve_device(args.device)
    _, (test_images, _) = load_splits(args.limit, args.dataset)
    print(f"{'method':<12} {'alignment':>10} {'uniformity':>11}")
    for name in names:
        measured = geometry(load_pretrained(name, device, args.weights), test_images, device=device)
        record_results(name, "geometry", measured, args.weights)
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
    add_weights_argument(parser, "folder with the weights and manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_dataset_argument(parser)
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=TRANSFER_REPEATS,
        help=f"shufflings of the 5-fold split (default {TRANSFER_REPEATS}; 1 for smoke runs)",
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
    names = shipped_names(args.method, args.weights, dataset=args.dataset)
    reference = load_imagenet_resnet18() if args.imagenet_reference else None  # fails before the long part
    task = "digits" if dataset_info(args.dataset).channels == 1 else "CIFAR-100, 10 classes"
    print(f"{'method':<18} {task + ', 5-fold CV %':>28}")
    for name in names:
        measured = transfer(load_pretrained(name, device, args.weights), args.dataset, device, args.repeats)
        record_results(name, "transfer", measured, args.weights)
        print(f"{name:<18} {100 * measured['mean']:21.2f} ± {100 * measured['std']:.2f}", flush=True)
    if reference is not None:
        measured = transfer(reference, args.dataset, device, args.repeats)
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
    parser.add_argument(
        "method", metavar="METHOD", help=f"one of {', '.join(n for n in METHODS + BASELINES if n != 'pixels')}, or all"
    )
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
    add_weights_argument(parser, "folder with the weights and manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_limit_argument(parser, "use only the first N training and test images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> None:
    if any(fraction > 1 for fraction in args.fractions):
        raise ValueError(f"--fractions must be in (0, 1], got {args.fractions}")
    if args.method == "pixels":
        raise ValueError("'pixels' has no network to fine-tune; the from-scratch reference is 'random'")
    names = shipped_names(args.method, args.weights, exclude=("pixels",), dataset=args.dataset)
    device = resolve_device(args.device)
    train_data, test_data = load_splits(args.limit, args.dataset)
    config = FineTuneConfig(steps=args.steps)
    for name in names:
        started = time.perf_counter()
        encoder = load_pretrained(name, device, args.weights)

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
        with manifest_update(args.weights) as manifest:  # read, merge and write under one lock
            results = manifest["methods"][name].setdefault("results", {})
            results["fine_tune"] = merged_fine_tune(results, summary)
        for fraction, result in summary["fractions"].items():
            print(
                f"{name}: {fraction} of the labels: {100 * result['mean']:.2f} ± {100 * result['std']:.2f}% "
                f"over {len(result['test_accuracy'])} seeds"
            )


def merged_fine_tune(recorded: dict, summary: dict) -> dict:
    """``summary`` with the fractions an earlier ``finetune`` run of the same recipe, seeds and limit
    recorded and this run did not measure (e.g. ``--fractions 1`` after the default 0.01 0.1).

    Every fraction entry says on which device it ran; ``seconds`` is the total of both runs. An
    earlier record of another recipe is replaced, never mixed in."""
    previous = recorded.get("fine_tune")
    for result in summary["fractions"].values():
        result["device"] = summary["device"]
    if not previous or (previous["config"], previous.get("limit")) != (summary["config"], summary.get("limit")):
        return summary
    kept = {
        fraction: {"device": previous["device"], **result}
        for fraction, result in previous["fractions"].items()
        if fraction not in summary["fractions"]
    }
    if not kept:
        return summary
    devices = {result["device"] for result in (*kept.values(), *summary["fractions"].values())}
    return {
        **summary,
        "fractions": dict(sorted({**kept, **summary["fractions"]}.items(), key=lambda f: float(f[0]))),
        "seconds": round(previous["seconds"] + summary["seconds"], 1),
        "device": " and ".join(sorted(devices)),
    }


# ---------------------------------------------------------------------------------------- sweep


def number(text: str) -> int | float:
    """``"4"`` → 4, ``"0.25"`` → 0.25."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def add_sweep_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="short runs over one setting, scored on the validation split, recorded in the manifest",
        description=(
            "For each VALUE, train METHOD for --epochs with PARAM=VALUE (a constructor argument of the method, "
            "e.g. beta or temperature, or a training setting such as lr or batch_size) and everything else at "
            "the shipped recipe, then fit the linear probe on the training split and score it on the validation "
            "split (the test set is never used). Prints and stores, under results.sweeps.PARAM of METHOD's "
            "manifest entry, each run's last-epoch training metrics and its validation accuracy."
        ),
    )
    parser.add_argument(
        "method", choices=sorted(METHOD_CLASSES), metavar="METHOD", help=f"one of: {', '.join(sorted(METHOD_CLASSES))}"
    )
    parser.add_argument("param", metavar="PARAM", help="the setting to vary")
    parser.add_argument("values", type=number, nargs="+", metavar="VALUE", help="its values")
    parser.add_argument("--epochs", type=positive_int, default=5, help="epochs per run (default 5)")
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
    add_device_argument(parser)
    add_weights_argument(parser, "folder with manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_limit_argument(parser, "use only the first N training images (smoke runs and tests)")
    add_dataset_argument(parser)
    parser.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="stop each epoch after N steps (smoke runs and tests)",
    )
    parser.set_defaults(handler=run_sweep)


def run_sweep(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .evaluate import embedding_diagnostics, probe_validation_split, select_and_fit_linear_probe

    cls = METHOD_CLASSES[args.method]
    train_fields = {f.name for f in fields(TrainConfig)} - {"epochs", "steps_per_epoch", "amp", "seed"}
    method_params = set(inspect.signature(cls).parameters) - {"encoder_config", "augment_config"}
    if args.param not in train_fields | method_params:
        raise ValueError(
            f"{args.method} has no setting {args.param!r}; choose one of "
            f"{', '.join(sorted(method_params | train_fields))}"
        )
    if args.lr_scaling != "none" and args.param != "batch_size":
        raise ValueError(f"--lr-scaling {args.lr_scaling} applies only when sweeping batch_size, not {args.param}")
    if args.diagnostics and not issubclass(cls, JointEmbedding):
        raise ValueError(f"--diagnostics needs a joint-embedding method (simclr, dcl, vicreg), not {args.method}")
    manifest_entry(args.method, args.weights, args.dataset)  # results are recorded beside the shipped weights
    device = resolve_device(args.device)
    (images, labels), _ = load_splits(args.limit, args.dataset)
    command = args.command_line
    warmup_epochs = cls.recipe["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs
    settings = {"epochs": args.epochs, "warmup_epochs": warmup_epochs, "lr_scaling": args.lr_scaling}
    if args.limit or args.steps_per_epoch:
        settings["smoke"] = {"limit": args.limit, "steps_per_epoch": args.steps_per_epoch}
    # Each run is recorded as soon as it ends, so an interrupted sweep resumes with the runs it lacks.
    previous = manifest_entry(args.method, args.weights).get("results", {}).get("sweeps", {}).get(args.param, {})
    done = {}
    if all(previous.get(key) == value for key, value in settings.items()):
        done = {
            (run["value"], run.get("seed", 0)): run
            for run in previous.get("runs", [])
            if "diagnostics" in run or not args.diagnostics
        }

    def record(runs: list[dict]) -> None:
        sweeps = manifest_entry(args.method, args.weights).get("results", {}).get("sweeps", {})
        sweeps[args.param] = {**settings, "command": command, "device": describe_device(device), "runs": runs}
        record_results(args.method, "sweeps", sweeps, args.weights)

    runs = []
    for value in args.values:
        for seed in args.seeds:
            if (value, seed) in done:
                runs.append(done[(value, seed)])
                print(
                    f"{args.method} {args.param}={value} seed {seed}: recorded by an earlier, interrupted sweep "
                    f"(validation probe accuracy {100 * runs[-1]['validation_accuracy']:.2f}%)",
                    flush=True,
                )
                continue
            torch.manual_seed(seed)
            method = build_method(
                args.method, args.dataset, **({args.param: value} if args.param in method_params else {})
            )
            recipe = {
                **cls.recipe,
                "warmup_epochs": warmup_epochs,
                **({args.param: value} if args.param in train_fields else {}),
            }
            if args.lr_scaling != "none":
                ratio = value / TrainConfig.batch_size
                recipe["lr"] = cls.recipe["lr"] * (ratio if args.lr_scaling == "linear" else ratio**0.5)
            config = TrainConfig(epochs=args.epochs, seed=seed, steps_per_epoch=args.steps_per_epoch, **recipe)
            started = time.perf_counter()
            history = train(method, images, labels, config, device, progress=False)
            features = extract_features(method.encoder, images, device=device)
            _, validation = select_and_fit_linear_probe(features, labels)
            last = {k: v for k, v in history[-1].items() if k not in ("epoch", "lr", "seconds")}
            run = {
                "value": value,
                "seed": seed,
                "lr": config.lr,
                **last,
                "validation_accuracy": round(max(validation.values()), 6),
                "seconds": round(time.perf_counter() - started, 1),
            }
            if args.diagnostics:
                _, validation_indices = probe_validation_split(labels)
                run["diagnostics"] = embedding_diagnostics(method, images[validation_indices[:2048]])
            runs.append(run)
            print(
                f"{args.method} {args.param}={value} seed {seed} (lr {config.lr:.4g}): "
                + ", ".join(f"{k} {v:.4g}" for k, v in last.items())
                + f", validation probe accuracy {100 * run['validation_accuracy']:.2f}% ({run['seconds']:.0f} s)",
                flush=True,
            )
            record(runs + [r for r in done.values() if r not in runs])  # keeps the runs still to be reached
    record(runs)


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
    add_weights_argument(parser, "folder with the weights and manifest.json (default: $SSLKIT_WEIGHTS or weights/)")
    add_limit_argument(
        parser,
        "use only the first N training and test images, and one shuffling of the "
        "transfer folds (smoke runs and tests; needs weights published with the same limit)",
    )
    parser.set_defaults(handler=run_results)


def measure_all(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    train_data, test_data = load_splits(args.limit)
    print(f"{'method':<12} {'probe %':>8} {'kNN %':>7} {'alignment':>10} {'uniformity':>11} {'digits %':>15} {'s':>5}")
    for name in shipped_names("all", args.weights):
        started = time.perf_counter()
        measured = remeasure_shipped(
            name, train_data, test_data, device, args.weights, transfer_repeats=1 if args.limit else TRANSFER_REPEATS
        )
        measured_geometry, transfer = measured["geometry"], measured["transfer"]
        record_results(name, "geometry", measured_geometry, args.weights)
        record_results(name, "transfer", transfer, args.weights)
        print(
            f"{name:<12} {100 * measured['linear_probe']:8.2f} {100 * measured['knn']:7.2f} "
            f"{measured_geometry['alignment']:10.4f} {measured_geometry['uniformity']:11.4f} "
            f"{100 * transfer['mean']:8.2f} ± {100 * transfer['std']:4.2f} {time.perf_counter() - started:5.0f}",
            flush=True,
        )


def run_results(args: argparse.Namespace) -> int:
    if args.check and args.table_only:
        raise ValueError("--check and --table-only exclude each other")
    current = args.readme.read_text()
    if args.check:
        if render_readme(current, results_table(load_manifest(args.weights))) != current:
            print(
                f"{args.readme}: the results table is out of date; run `python -m sslkit results --table-only`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: the results table matches the manifest")
        return 0
    if not args.table_only:
        started = time.perf_counter()
        measure_all(args)
        print(f"measured in {time.perf_counter() - started:.0f} s")
    table = results_table(load_manifest(args.weights))
    args.readme.write_text(render_readme(current, table))
    print(table)
    return 0


# ---------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sslkit",
        description="Self-supervised learning on Fashion-MNIST: pretrain, evaluate, benchmark, report.",
    )
    parser.add_argument("--version", action="version", version=f"sslkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_pretrain_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_geometry_parser(subparsers)
    add_transfer_parser(subparsers)
    add_finetune_parser(subparsers)
    add_sweep_parser(subparsers)
    from .bench import add_bench_parser

    add_bench_parser(subparsers)
    add_results_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m sslkit " + " ".join(shlex.quote(a) for a in argv)  # recorded with results
    if getattr(args, "dataset", DEFAULT_DATASET) != DEFAULT_DATASET:  # another dataset's weights: their own folder
        for folder in ("weights", "out"):
            if hasattr(args, folder) and getattr(args, folder) is None:
                setattr(args, folder, weights_dir(args.dataset))
    try:
        return args.handler(args) or 0
    except (DataNotFoundError, WeightsError, NonFiniteLossError, ValueError) as error:
        # Errors whose cause we know: one clear message, no traceback from deep inside torch.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
