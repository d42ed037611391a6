"""Colab, simulated on this machine: the network path of the data, and the notebooks' setup cell.

A Colab reader has no Debian package and no clone: the first cell of a notebook clones the
repository, installs sslkit and imports it from the clone, and the data loader lets torchvision
download Fashion-MNIST. Here the network is a server on 127.0.0.1 that serves the four ``.gz``
files, torchvision's mirror list points at it (its md5 checks stay on, against the files served),
and the repository is a ``file://`` clone of this checkout. Nothing leaves the machine.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import venv
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
import torch
import torchvision.datasets
from nbclient import NotebookClient
from test_setup_cells import notebook_setup  # scripts/notebook_setup.py, the setup cell's generator

import sslkit
from sslkit import data

ROOT = Path(__file__).resolve().parent.parent
# torchvision's names of Fashion-MNIST's files, in the order of FashionMNIST.resources
SERVED = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def site_files(tmp_path_factory) -> Path:
    """The four ``.gz`` files as Fashion-MNIST's site serves them, made from the files on this machine."""
    folder = tmp_path_factory.mktemp("fashion-mnist-site")
    found = data.locate("fashion-mnist", "train", download=False) + data.locate("fashion-mnist", "test", download=False)
    for stem, path in zip(SERVED, found, strict=True):
        assert path.name.startswith(stem), (stem, path)
        if path.suffix == ".gz":
            shutil.copyfile(path, folder / f"{stem}.gz")
        else:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(path.read_bytes()))
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Site:
    """An HTTP server on 127.0.0.1 serving ``folder``; ``requests`` lists the paths fetched (GET)."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                site.requests.append(self.path)
                super().do_GET()

            def log_message(self, format, *args):  # quiet: the test reads ``requests``
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(site_files):
    served = Site(site_files)
    yield served
    served.close()


def resources(folder: Path) -> list[tuple[str, str]]:
    """torchvision's ``(file name, md5)`` list for the files ``folder`` serves."""
    return [(f"{stem}.gz", md5(folder / f"{stem}.gz")) for stem in SERVED]


@pytest.fixture
def colab_machine(tmp_path, monkeypatch):
    """What the loader sees on Colab: no Debian package, no data in the working directory or the
    repository, no $SSLKIT_DATA; downloads go to this test's own ``data/``."""
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "repository" / "data")
    monkeypatch.delenv("SSLKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "repository" / "data"


def test_torchvision_downloads_fashion_mnist_and_checks_it(site, site_files, colab_machine, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [site.url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources(site_files))
    images, labels = data.load_fashion_mnist("test")
    assert set(site.requests) == {f"/{stem}.gz" for stem in SERVED}  # all four (torchvision asks twice)
    fetched = len(site.requests)
    assert sorted(p.name for p in (colab_machine / "FashionMNIST" / "raw").glob("*-ubyte")) == sorted(SERVED)
    expected_images, expected_labels = data.load_dataset("fashion-mnist", "test", download=False)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert images.shape == (10_000, 28, 28) and labels.bincount().tolist() == [1000] * 10
    data.load_fashion_mnist("train")  # the files are there now: nothing more is fetched
    assert len(site.requests) == fetched


def test_a_corrupted_download_is_refused_with_both_ways_to_get_the_data(site, site_files, colab_machine, monkeypatch):
    wrong = [(name, "0" * 32) for name, _ in resources(site_files)]  # no file has this md5
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [site.url])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", wrong)
    with pytest.raises(data.DataNotFoundError) as raised:
        data.load_fashion_mnist("train")
    message = str(raised.value)
    assert "torchvision could not download it (RuntimeError:" in message and "corrupted" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message  # way 1, offline
    assert "run again with network access" in message and str(colab_machine) in message  # way 2, online
    assert str(data.DEBIAN_DATA_DIR) in message  # where it looked


def test_no_network_is_a_clear_error(site_files, colab_machine, monkeypatch):
    closed = Site(site_files)
    closed.close()  # a port nobody listens on any more
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [closed.url])
    with pytest.raises(data.DataNotFoundError, match=r"could not download it \(RuntimeError: Error downloading"):
        data.load_fashion_mnist("test")


# ------------------------------------------------------------------------ the setup cell, on Colab


def test_without_an_address_the_setup_cell_on_colab_says_what_to_set(monkeypatch):
    cell = notebook_setup().setup_cell("", "main")
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    with pytest.raises(RuntimeError, match=r"Set `repository` \(and `branch`\) under \[tool.sslkit\] in pyproject"):
        exec(compile(cell, "setup cell", "exec"), {})


FAKE_COLAB = '''"""A stand-in for Colab's module: Colab imports it into every kernel, and its network reaches
Fashion-MNIST's site, which here is a server on 127.0.0.1."""
import torchvision.datasets

torchvision.datasets.FashionMNIST.mirrors = [{url!r}]
torchvision.datasets.FashionMNIST.resources = {resources!r}
'''

# Cells put after the setup cell: Colab has no Debian package (this machine does), and the checks.
NO_DEBIAN_PACKAGE = """\
import pathlib

import sslkit.data

sslkit.data.DEBIAN_DATA_DIR = pathlib.Path("/no-debian-package-on-colab")"""

FROM_THE_CLONE = """\
import pathlib

import sslkit
import sslkit.weights

clone = pathlib.Path("sslkit-repo").resolve()
assert pathlib.Path(sslkit.__file__).resolve().is_relative_to(clone), sslkit.__file__
assert sslkit.weights.weights_dir().resolve() == clone / "weights", sslkit.weights.weights_dir()
print("sslkit from", pathlib.Path(sslkit.__file__).parent)"""


def colab_python(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (PyTorch is preinstalled on Colab) but
    not its sslkit: site-packages are added as plain paths, so their .pth hooks (the editable install
    of this checkout) stay off."""
    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "preinstalled.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    ".*_cache",
    ".ipynb_checkpoints",
    "checkpoints",
    "logs",
    "screenshots",
    "*.ckpt",
    "*.tmp",
    "*.lock",
)  # .gitignore's patterns, for a checkout that is not a git repository


def checkout_files() -> list[str]:
    """The checkout's files that a commit of it would hold (tracked and new; not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode == 0:
        return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]
    names = []
    for directory, folders, files in os.walk(ROOT):
        folders[:] = [f for f in folders if f not in IGNORED(directory, folders)]
        names += [os.path.relpath(Path(directory, f), ROOT) for f in files if f not in IGNORED(directory, files)]
    return [name for name in names if not name.startswith("data/") or name == "data/README.md"]


def repository_clone_source(folder: Path) -> str:
    """A git repository of this checkout's files, on branch main, as a file:// URL."""
    for name in checkout_files():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    git = [
        "git",
        "-c",
        "user.name=colab-test",
        "-c",
        "user.email=colab-test@localhost",
        "-c",
        "init.defaultBranch=main",
    ]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the checkout under test"]):
        subprocess.run(git + command, cwd=folder, check=True)
    return folder.as_uri()


def test_a_notebook_runs_on_simulated_colab_from_its_setup_cell(site, site_files, tmp_path, monkeypatch):
    origin = tmp_path / "origin"
    origin.mkdir()
    url = repository_clone_source(origin)
    python = colab_python(tmp_path / "colab-python")

    fake = tmp_path / "colab-modules" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_COLAB.format(url=site.url, resources=resources(site_files)))
    kernels = tmp_path / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        + ["--IPKernelApp.exec_lines=import google.colab"],
        "display_name": "Colab (simulated)",
        "language": "python",
        # Colab's pip reaches PyPI; here nothing may be fetched: build with the installed setuptools.
        "env": {"PYTHONPATH": str(tmp_path / "colab-modules"), "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"},
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("SSLKIT_DATA", "SSLKIT_WEIGHTS", "SSLKIT_PRETRAIN", "PYTHONPATH", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)
    content = tmp_path / "content"  # Colab's working directory
    content.mkdir()

    notebook = nbformat.read(ROOT / "notebooks" / "05_dcl.ipynb", as_version=4)
    setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
    setup.source = notebook_setup().setup_cell(url, "main")  # the generated cell, with the clone's address
    index = notebook.cells.index(setup)
    notebook.cells[index + 1 : index + 1] = [
        nbformat.v4.new_code_cell(NO_DEBIAN_PACKAGE),
        nbformat.v4.new_code_cell(FROM_THE_CLONE),
    ]
    notebook.cells.append(nbformat.v4.new_code_cell(setup.source))  # running the setup cell again is safe
    client = NotebookClient(notebook, timeout=900, kernel_name="colab", resources={"metadata": {"path": str(content)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    clone = (content / "sslkit-repo").resolve()
    assert (clone / ".git").is_dir() and (clone / "sslkit" / "__init__.py").is_file()
    printed = [output_text(cell) for cell in notebook.cells]
    assert f"sslkit from {clone / 'sslkit'}" in printed[index + 2]
    expected = f"sslkit {sslkit.__version__} from {clone / 'sslkit'}, torch {torch.__version__}"
    assert expected in printed[index] and expected in printed[-1] and "PRETRAIN=False" in printed[-1]
    assert set(site.requests) == {f"/{stem}.gz" for stem in SERVED}  # the four files, over HTTP
    assert sorted(p.name for p in (clone / "data" / "FashionMNIST" / "raw").glob("*-ubyte")) == sorted(SERVED)
    # The environment of this checkout still imports its own sslkit.
    here = subprocess.run(
        [sys.executable, "-c", "import sslkit; print(sslkit.__file__)"], capture_output=True, text=True
    )
    assert Path(here.stdout.strip()).resolve().is_relative_to(ROOT), here


def output_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))
