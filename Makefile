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
# `make bench`: the whole suite on this machine's device (bench/run.py; results in bench/results/). E.g.
# BENCH_ARGS="--stages sft --repeats 5", "--device cuda", "--no_peers" (PPO without building the TRL 1.12 venv)
BENCH_ARGS ?=

# Intel Gaudi container (Dockerfile). The defaults match the Dockerfile's ARGs.
IMAGE ?= rlhfkit-gaudi
GAUDI_VERSION ?= 1.22.0
GAUDI_OS ?= ubuntu24.04
GAUDI_PYTORCH_VERSION ?= 2.7.1
WITH_OPTIMUM_HABANA ?= 0
# DOCKER_RUNTIME= (empty) runs on Docker's default runtime, e.g. a CPU-only smoke test of the image.
DOCKER_RUNTIME ?= habana
DOCKER_BUILD_ARGS ?=
# The container is removed on exit (--rm): DOCKER_RUN_ARGS="-v $PWD/runs:/workspace/trl/runs" keeps the outputs.
DOCKER_RUN_ARGS ?=
# CMD="./trl/ppo_pipeline_sanity.sh" runs a command in the container instead of an interactive shell.
CMD ?=
# HF_TOKEN (for gated models such as google/gemma-3-270m): `make run HF_TOKEN=<token>`, or export it. make
# puts it in the recipe's environment and docker copies it from there (`-e HF_TOKEN`, no value): it never
# appears on a command line, in make's output or in the image. Never expand it in a recipe.
REQUIRE_DOCKER = command -v docker >/dev/null || { echo "error: docker is not installed: make $@ needs the Docker CLI and daemon (https://docs.docker.com/engine/install/)" >&2; exit 1; }; \
	docker info >/dev/null 2>&1 || { echo "error: cannot reach the Docker daemon (docker info failed): start it, or check DOCKER_HOST and your permissions" >&2; exit 1; }

.PHONY: help install test test-fast lint sanity bench default clean build run hpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install torch, the requirements and the dev tools

# $(call install_torch,PYTHON): torch $(TORCH_VERSION) into PYTHON's environment unless there already (the CPU build
# unless TORCH=gpu)
define install_torch
if [ "$(TORCH)" = cpu ]; then spec="torch==$(TORCH_VERSION)+cpu"; else spec="torch==$(TORCH_VERSION)"; fi; \
if $(1) -c "import sys, torch; sys.exit(torch.__version__ != '$${spec#torch==}'.replace('==', ''))" 2>/dev/null; then \
  echo "torch $${spec#torch==} already installed"; \
else \
  $(1) -m pip install --quiet "$$spec" $(TORCH_PIP_ARGS) || { \
    echo "error: could not install $$spec. For the CPU build pass an index that has it, e.g." \
         "make install TORCH_PIP_ARGS='--index-url <pytorch CPU wheel index> --extra-index-url <PyPI>'," \
         "or use TORCH=gpu for the CUDA build" >&2; exit 1; }; \
fi
endef

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(call install_torch,$(PY))
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

# The suite in two parts. First every test that runs in one process, spread over one pytest-xdist worker per core
# (whole modules per worker, so that a module's training fixture runs once; tests/conftest.py gives each worker its
# share of threads). Then the tests that start several training processes (marked multiprocess), one at a time with
# every core: sharing the cores with another worker, an FSDP2 checkpoint save once crashed (SIGSEGV). Both parts
# build the embedded default once, in one cache for the run. TEST_JOBS=0: the first part in one process as well.
# Exit code 5 (nothing selected, e.g. a PYTEST_ARGS that names one file) is not a failure of either part.
TEST_JOBS ?= auto
test: install ## run the test suite (CPU, offline)
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache" "$$cache.lock"' EXIT && export RLHFKIT_TEST_CACHE="$$cache" && \
	{ $(PY) -m pytest -q -m "not multiprocess" -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; }; \
	$(PY) -m pytest -q -m multiprocess $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc

test-fast: install ## the quick lane: every test not marked slow (no training run, no subprocess), a few minutes
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff over the tree; shellcheck (shell scripts) and hadolint (Dockerfile) when installed
	$(VENV)/bin/ruff check .
	@if command -v shellcheck >/dev/null; then shellcheck *.sh && echo "shellcheck: ok"; \
	else echo "shellcheck not installed: shell scripts not checked"; fi
	@hadolint=$$(command -v $(VENV)/bin/hadolint || command -v hadolint); \
	if [ -n "$$hadolint" ]; then "$$hadolint" Dockerfile && echo "hadolint: ok"; \
	else echo "hadolint not installed: Dockerfile not checked"; fi

# The Gaudi image's Python stack (requirements-hpu.txt) in an environment of its own, with the CPU torch standing in for
# Habana's build: pins, the image's torch/Python bounds, every script's import and --help, and SFT and PPO steps
# against the stand-in Gaudi runtime (.ci/hpu_check.py). CI runs it.
HPU_VENV ?= .venv-hpu
hpu-check: ## check the Gaudi dependency set (requirements-hpu.txt) in its own .venv-hpu
	@test -x $(HPU_VENV)/bin/python || $(PYTHON) -m venv $(HPU_VENV)
	@$(call install_torch,$(HPU_VENV)/bin/python)
	$(HPU_VENV)/bin/python -m pip install --quiet -r requirements-hpu.txt
	$(HPU_VENV)/bin/python .ci/hpu_check.py

default: install ## build the embedded default (tiny model, offline tokenizer, toy data) into the cache
	$(PY) -m rlhfkit.embedded

sanity: install ## the main job: the pipeline on the embedded default (log in ppo_pipeline_sanity.log)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash ppo_pipeline_sanity.sh

bench: install ## benchmark suite with side-by-side peers -> bench/results/<device>-<date>.json and .md
	$(PY) bench/run.py $(BENCH_ARGS)

build: ## build the Intel Gaudi image (Dockerfile; keeps the Habana image's own torch)
	@$(REQUIRE_DOCKER)
	docker build --build-arg GAUDI_VERSION=$(GAUDI_VERSION) --build-arg OS=$(GAUDI_OS) \
	  --build-arg PYTORCH_VERSION=$(GAUDI_PYTORCH_VERSION) --build-arg WITH_OPTIMUM_HABANA=$(WITH_OPTIMUM_HABANA) \
	  $(DOCKER_BUILD_ARGS) -t $(IMAGE) .

run: ## start the Gaudi container: a shell, or CMD="..."; HF_TOKEN=<token> for gated models
	@$(REQUIRE_DOCKER)
	@if [ -n "$(DOCKER_RUNTIME)" ] && ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"$(DOCKER_RUNTIME)"'; then \
	  echo "error: the Docker daemon has no '$(DOCKER_RUNTIME)' runtime: install habanalabs-container-runtime, or use DOCKER_RUNTIME= for Docker's default" >&2; exit 1; fi
	@if [ -z "$${HF_TOKEN:-}" ]; then \
	  echo "warning: HF_TOKEN is not set: gated models (e.g. google/gemma-3-270m) cannot be downloaded; use make run HF_TOKEN=<token>" >&2; fi
	@tty=; if [ -t 0 ] && [ -t 1 ]; then tty=-t; fi; \
	docker run -i $$tty --rm $(if $(DOCKER_RUNTIME),--runtime=$(DOCKER_RUNTIME)) -e HABANA_VISIBLE_DEVICES=all \
	  -e OMPI_MCA_btl_vader_single_copy_mechanism=none --cap-add=sys_nice --net=host --ipc=host \
	  -e HF_TOKEN $(DOCKER_RUN_ARGS) $(IMAGE) $(CMD)

clean: ## remove the pipeline's outputs (keeps .venv)
	rm -rf runs ppo_pipeline_sanity.log
