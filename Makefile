# One-word entry points. The two the README's quick start uses:
#   make repro   set up .venv (if needed) and run the whole pipeline on the embedded default data
#   make test    set up .venv (if needed) and run the test suite (what CI runs)

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands (synth, pretrain, evaluate, dvc) come from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro paper gpu test test-all lint format bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; torch/torchvision come from the pinned wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

repro: setup
	dvc repro

# Real PIDray / SIXray at paper scale (resnet50, 25 epochs; a GPU in practice), as a DVC experiment:
#   make paper PIDRAY=/datasets/pidray SIXRAY=/datasets/sixray
paper: setup
	@test -n "$(PIDRAY)" -a -n "$(SIXRAY)" || \
		{ echo "usage: make paper PIDRAY=/path/to/pidray SIXRAY=/path/to/sixray" >&2; exit 2; }
	$(PY) -m segloc.paper --pidray "$(PIDRAY)" --sixray "$(SIXRAY)"

# The embedded default at GPU scale (configs/gpu.yaml) on one GPU: reports under gpu_out/reports/gpu.
# No setup step: bench/env.sh takes .venv, or the machine's own python with torch (GPU machines).
gpu:
	OUT=gpu_out bench/gpu_profile.sh

# The suite CI runs: everything except GPU tests (skipped by themselves without CUDA).
test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/demo_data.py
	$(PY) bench/render.py
	$(PY) bench/train_step.py
	$(PY) bench/finetune.py

clean:
	rm -rf .pytest_cache .ruff_cache gpu_out
