"""The project's address is written once (pyproject.toml's [tool.sslkit]); every notebook's first cell
and the README's Colab badges are generated from it by scripts/notebook_setup.py (`make setup-cells`)."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sslkit

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def notebook_setup():
    spec = importlib.util.spec_from_file_location("notebook_setup", ROOT / "scripts" / "notebook_setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def copy_of_the_project(folder: Path, repository: str) -> Path:
    """pyproject.toml (with ``repository`` set), README.md and the notebooks, in ``folder``."""
    shutil.copytree(ROOT / "notebooks", folder / "notebooks")
    shutil.copy(ROOT / "README.md", folder / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    changed = re.sub(r'(?m)^repository = "[^"]*"', f'repository = "{repository}"', pyproject)
    assert changed != pyproject or f'repository = "{repository}"' in pyproject
    (folder / "pyproject.toml").write_text(changed)
    return folder


def test_every_notebook_and_the_readme_are_as_generated():
    stale = [
        path.relative_to(ROOT) for path, text in notebook_setup().generated_files().items() if path.read_text() != text
    ]
    assert not stale, f"{stale} differ from what `make setup-cells` writes: run it and commit the result"


def test_the_check_command_fails_on_a_notebook_whose_setup_cell_was_edited(tmp_path):
    module = notebook_setup()
    project = copy_of_the_project(tmp_path, "")
    for path, text in module.generated_files(project).items():
        path.write_text(text)
    assert all(path.read_text() == text for path, text in module.generated_files(project).items())
    edited = project / "notebooks" / NOTEBOOKS[3].name
    notebook = json.loads(edited.read_text())
    cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    cell["source"] = [line.replace('"main"', '"dev"') for line in cell["source"]]  # a hand edit
    edited.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    stale = [path for path, text in module.generated_files(project).items() if path.read_text() != text]
    assert stale == [edited]


def test_the_address_appears_in_no_notebook_except_through_the_generated_cell():
    repository, _ = notebook_setup().project_location()
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        rest = "".join("".join(cell["source"]) for cell in cells[1:] if cell["cell_type"] == "code")
        assert "git clone" not in rest and "github.com" not in rest.lower(), path.name
        assert "REPOSITORY" in first_code_cell(path) and (not repository or repository not in rest), path.name


def test_a_fork_sets_one_line_and_gets_its_address_in_every_cell_and_badge(tmp_path):
    module = notebook_setup()
    project = copy_of_the_project(tmp_path, "https://github.com/alice/ssl-course")
    files = module.generated_files(project)
    for path in sorted(project.glob("notebooks/*.ipynb")):
        cell = "".join(next(c for c in json.loads(files[path])["cells"] if c["cell_type"] == "code")["source"])
        assert 'REPOSITORY, BRANCH = "https://github.com/alice/ssl-course", "main"' in cell
        assert cell.count("alice") == 1
    readme = files[project / "README.md"]
    links = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", readme)
    base = "https://colab.research.google.com/github/alice/ssl-course/blob/main/notebooks"
    expected = [f"{base}/{path.name}" for path in NOTEBOOKS]
    assert links == expected
    assert "does not yet say where it is published" not in readme


def test_without_an_address_the_readme_says_what_to_set():
    repository, _ = notebook_setup().project_location()
    readme = (ROOT / "README.md").read_text()
    if repository:  # the project is published: a badge per notebook
        assert readme.count("colab-badge.svg") == len(NOTEBOOKS)
    else:
        assert "colab-badge.svg" not in readme
        assert "Set `repository` under\n`[tool.sslkit]` in `pyproject.toml`" in readme


@pytest.mark.parametrize(
    "repository, message",
    [
        ("https://gitlab.com/alice/sslkit", "is not a GitHub URL"),
        ("github.com/alice/sslkit", "is not a GitHub URL"),
    ],
)
def test_an_address_colab_cannot_open_is_refused(tmp_path, repository, message):
    project = copy_of_the_project(tmp_path, repository)
    with pytest.raises(SystemExit, match=message):
        notebook_setup().project_location(project / "pyproject.toml")


def test_outside_colab_the_cell_fetches_nothing_and_names_what_it_uses(tmp_path):
    cell = notebook_setup().setup_cell("https://github.com/alice/ssl-course", "main")
    ran = subprocess.run([sys.executable, "-c", cell], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "sslkit-repo").exists()
    assert f"sslkit {sslkit.__version__} from {Path(sslkit.__file__).parent}, torch {torch.__version__}" in ran.stdout
    assert "PRETRAIN=False" in ran.stdout
