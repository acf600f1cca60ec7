# Everyday commands. `make test` and `make sanity` work from a fresh clone: they install first (quickly
# skipped once .venv is up to date).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# TORCH=cpu installs the CPU build (torch==$(TORCH_VERSION)+cpu: from a local wheel or an index given in
# TORCH_PIP_ARGS, never the multi-GB CUDA build); TORCH=gpu installs the registry's default (CUDA) build.
TORCH ?= cpu
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install test lint sanity default clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install torch, the requirements and the dev tools

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(TORCH)" = cpu ]; then spec="torch==$(TORCH_VERSION)+cpu"; else spec="torch==$(TORCH_VERSION)"; fi; \
	if $(PY) -c "import sys, torch; sys.exit(torch.__version__ != '$${spec#torch==}'.replace('==', ''))" 2>/dev/null; then \
	  echo "torch $${spec#torch==} already installed"; \
	else \
	  $(PY) -m pip install --quiet "$$spec" $(TORCH_PIP_ARGS) || { \
	    echo "error: could not install $$spec. For the CPU build pass an index that has it, e.g." \
	         "make install TORCH_PIP_ARGS='--index-url <pytorch CPU wheel index> --extra-index-url <PyPI>'," \
	         "or use TORCH=gpu for the CUDA build" >&2; exit 1; }; \
	fi
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

test: install ## run the test suite (CPU, offline)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff over the whole tree, shellcheck over the shell scripts (when installed)
	$(VENV)/bin/ruff check .
	@if command -v shellcheck >/dev/null; then shellcheck *.sh && echo "shellcheck: ok"; \
	else echo "shellcheck not installed: shell scripts not checked"; fi

default: install ## build the embedded default (tiny model, offline tokenizer, toy data) into the cache
	$(PY) -m rlhfkit.embedded

sanity: install ## the main job: the pipeline on the embedded default (log in ppo_pipeline_sanity.log)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash ppo_pipeline_sanity.sh

clean: ## remove the pipeline's outputs (keeps .venv)
	rm -rf runs ppo_pipeline_sanity.log
