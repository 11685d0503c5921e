# smallfirst: `make run` sets everything up, ingests the sample docs and serves http://127.0.0.1:8000;
# `make test` runs the whole suite on the real components.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python builds from source: skip the parts we never load (multimodal, tools, examples).
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test bench image clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch; installed first so nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/smallfirst ingest docs
	$(BIN)/smallfirst serve

test: install
	$(BIN)/python -m pytest -ra

bench: install
	@set -e; found=0; for script in bench/*.py; do [ -f "$$script" ] || continue; found=1; $(BIN)/python "$$script"; done; \
	[ $$found = 1 ] || echo "no bench scripts yet"

image:  # the Docker image compose.yaml runs (see README, "Run with Docker Compose")
	docker build -t smallfirst:0.1.0 .

clean:
	rm -rf $(VENV) .pytest_cache
