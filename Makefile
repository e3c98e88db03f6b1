# normcore: the two README commands are `make run` and `make test`.
# Each creates a local virtualenv in .venv on first use and installs only what it needs;
# a stamp file per requirements set makes the next call start at once.
#
# CPU-only torch on a machine without a local wheel: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make run

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.stamp-run
DEV_STAMP := $(VENV)/.stamp-dev
CHROMIUM := /usr/bin/chromium

# Where the dashboard listens; override from the environment, e.g. `ADDRESS=0.0.0.0 make run`.
ADDRESS ?= localhost
PORT ?= 8501

.PHONY: venv run test lint chromium demo

venv: $(DEV_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

$(DEV_STAMP): requirements-dev.txt requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps -e .
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) serve.py --server.headless true \
		--server.address $(ADDRESS) --server.port $(PORT)

# Playwright drives Debian's chromium: its own browser download is not available here.
# The browser tests need it and fail without it, so `make test` stops first with the fix.
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; \
	else \
		echo "make test: $(CHROMIUM) is missing and only root can install it;" \
			"run 'sudo apt-get install chromium' (or 'sudo make chromium'), then 'make test'." >&2; \
		exit 1; \
	fi

test: $(DEV_STAMP) chromium
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

# Refit the bundled demo model on assets/demo/fcon1000_train.csv (about 4 minutes).
demo: $(RUN_STAMP)
	$(PY) -m normcore.demo
