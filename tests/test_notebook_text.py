"""What every notebook's text must have: prose short enough to read in one sitting, in each technique
notebook a "Key takeaways" section before the exercises, and printed outputs and figures that fit the
reader's window."""

import base64
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PROSE_LIMIT = 3000  # words of prose per notebook
TECHNIQUES = [path for path in NOTEBOOKS if re.match(r"0[1-8]_", path.name)]


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


# What fits JupyterLab's output area in the browser test's 1400-pixel window (e2e/test_browser.py): a
# printed line of up to 119 characters shows unwrapped, a figure is shown at no less than 3/4 of its size
# when it is at most 1290 pixels wide. Checked here on the committed outputs, in seconds.
PRINTED_LINE_LIMIT = 119
FIGURE_WIDTH_LIMIT = 1290


def committed_outputs(path: Path) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [output for cell in cells if cell["cell_type"] == "code" for output in cell.get("outputs", [])]


def png_width(data: str) -> int:
    return int.from_bytes(base64.b64decode(data)[16:20], "big")  # the IHDR chunk's width


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_notebook_prints_lines_and_figures_that_fit_the_window(path):
    outputs = committed_outputs(path)
    printed = ["".join(output["text"]) for output in outputs if output.get("output_type") == "stream"]
    long_lines = [line[:60] for text in printed for line in text.splitlines() if len(line) > PRINTED_LINE_LIMIT]
    assert long_lines == [], f"{path.name}: printed lines longer than {PRINTED_LINE_LIMIT} characters wrap"
    widths = [png_width(output["data"]["image/png"]) for output in outputs if "image/png" in output.get("data", {})]
    assert all(width <= FIGURE_WIDTH_LIMIT for width in widths), f"{path.name}: figures {widths} px wide"


def test_the_width_check_reads_a_png_header():
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (1234).to_bytes(4, "big") + (56).to_bytes(4, "big")
    assert png_width(base64.b64encode(header).decode()) == 1234
