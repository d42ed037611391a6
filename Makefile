# The commands of the README:
#   make lab           set everything up and open the series in JupyterLab
#   make test          set everything up, check the code with ruff, run the unit tests and the notebooks (pytest --nbval)
#   make test-browser  every notebook in JupyterLab in Chromium (CI runs it after make test)
# Other targets: make setup | data | chromium | notebooks | setup-cells | lint | bench | results | clean
# TORCH=keep (any target): keep the torch and torchvision already in .venv (e.g. PyTorch's CPU-only
# builds) instead of installing requirements.txt's pinned ones.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: lab test test-browser chromium setup data notebooks setup-cells lint bench results clean

# JupyterLab refuses to run as root unless told to (containers, Colab-like machines).
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: setup data
	$(BIN)/jupyter lab notebooks/ $(ALLOW_ROOT)

# A cell still running after 10 minutes is a hung kernel: fail it rather than wait nbval's default 33.
test: setup data lint
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-cell-timeout=600 -p no:cacheprovider tests notebooks

# The notebooks in a real browser: JupyterLab + Chromium (Playwright), screenshots in e2e/screenshots/.
test-browser: setup data chromium
	$(BIN)/python -m pytest -p no:cacheprovider e2e

chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "Chromium: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "Chromium is needed for the browser test: sudo apt-get install chromium"; exit 1; \
	fi

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python 3.10 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "Could not create a virtual environment: install it with 'sudo apt-get install python3-venv'"; exit 1; }
ifeq ($(TORCH),keep)
	@$(BIN)/python -c 'import torch, torchvision' 2>/dev/null || { echo "TORCH=keep, but $(VENV) has no torch and \
torchvision to keep: install them first (README: A laptop without a GPU), or leave out TORCH=keep"; exit 1; }
endif
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(TORCH),keep)
	grep -vE '^(torch|torchvision)==' requirements.txt > $(VENV)/requirements-keeping-torch.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements-keeping-torch.txt
else
	$(BIN)/python -m pip install --quiet -r requirements.txt
endif
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Fashion-MNIST: already there, or the Debian package when we may run apt-get, or say what to do.
data:
	@if ls $(DATA_DIR)/*-ubyte.gz >/dev/null 2>&1 || ls data/*-ubyte.gz >/dev/null 2>&1 \
		|| ls data/FashionMNIST/raw/*-ubyte* >/dev/null 2>&1 || [ -n "$$SSLKIT_DATA" ]; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is not installed. Either run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu),"; \
		echo "or let torchvision download it: $(BIN)/python -c 'import sslkit.data as d; d.load_fashion_mnist(\"train\"); d.load_fashion_mnist(\"test\")'"; \
	fi

# Re-execute the notebooks in skip mode and save their outputs (commit them after this).
notebooks: setup data
	SSLKIT_SAVE_FIGURES=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 notebooks/*.ipynb

# Every notebook's first cell and the README's Colab badges, from pyproject.toml's [tool.sslkit].
setup-cells: setup
	$(BIN)/python scripts/notebook_setup.py

# ruff's rules and formatting (pyproject.toml), on the code; the notebooks are checked by running them.
lint: setup
	$(BIN)/ruff check sslkit tests e2e scripts
	$(BIN)/ruff format --check sslkit tests e2e scripts

bench: setup data
	$(BIN)/python -m sslkit bench

results: setup
	$(BIN)/python -m sslkit results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache sslkit.egg-info
