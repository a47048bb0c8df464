# urd-lightning — every command a user needs. `make help` lists them.
#   make train                          # embedded demo dataset, offline, a few minutes on a laptop CPU
#   make train DATASET=mvtec CATEGORY=bottle ARGS="trainer.devices=2"
#   make test                           # the default (fast, CPU) test suite
SHELL := /bin/bash
# The interpreter every target runs: PYTHON=... when given; else the active venv's or conda env's python3; else a
# project-local .venv/ created on first use (a stock Debian/Ubuntu python3 refuses `pip install` outside a venv, PEP 668).
VENV := .venv
BASE_PYTHON ?= python3
ifeq ($(origin PYTHON),undefined)
  ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
    PYTHON := python3
  else
    PYTHON := $(VENV)/bin/python
  endif
endif
PIP ?= $(PYTHON) -m pip
DATASET ?=
CATEGORY ?=
ARGS ?=
# The torch pair known to work together (torchvision is needed by timm). On a CUDA machine pip picks the CUDA build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The install stamp of the local venv lives inside it (a new venv is a new install); other envs share one in .cache.
STAMP := $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/install.stamp,.cache/install.stamp)

.PHONY: help install python test test-slow test-ddp test-all test-ci-extra test-kernels train evaluate benchmark report lint demo-data \
	bench-gpu bench-gpu-prep clean distclean

help:  ## list the commands
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	@$(BASE_PYTHON) -c "import ensurepip, venv" 2>/dev/null || { echo "error: $(BASE_PYTHON) cannot create a virtual \
	environment: install the python3-venv package (sudo apt install python3-venv), or activate a venv/conda env, \
	or pass PYTHON=/path/to/python" >&2; exit 1; }
	$(BASE_PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(filter $(VENV)/bin/python,$(PYTHON))
	@mkdir -p $(dir $@)
	$(PIP) install $(TORCH_PINS)
	$(PIP) install -r requirements.txt -r requirements-dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)  ## install everything (skipped when requirements are unchanged since the last install)

python: | $(filter $(VENV)/bin/python,$(PYTHON))  ## print the interpreter every target uses
	@echo $(PYTHON)

test: install  ## the default test suite (CPU, no data or weights needed)
	$(PYTHON) -m pytest -q

test-slow: install  ## tests marked slow (real WideResNet-50 shapes, longer training)
	$(PYTHON) -m pytest -q -m slow

test-ddp: install  ## 2-process (gloo, CPU) tests of metrics and training
	$(PYTHON) -m pytest -q -m ddp

test-ci-extra: install  ## what CI runs after `make test`: the ddp and slow tests that fit its time
	$(PYTHON) -m pytest -q -m "ddp or slow" ; rc=$$?; [ $$rc -eq 0 -o $$rc -eq 5 ]

# The numerics tests (network, training step, metrics, export parity, bf16 decision) on other CPUs' kernel paths:
# ATen, oneDNN and MKL capped at AVX2 (a CPU without AVX-512, whose bf16 decision is then fp32), and ATen's
# unvectorised kernels. Their rounding differs from this machine's; the results must not.
KERNEL_TESTS := tests/models tests/metrics tests/training/test_iteration_reference.py tests/training/test_module.py \
	tests/training/test_eval_precision.py tests/deploy/test_export.py tests/test_hardware.py
test-kernels: install  ## the numerics tests with AVX2-only and with ATen's default (unvectorised) kernels
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PYTHON) -m pytest -q $(KERNEL_TESTS)
	ATEN_CPU_CAPABILITY=default $(PYTHON) -m pytest -q $(KERNEL_TESTS)

test-all: install  ## every test except gpu
	$(PYTHON) -m pytest -q -m "not gpu"

train: install  ## train + evaluate; DATASET=mvtec|visa|btad|mpdd|folder (empty: embedded demo) CATEGORY=... ARGS="k=v ..."
	$(PYTHON) -m urd_lightning train dataset=$(or $(DATASET),demo) $(if $(CATEGORY),data.category=$(CATEGORY)) $(ARGS)

evaluate: install  ## evaluate a checkpoint: make evaluate CKPT=path/to/last.ckpt
	$(PYTHON) -m urd_lightning test ckpt=$(CKPT) $(ARGS)

benchmark: install  ## every category of DATASET in turn, then the results table
	$(PYTHON) -m urd_lightning benchmark dataset=$(or $(DATASET),demo) $(ARGS)

report: install  ## tables and plots for every run under DIR (default results/): make report DIR=results/mvtec
	$(PYTHON) -m urd_lightning report $(or $(DIR),results) $(ARGS)

demo-data: install  ## (re)generate the embedded demo dataset under datasets/demo
	$(PYTHON) -m urd_lightning data demo --root datasets/demo

# The GPU benchmark installs nothing: a GPU machine may be offline (docs/performance.md, "GPU"). It runs with the
# PYTHON above when that exists, else python3, and takes omegaconf from .cache/bench-gpu/site when bench-gpu-prep put
# it there. OUT: where the report goes.
BENCH_PYTHON = $(firstword $(wildcard $(PYTHON)) python3)
OUT ?= results/_bench
bench-gpu:  ## GPU throughput (authors' settings vs defaults, loader, eval, compile), within --budget-s: OUT/gpu-*.json/.md (OUT=results/_bench)
	PYTHONPATH=.cache/bench-gpu/site:src$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
	$(BENCH_PYTHON) experiments/bench_gpu.py --out $(OUT) $(ARGS)

bench-gpu-prep:  ## before a call to an offline GPU machine: omegaconf and the commit into .cache/bench-gpu (carried)
	rm -rf .cache/bench-gpu
	$(BENCH_PYTHON) -m pip download --no-deps --only-binary=:all: -d .cache/bench-gpu/wheels \
		$$(grep -E '^omegaconf==' requirements.txt)
	$(BENCH_PYTHON) -m pip install --no-deps --no-index --no-compile --target .cache/bench-gpu/site \
		.cache/bench-gpu/wheels/*.whl
	$(BENCH_PYTHON) experiments/bench_gpu.py --record-source

lint: install  ## ruff
	$(PYTHON) -m ruff check src tests experiments

clean:  ## remove caches (not datasets/, results/ or the .venv/)
	rm -rf .cache .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove the project-local .venv/
	rm -rf $(VENV)
