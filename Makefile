# Two entry points, each self-installing on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; the package itself only asks for a range, so GPU users keep their own build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,tensorboard,parquet,ray]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/arlkit demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
