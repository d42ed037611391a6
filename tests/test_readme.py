"""README.md's code blocks work as written.

Every ``python -m sslkit ...`` (and ``torchrun ... -m sslkit ...``) line of its bash blocks parses
with the real command line (none is run: they train for hours), and every python block runs, on a
reader's machine: the shipped Fashion-MNIST weights, CIFAR-10 SimCLR weights that the reader trained
with ``python -m sslkit pretrain simclr --dataset cifar10`` (here: a tiny run on fake CIFAR files in
torchvision's on-disk format), and no network. The shapes the blocks' comments claim are checked."""

import argparse
import ast
import builtins
import io
import pickle
import re
import shlex
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

import sslkit.cli
from sslkit import data

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
SUBCOMMANDS = (
    "pretrain",
    "evaluate",
    "finetune",
    "sweep",
    "search",
    "replicate",
    "geometry",
    "transfer",
    "bench",
    "results",
)


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S) if lang == language]


def sslkit_commands(block: str) -> list[tuple[str, list[str]]]:
    """``(line, arguments after "sslkit")`` of each line of a bash block that runs sslkit."""
    commands = []
    for line in re.sub(r"\\\n", " ", block).splitlines():  # backslash continuations joined
        tokens = shlex.split(line, comments=True)
        if tokens[:3] == ["python", "-m", "sslkit"]:
            commands.append((line.strip(), tokens[3:]))
        elif tokens[:1] == ["torchrun"]:
            starts = [i for i in range(len(tokens) - 1) if tokens[i : i + 2] == ["-m", "sslkit"]]
            assert starts, f"README.md: a torchrun line that does not run `-m sslkit`: {line.strip()}"
            commands.append((line.strip(), tokens[starts[0] + 2 :]))
    return commands


def readme_commands() -> list[tuple[str, list[str]]]:
    return [command for block in fenced_blocks(README.read_text(), "bash") for command in sslkit_commands(block)]


def parse(arguments: list[str], capsys) -> argparse.Namespace | str:
    """The parsed arguments, or argparse's complaint."""
    try:
        return sslkit.cli.build_parser().parse_args(arguments)
    except SystemExit:
        return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ bash blocks


def test_every_sslkit_command_line_in_the_readme_parses(capsys):
    commands = readme_commands()
    assert commands, "README.md shows no `python -m sslkit` command"
    failures = []
    for line, arguments in commands:
        parsed = parse(arguments, capsys)
        if isinstance(parsed, str):
            failures.append(f"{line}\n    {parsed}")
        else:
            assert parsed.command == arguments[0]
    assert not failures, "README.md commands that the CLI refuses:\n" + "\n".join(failures)


def test_the_command_parser_of_this_test_sees_continuations_comments_and_torchrun(capsys):
    block = (
        "make lab     # not sslkit\n"
        "python -m sslkit evaluate all --dataset cifar10   # a comment with --epochs 3\n"
        "torchrun --nnodes=2 --rdzv-endpoint=HOST:29500 \\\n"
        "    -m sslkit pretrain simclr --batch-size 512      # two machines\n"
        "python -m sslkit sweep simclr lr 0.05 0.1 --epochs three\n"
    )
    commands = sslkit_commands(block)
    assert [arguments for _, arguments in commands] == [
        ["evaluate", "all", "--dataset", "cifar10"],
        ["pretrain", "simclr", "--batch-size", "512"],
        ["sweep", "simclr", "lr", "0.05", "0.1", "--epochs", "three"],
    ]
    assert parse(commands[1][1], capsys).batch_size == 512
    assert "invalid positive_int value: 'three'" in parse(commands[2][1], capsys)


def test_the_readme_shows_every_subcommand_of_the_command_line():
    parser_actions = sslkit.cli.build_parser()._actions
    subcommands = next(a for a in parser_actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(subcommands) == sorted(SUBCOMMANDS)
    shown = {arguments[0] for _, arguments in readme_commands()}
    missing = [name for name in SUBCOMMANDS if name not in shown]
    assert not missing, f"README.md shows no `python -m sslkit` command for: {', '.join(missing)}"


# ------------------------------------------------------------------------------------------ python blocks


def write_fake_cifar(root: Path) -> int:
    """CIFAR-10 and CIFAR-100 in torchvision's on-disk format (pickled dicts of uint8 rows: the R plane, then G,
    then B); returns the number of CIFAR-10 training images. Each image is one flat colour of a small palette:
    enough to train a step and to evaluate, and fast to probe."""
    per_batch = 40
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        first = b * per_batch
        colours = [(60 * (i % 4), 50 + 40 * (i % 3), 200 - 30 * (i % 5)) for i in range(first, first + per_batch)]
        rows = np.stack([np.repeat(np.array(colour, np.uint8), 1024) for colour in colours])
        batch = {"batch_label": name, "labels": [i % 10 for i in range(first, first + per_batch)], "data": rows}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # the originals' protocol
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, per_class in (("train", 10), ("test", 2)):
        n = 100 * per_class
        batch = {
            "fine_labels": [i % 100 for i in range(n)],
            "coarse_labels": [i % 20 for i in range(n)],
            "data": np.full((n, 3 * 1024), 90, np.uint8),
        }
        (folder / split).write_bytes(pickle.dumps(batch))
    return 5 * per_batch


def no_download(info, split):
    raise AssertionError(f"a README block tried to download {info.title} ({split})")


@pytest.fixture(scope="module")
def readers_machine(tmp_path_factory):
    """The shipped weights, CIFAR-10 SimCLR weights trained by the reader (in ROOT/cifar10/), CIFAR on disk,
    no network: $SSLKIT_WEIGHTS=ROOT and $SSLKIT_DATA name the two folders."""
    tmp = tmp_path_factory.mktemp("reader")
    cifar_images = write_fake_cifar(tmp / "data")
    root = tmp / "weights"
    root.mkdir()
    for shipped in (REPOSITORY / "weights").glob("*.*"):  # the repository's weights/, read only
        (root / shipped.name).symlink_to(shipped)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSLKIT_DATA", str(tmp / "data"))
        patch.setenv("SSLKIT_WEIGHTS", str(root))
        patch.setattr(data, "_download", no_download)
        patch.chdir(tmp)
        torch.set_num_threads(1)  # many tiny probe fits: one thread is several times faster on a shared CPU
        try:
            status = sslkit.cli.main(
                ["pretrain", "simclr", "--dataset", "cifar10", "--epochs", "1", "--batch-size", "64"]
                + ["--limit", "256", "--steps-per-epoch", "2", "--no-progress"]
                + ["--out", str(root), "--checkpoint", str(tmp / "c.ckpt")]
            )
        finally:
            torch.set_num_threads(threads)
        assert status == 0
        assert (root / "cifar10" / "simclr.pth").is_file() and (root / "simclr.pth").is_symlink()  # shipped: as it was
        yield {"cifar10 train images": cifar_images}


def comments_by_line(source: str) -> dict[int, tuple[int, str]]:
    """``{line number: (column, comment text)}`` of a block's comments."""
    return {
        token.start[0]: (token.start[1], token.string.lstrip("# "))
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }


def undefined_names(source: str) -> set[str]:
    """Names a block reads but neither assigns, imports nor gets from Python."""
    tree = ast.parse(source)
    defined, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
    return read - defined - set(dir(builtins))


FEATURES_CLAIM = re.compile(r"\[N, (\d+), (\d+), (\d+)\] in \[0, 1\]\s*->\s*\[N, (\d+)\]")
LOADED_CLAIM = re.compile(r"uint8 \[(\d+), (\d+), (\d+), (\d+)\]")
LOAD_CALL = re.compile(r'load_dataset\("([\w-]+)", "(\w+)"\)')


def check_shape_claims(source: str, namespace: dict, machine: dict) -> int:
    """Check every shape that a comment of the block claims for the line's result; returns how many."""
    lines = source.splitlines()
    checked = 0
    for number, (column, comment) in comments_by_line(source).items():
        if "[N," not in comment and "uint8 [" not in comment:
            continue
        statement = ast.parse(lines[number - 1][:column]).body[0]
        assert isinstance(statement, ast.Assign), f"a shape claim on a line that assigns nothing: {lines[number - 1]}"
        target = statement.targets[0]
        name = target.elts[0].id if isinstance(target, ast.Tuple) else target.id
        value = namespace[name]
        if match := FEATURES_CLAIM.search(comment):
            c, h, w, d = map(int, match.groups())
            if isinstance(value, torch.nn.Module):  # the encoder: [N, C, H, W] in [0, 1] -> [N, D]
                with torch.no_grad():
                    assert value(torch.rand(3, c, h, w)).shape == (3, d), lines[number - 1]
            else:  # its output on the images named in the call
                images = namespace[statement.value.args[0].id]
                assert images.shape[1:] == (c, h, w) and 0 <= images.min() and images.max() <= 1
                assert value.shape == (len(images), d), lines[number - 1]
        elif match := LOADED_CLAIM.search(comment):
            n, *shape = map(int, match.groups())
            dataset, split = LOAD_CALL.search(lines[number - 1]).groups()
            assert n == data.dataset_info(dataset).sizes[split], (
                f"{lines[number - 1]}: the real {dataset} has other sizes"
            )
            assert value.dtype == torch.uint8 and value.shape == (machine[f"{dataset} {split} images"], *shape)
        else:
            raise AssertionError(f"a shape claim this test cannot check: {lines[number - 1]}")
        checked += 1
    return checked


def test_every_python_block_of_the_readme_runs_and_gives_the_shapes_it_claims(readers_machine, small_batch):
    blocks = fenced_blocks(README.read_text(), "python")
    assert blocks, "README.md has no python block"
    what_a_reader_has = {"images": small_batch[0]}  # a batch of Fashion-MNIST images, float [N, 1, 28, 28] in [0, 1]
    claims = 0
    for index, source in enumerate(blocks):
        unknown = undefined_names(source) - set(what_a_reader_has)
        assert not unknown, f"README python block {index} uses {sorted(unknown)}, defined nowhere"
        namespace = {name: what_a_reader_has[name] for name in undefined_names(source)}
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)
        claims += check_shape_claims(source, namespace, readers_machine)
    assert claims >= len(blocks), "the README's python blocks should say what shapes they return"


def test_the_block_checker_refuses_a_wrong_shape_claim():
    source = "import torch\nencoder = torch.nn.Flatten()  # [N, 1, 28, 28] in [0, 1]  ->  [N, 128]\n"
    namespace = {}
    exec(source, namespace)
    with pytest.raises(AssertionError):
        check_shape_claims(source, namespace, {})
    assert check_shape_claims(source.replace("128", "784"), namespace, {}) == 1
    assert undefined_names("x = encoder(images)\nprint(x)\n") == {"encoder", "images"}
