"""What every notebook's text must have: prose short enough to read in one sitting, and, in each
technique notebook, a "Key takeaways" section before the exercises."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PROSE_LIMIT = 3000  # words of prose per notebook
TECHNIQUES = [path for path in NOTEBOOKS if re.match(r"0[1-7]_", path.name)]


def markdown_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]


def prose_words(path: Path) -> int:
    """Words of the notebook's markdown, without display maths and code blocks."""
    text = "\n".join(markdown_cells(path))
    text = re.sub(r"\$\$.*?\$\$|```.*?```", " ", text, flags=re.S)
    return len(re.findall(r"[A-Za-z][A-Za-z'’-]*", text))


def headings(path: Path) -> list[str]:
    return [line[3:] for cell in markdown_cells(path) for line in cell.splitlines() if line.startswith("## ")]


def test_the_word_count_counts_prose_and_leaves_out_maths_and_code(tmp_path):
    notebook = tmp_path / "n.ipynb"
    source = "Two words.\n$$\\mathcal{L} = x + y$$\n```python\nprint('hidden text')\n```\nand $x$ three"
    cells = [{"cell_type": "markdown", "source": [source]}, {"cell_type": "code", "source": ["not prose"]}]
    notebook.write_text(json.dumps({"cells": cells}))
    assert prose_words(notebook) == 5  # Two, words, and, x, three


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_notebook_has_at_most_3000_words_of_prose(path):
    assert prose_words(path) <= PROSE_LIMIT, f"{path.name}: {prose_words(path)} words of prose"


@pytest.mark.parametrize("path", TECHNIQUES, ids=lambda path: path.stem)
def test_each_technique_notebook_ends_with_its_key_takeaways_before_the_exercises(path):
    names = headings(path)
    takeaways = [i for i, name in enumerate(names) if name.lower().endswith("key takeaways")]
    exercises = [i for i, name in enumerate(names) if "what to try next" in name.lower()]
    assert takeaways and exercises and takeaways[0] < exercises[0], names
