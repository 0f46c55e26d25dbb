# leankern: `make bench` (install, build, run the benchmark suite) and `make test` (install, build, test).
PY    ?= python3
PIP   := $(PY) -m pip
# torch==2.13.0 resolves to the local CPU build on our machines; an existing torch is never replaced.
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0
BENCH_ARGS ?=

.PHONY: all deps build test test-fast bench numerics info clean

all: test

deps:
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) install "$(TRITON_SPEC)"
	@$(PY) -c "import ninja, pybind11, numpy, pytest, hypothesis, safetensors" 2>/dev/null || \
		$(PIP) install ninja pybind11 numpy pytest hypothesis safetensors

build: deps
	MAX_JOBS=2 $(PIP) install --no-build-isolation --no-deps -e . 2>&1 | tail -n 2
	@$(PY) -c "import leankern, sys; e = leankern.extension_error(); print('leankern._C:', 'loaded' if e is None else e); sys.exit(e is not None)"

test: build
	cd tests && $(PY) -m pytest -q -ra -p no:cacheprovider --durations=30 .

test-fast: build
	cd tests && $(PY) -m pytest -q -x -m "not slow" .

# `leankern bench` with no BENCH_ARGS: a representative subset of every family, then the per-call overhead section
# (about 28 min on 2 cores: about 20, moe's 10 of them, plus about 8 for the Hugging Face end-to-end section hf_e2e
# when transformers is installed).
# BENCH_ARGS=--full: everything; --quick: smallest smoke subset; --family <section> (`leankern bench --help` lists
# them); --csv PATH --plot PATH (charts from the mx and moe sections only).
bench: build
	@$(PY) -c "import matplotlib, tqdm" 2>/dev/null || $(PIP) install matplotlib tqdm || true
	$(PY) -m leankern bench $(BENCH_ARGS)

numerics: build
	$(PY) -m leankern numerics --plot numerics_int_theory.png

info: build
	$(PY) -m leankern info

clean:
	rm -rf build *.egg-info python/*.egg-info python/leankern/_C*.so
