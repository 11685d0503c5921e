# smallfirst: `make run` sets everything up, ingests the sample docs and serves http://127.0.0.1:8000;
# `make test` type-checks the package and runs the whole suite on the real components;
# `make test-fast` only the pure tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python builds from source: skip the parts we never load (multimodal, tools, examples).
# The CPU kernels are AVX2/FMA/F16C, not -march=native: a native build on a CPU with AVX-512 and AMX
# (Sapphire Rapids) segfaults in its first llama_decode, and a portable build runs on any x86-64 of
# the last decade. pip caches built wheels by source URL alone, whatever CMAKE_ARGS said, so the
# wheel is built into a folder of its own, named after the flags.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_WHEELS := $(HOME)/.cache/smallfirst/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test test-fast typecheck bench image clean llama-wheel

install: $(STAMP)

llama-wheel:  # builds the llama-cpp-python wheel once per set of flags; prints its path
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(or $(wildcard $(BIN)/python),$(PYTHON)) -m pip wheel --quiet --no-deps --no-cache-dir \
			-w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION) >&2
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch; installed first so nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$($(MAKE) -s llama-wheel)"
	$(BIN)/python -m pip install --quiet -e '.[dev,distill]'
	# The int8 ONNX copy of the embedding model, made once per machine (see retrieval/onnx_export.py).
	$(BIN)/python -m smallfirst.retrieval.onnx_export
	touch $(STAMP)

run: install
	$(BIN)/smallfirst ingest docs
	$(BIN)/smallfirst serve

test: install typecheck
	$(BIN)/python -m pytest -ra --durations=15

typecheck: install  # mypy --strict over the installed namespace (configured in pyproject.toml)
	$(BIN)/python -m mypy

test-fast: install  # the tests not marked slow: no model, no server or subprocess; seconds, while editing
	$(BIN)/python -m pytest -m "not slow" -q

# The measuring scripts alone: bench/ also holds the QA sets' tool, the scripts that refit the shipped
# answer models and the screenshot, which take arguments or write into the tree.
BENCHES := $(wildcard bench/*_bench.py) bench/first_token.py

bench: install
	@set -e; for script in $(BENCHES); do echo "== $$script"; $(BIN)/python "$$script"; done

image:  # the Docker image compose.yaml runs (see docs/deployment.md)
	docker build -t smallfirst:0.1.0 .

clean:
	rm -rf $(VENV) .pytest_cache
