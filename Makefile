# Two commands for a newcomer: `make demo` and `make test`. Each creates or refreshes .venv and does everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Demo photos: these two wheels carry real images; their own dependencies are not needed (and foolbox is never imported).
DATA_WHEELS := ai-benchmark==0.1.2 foolbox==3.3.4
OUT ?= demo-report

.PHONY: demo test setup setup-dev bench clean

# PyTorch for the ONNX part of the demo and the torch tests: the CPU build, pinned (an unpinned torch pulls several GB
# of CUDA packages). MTCNN's weights come from facenet-pytorch, whose own pins (torch<2.3, numpy<2) must not be
# installed: --no-deps.
TORCH_CPU := torch==2.13.0
TORCH_WHEELS := facenet-pytorch==2.6.0

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_CPU)"
	$(PIP) install -q -e ".[demo,torch]"
	$(PIP) install -q --no-deps $(DATA_WHEELS) $(TORCH_WHEELS)
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.stamp-base
# The HTML report's browser test needs Debian's chromium: install it when missing (sudo only when not root).
setup-dev: $(VENV)/.stamp-dev
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
	  || echo "warning: could not install chromium; tests/report/test_browser.py will be skipped" >&2

demo: setup
	$(VENV)/bin/quantdoctor demo --out $(OUT)
	$(VENV)/bin/quantdoctor demo --runtime onnx --out $(OUT)/onnx

test: setup-dev
	$(PY) -m pytest -q

# The README's "Diagnose vs its floor" table with a profile per step, then peak memory on 100 vs 1,000 samples.
bench: setup-dev
	$(PY) benchmarks/diagnose_vs_debugger.py
	$(PY) benchmarks/memory_flat.py

clean:
	rm -rf $(VENV) $(OUT)
