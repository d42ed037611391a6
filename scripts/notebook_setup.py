"""Write every notebook's first cell and the README's Colab badges from one place: pyproject.toml.

Where the project lives (its git repository and branch) is set once, under ``[tool.sslkit]`` in
pyproject.toml. A fork changes that line and runs ``make setup-cells``; this script then writes

- the same setup cell at the top of every notebook in ``notebooks/``: on Colab it clones the
  repository, installs sslkit and imports it from the clone; in Jupyter it does nothing but import;
- the README's row of "Open in Colab" badges, between its two ``colab-badges`` markers.

While ``repository`` is empty (the project has no public address yet), the README says what to set
and the cell, run on Colab, stops with the same advice instead of a git error.

    python scripts/notebook_setup.py            # write the cells and the badges
    python scripts/notebook_setup.py --check    # exit 1 and name every file that differs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CLONE_DIR = "sslkit-repo"  # where the cell clones to, in Colab's working directory
BADGES_START, BADGES_END = "<!-- colab-badges: written by `make setup-cells` -->", "<!-- /colab-badges -->"
GITHUB = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<name>[\w.-]+?)(?:\.git)?/?$")

SETUP_CELL = """\
# NBVAL_IGNORE_OUTPUT
# (versions and device differ between machines)
# Setup, written by `make setup-cells` from pyproject.toml's [tool.sslkit]: change it there.
# On Colab: clone the repository and install sslkit (once; running the cell again is safe).
# In Jupyter, started from the repository: nothing to fetch.
import os
import sys

REPOSITORY, BRANCH = {repository}, {branch}
if "google.colab" in sys.modules:
    if not REPOSITORY:
        raise RuntimeError(
            "This copy of sslkit does not say where it is published, so Colab cannot fetch it. Set "
            "`repository` (and `branch`) under [tool.sslkit] in pyproject.toml to the GitHub URL of your "
            "copy and run `make setup-cells`, or open the notebook in Jupyter from a clone (README, Set-up)."
        )
    if not os.path.isdir("{clone}"):
        import shutil
        import subprocess

        subprocess.run(["git", "clone", "--depth", "1", "--branch", BRANCH, REPOSITORY, "{clone}"], check=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{clone}"], check=True)
        except subprocess.CalledProcessError:
            shutil.rmtree("{clone}")  # so that running the cell again starts over
            raise
    if os.path.abspath("{clone}") not in sys.path:
        sys.path.insert(0, os.path.abspath("{clone}"))

import sslkit.notebook

# PRETRAIN = False uses the shipped weights and the stored results; set SSLKIT_PRETRAIN=1 (or edit
# the returned value) to train and measure again.
device, PRETRAIN = sslkit.notebook.setup(seed=0)"""


def project_location(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str]:
    """``(repository, branch)`` from ``[tool.sslkit]``; the repository is "" while the project has no address."""
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("sslkit", {})
    repository, branch = table.get("repository"), table.get("branch")
    if not isinstance(repository, str) or not isinstance(branch, str) or not branch:
        raise SystemExit(f'{pyproject}: [tool.sslkit] needs `repository` (a git URL, or "") and `branch`')
    if repository and not (GITHUB.match(repository) or repository.startswith("file://")):
        raise SystemExit(
            f"{pyproject}: repository = {repository!r} is not a GitHub URL (https://github.com/OWNER/NAME); "
            "Colab opens notebooks from GitHub"
        )
    return repository, branch


def setup_cell(repository: str, branch: str) -> str:
    return SETUP_CELL.format(repository=json.dumps(repository), branch=json.dumps(branch), clone=CLONE_DIR)


def badge_block(repository: str, branch: str, notebooks: list[Path]) -> str:
    """The README's lines between the markers: a badge per notebook, or what to set while there is no address."""
    match = GITHUB.match(repository)
    if not match:
        body = (
            "Colab: this copy of the series does not yet say where it is published. Set `repository` under\n"
            "`[tool.sslkit]` in `pyproject.toml` to the GitHub URL of your copy (and `branch`), then run\n"
            '`make setup-cells`: an "Open in Colab" badge per notebook appears here, and every notebook\'s\n'
            "first cell clones that repository on Colab."
        )
    else:
        base = f"https://colab.research.google.com/github/{match['owner']}/{match['name']}/blob/{branch}/notebooks"
        body = "\n".join(
            f"[![Open {path.stem} in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({base}/{path.name})"
            for path in notebooks
        )
    return f"{BADGES_START}\n{body}\n{BADGES_END}"


def with_setup_cell(notebook_text: str, cell: str) -> str:
    """The notebook's JSON with its first code cell's source replaced by ``cell`` (outputs kept)."""
    notebook = json.loads(notebook_text)
    first = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    first["source"] = cell.splitlines(keepends=True)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def with_badges(readme: str, block: str) -> str:
    pattern = re.compile(re.escape(BADGES_START) + r".*?" + re.escape(BADGES_END), re.DOTALL)
    if len(pattern.findall(readme)) != 1:
        raise SystemExit(f"README.md must hold the badge markers once:\n{BADGES_START}\n{BADGES_END}")
    return pattern.sub(lambda _: block, readme)


def generated_files(root: Path = ROOT) -> dict[Path, str]:
    """Every file this script writes, with the text it should have."""
    repository, branch = project_location(root / "pyproject.toml")
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    cell = setup_cell(repository, branch)
    files = {path: with_setup_cell(path.read_text(), cell) for path in notebooks}
    readme = root / "README.md"
    files[readme] = with_badges(readme.read_text(), badge_block(repository, branch, notebooks))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = {path: text for path, text in generated_files().items() if path.read_text() != text}
    for path, text in stale.items():
        if args.check:
            print(f"{path.relative_to(ROOT)} differs from what `make setup-cells` writes")
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
