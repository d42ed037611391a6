"""The series as a reader meets it: JupyterLab in a real browser (Chromium driven by Playwright).

For every notebook: start JupyterLab the way ``make lab`` does (headless, on a free loopback port,
with a temporary token), open the notebook, run all cells in skip mode, and check what a reader
sees: no error output, every figure rendered as an image, each ipywidgets explorer rendered as a
live control whose output changes when its slider moves, and the kernel idle at the end. A
screenshot of each notebook is saved under ``e2e/screenshots/`` (ignored by git).

Run alone with ``make test-browser``. Needs Chromium (Debian package ``chromium``) and the
``playwright`` Python package; the browser never reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RUN_TIMEOUT_MS = 15 * 60 * 1000

MAX_OUTPUT_LINES = 40  # more than this is a wall of text a reader scrolls past
MIN_FIGURE_SCALE = 0.75  # a figure shown below 3/4 of its size has text too small to read
FIRST_CELL_SECONDS = 60  # the first cell (imports, data, weights) must not keep a reader waiting

try:
    import playwright.sync_api as playwright_api
except ImportError:
    pytest.fail(
        "The playwright package is not installed: pip install -r requirements.txt (make setup does it)", pytrace=False
    )
if CHROMIUM is None:
    pytest.fail(
        "Chromium is not installed: apt-get install chromium (make test-browser does it as root)", pytrace=False
    )


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 with a fresh token; stopped (its whole process group) at the end."""
    settings = tmp_path_factory.mktemp("lab-settings")
    # Render every cell (no virtual scrolling), so the checks see the whole notebook; no news pop-up.
    for name, value in {
        "notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        # Never write the committed notebooks: the test runs them and throws the outputs away.
        "docmanager-extension/plugin": {"autosave": False},
    }.items():
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = free_loopback_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "notebooks/",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp_path_factory.mktemp('ws')}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp_path_factory.mktemp("lab-log") / "server.log", "w")
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with status {server.returncode}; see {log.name}", pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start within 120 s; see {log.name}", pytrace=False)
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def only_loopback(route):
    """Requests to anything but 127.0.0.1 are aborted: the test never reaches beyond loopback."""
    host = urlparse(route.request.url).hostname
    if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()


# Text outputs whose lines the browser wraps (more rendered line boxes than printed lines): a reader
# then sees a number cut in two. Gives the start of each such output.
WRAPPED_LINES = """els => els.filter(e => {
    const range = document.createRange();
    range.selectNodeContents(e);
    const rendered = new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size;
    return rendered > e.innerText.replace(/\\n$/, "").split("\\n").length;
}).map(e => e.innerText.slice(0, 100))"""


def committed_outputs(name: str) -> list[dict]:
    notebook = json.loads((REPO / "notebooks" / name).read_text())
    return [
        output.get("data", {})
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    ]


def committed_figures(name: str) -> int:
    """Figures in the committed notebook's outputs, outside widgets (which have no saved outputs here)."""
    return sum("image/png" in data for data in committed_outputs(name))


def committed_explorers(name: str) -> int:
    """ipywidgets explorers (interact) in the committed notebook; progress bars are widgets too, not counted."""
    return sum(
        "application/vnd.jupyter.widget-view+json" in data
        and "".join(data.get("text/plain", "")).startswith("interactive(")
        for data in committed_outputs(name)
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(jupyterlab, browser, name):
    base, token = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.route("**/*", only_loopback)
    try:
        # A workspace of its own, reset: no tabs of earlier notebooks restored beside this one.
        page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        select_kernel = page.locator(".jp-Dialog button:has-text('Select')")
        try:  # a fresh JupyterLab may ask which kernel to start: the notebook's own (python3)
            select_kernel.click(timeout=10_000)
        except playwright_api.TimeoutError:
            pass
        idle = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
        page.wait_for_selector(idle, timeout=120_000)
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        started = time.monotonic()
        page.wait_for_function(
            "() => /^\\[\\d+\\]:$/.test(document.querySelector('.jp-CodeCell .jp-InputPrompt').textContent.trim())",
            timeout=FIRST_CELL_SECONDS * 1000,
        )
        first_cell_seconds = time.monotonic() - started
        page.wait_for_function(  # every code cell has run: no "[*]" or "[ ]" prompt left
            """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                       .every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()))""",
            timeout=RUN_TIMEOUT_MS,
        )
        page.wait_for_selector(idle, timeout=60_000)

        errors = page.eval_on_selector_all(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
            "els => els.map(e => e.textContent.slice(0, 500))",
        )
        assert errors == [], f"{name}: error output in the browser: {errors}"

        images = page.eval_on_selector_all(
            ".jp-RenderedImage img", "els => els.map(e => [e.naturalWidth, e.clientWidth])"
        )
        assert len(images) >= committed_figures(name), f"{name}: {len(images)} figures rendered"
        assert all(natural > 0 for natural, _ in images), f"{name}: a figure did not render"
        shrunk = [(natural, shown) for natural, shown in images if shown < MIN_FIGURE_SCALE * natural]
        assert shrunk == [], f"{name}: figures too wide for the window, shown at (natural, shown) px {shrunk}"

        lines = page.eval_on_selector_all(
            ".jp-OutputArea-output pre", "els => els.map(e => e.innerText.split('\\n').length)"
        )
        assert max(lines, default=0) <= MAX_OUTPUT_LINES, f"{name}: an output of {max(lines)} lines"
        wrapped = page.eval_on_selector_all(".jp-OutputArea-output pre", WRAPPED_LINES)
        assert wrapped == [], f"{name}: printed lines too long for the window, they wrap: {wrapped}"

        # Each explorer is a live control, not "Error displaying widget" or the raw-text fallback.
        assert page.locator("text=Error displaying widget").count() == 0, f"{name}: a widget failed to render"
        explorers = page.locator(".jp-OutputArea .widget-interact").count()
        expected = committed_explorers(name)
        assert explorers >= expected, f"{name}: {explorers} live widgets, the notebook has {expected}"
        sliders = page.locator(".jp-OutputArea .widget-slider .noUi-handle, .jp-OutputArea .slider-container input")
        for index in range(sliders.count()):
            widget = sliders.nth(index).locator("xpath=ancestor::div[contains(@class, 'widget-interact')]")
            before = widget.locator("img").first.get_attribute("src")
            sliders.nth(index).focus()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "([el, old]) => { const img = el.querySelector('img'); return img && img.src !== old; }",
                arg=[widget.element_handle(), before],
                timeout=60_000,
            )
        page.wait_for_selector(idle, timeout=60_000)
        print(
            f"{name}: first cell {first_cell_seconds:.1f} s, {len(images)} figures, {explorers} widgets, "
            f"longest output {max(lines, default=0)} lines"
        )
    finally:
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{Path(name).stem}.png"))
        page.close()
