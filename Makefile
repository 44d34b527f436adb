# One-word entry points. The two the README's quick start uses:
#   make repro   set up .venv (if needed) and run the whole pipeline on the embedded default data
#   make test    set up .venv (if needed) and run the test suite (what CI runs)

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The cluster extra (dask, s3fs, gcsfs) and the S3 test server: what the test suite needs too.
CLUSTER_STAMP := $(VENV)/.installed-cluster
# Stage commands (synth, pretrain, evaluate, dvc) come from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup setup-cluster lock repro compare paper gpu test test-slow lint format bench clean

setup: $(STAMP)

# Installs exactly requirements.lock (every package, transitive, with hashes; torch/torchvision
# are the pinned builds the machines carry), then the project itself without resolving anything.
# Re-installs when the lock or pyproject.toml changes.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# requirements-cluster.lock is a superset of requirements.lock with the same pins for every package
# both hold (tests/test_locks.py), so it adds the extra without moving a render-affecting version.
setup-cluster: $(CLUSTER_STAMP)

$(CLUSTER_STAMP): $(STAMP) requirements-cluster.lock
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements-cluster.lock
	touch $(CLUSTER_STAMP)

# Refresh the locks on purpose: every package to its newest release that pyproject.toml allows.
# Render-affecting versions move the shards' bytes: re-run `make repro` and commit dvc.lock too.
# The full lock is resolved first; the core lock takes its pins as constraints.
PIPTOOLS := pip-tools==7.7.0
LOCKFLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --build-deps-for editable
lock:
	test -x .lock-venv/bin/pip-compile || \
		{ python3 -m venv .lock-venv && .lock-venv/bin/pip install -q "$(PIPTOOLS)"; }
	.lock-venv/bin/pip-compile -q --upgrade --extra dev --extra cluster --extra test-cluster \
		$(LOCKFLAGS) \
		-o requirements-cluster.lock pyproject.toml
	.lock-venv/bin/pip-compile -q --extra dev -c requirements-cluster.lock $(LOCKFLAGS) \
		-o requirements.lock pyproject.toml

repro: setup
	dvc repro

# The paper's comparison with pretraining-seed error bars (params.yaml `compare`; ~75 min on 2
# cores): reports/compare.json and compare.md. `make compare ARGS=--resume` keeps finished runs.
compare: setup
	dvc repro render
	$(PY) -m eval.compare $(ARGS)

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

# The quick suite: everything but the tests marked slow (GPU tests skip themselves without CUDA).
test: setup-cluster
	$(PY) -m pytest -q -m "not slow"

# The slow tests (whole small pipelines, DDP, the render check against dvc.lock). CI runs both.
test-slow: setup-cluster
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup-cluster
	$(PY) bench/demo_data.py
	$(PY) bench/render.py
	$(PY) bench/train_step.py
	$(PY) bench/finetune.py
	test -f data/shards/manifest.json || dvc repro render
	$(PY) bench/shard_check.py
	$(PY) bench/fault_soak.py
	$(PY) bench/cluster.py

clean:
	rm -rf .pytest_cache .ruff_cache gpu_out
