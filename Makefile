# brainalign — set-up, demo, tests, benchmarks, containers.
# Everything installs into .venv from PyPI wheels; CPU torch is pinned by toolkit/constraints-cpu.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: venv demo test bench gpu-check container lint slurm-up slurm-down clean help

help:
	@echo "make demo       create .venv, install, run the whole pipeline on the embedded demo data"
	@echo "make test       create .venv, install test deps, run pytest (starts MPI and a local SLURM)"
	@echo "make bench      benchmarks under bench/ (ridge vs himalaya/sklearn, MPI scaling)"
	@echo "make gpu-check  the prepared GPU check (bench/gpu_check.py) -> build/gpu_check/"
	@echo "make container  build the Apptainer images where apptainer exists"

venv: $(STAMP)

$(STAMP): toolkit/pyproject.toml toolkit/constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c toolkit/constraints-cpu.txt -e 'toolkit[test]'
	@touch $(STAMP)

demo: venv
	$(BIN)/brainalign run $(CONFIG)

test: venv
	$(BIN)/python -m pytest -ra tests

bench: venv
	$(BIN)/python bench/ridge.py
	@if [ -f bench/scaling.py ]; then $(BIN)/python bench/scaling.py; fi

# Without a GPU it runs the CPU reference parts and reports the GPU parts as skipped (and why).
gpu-check:
	PYTHONPATH=toolkit $(PYTHON) bench/gpu_check.py build/gpu_check

SLURM_DIR ?= /tmp/brainalign-slurm
slurm-up:
	slurm/local/start.sh $(SLURM_DIR)
	@echo "now: source $(SLURM_DIR)/env.sh"

slurm-down:
	slurm/local/stop.sh $(SLURM_DIR)

container: venv
	containers/build.sh --if-available

# ruff with the rules chosen (and why) in toolkit/pyproject.toml [tool.ruff]
lint: venv
	$(BIN)/ruff check --config toolkit/pyproject.toml toolkit/brainalign bin/brainalign tests bench

clean:
	rm -rf results data .pytest_cache
