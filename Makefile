# Quick start: `make run` (default pipeline on the default data) and `make test`.
# Both create, once, a virtual environment keyed on pyproject.toml's dependencies and the tested pins of
# requirements/constraints.txt (outside the clone, so clones share it), then put this checkout into it.

PYTHON ?= python3
# The exact versions the tests ran with; pyproject.toml holds the ranges.
CONSTRAINTS := requirements/constraints.txt
# What the venv installs: the library with every extra but gpu (pipeline, judge, dp) and the tests.
EXTRAS ?= all,test
# Keyed on the dependency lists (from "dependencies =" to the scripts table), the pins and the extras.
DEPS_HASH := $(shell { sed -n '/^dependencies = \[/,/^\[project.scripts\]/p' pyproject.toml; cat $(CONSTRAINTS); echo '$(EXTRAS)'; } | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/fmix/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
CORES ?= 2

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test dvc-repro dvc-commit install pipeline-check lint

# Snakemake builds; then DVC records what it built, so `dvc status` agrees (docs/pipeline.md).
run: install
	snakemake --cores $(CORES)
	@$(MAKE) --no-print-directory dvc-commit

# dvc.lock and DVC's cache from the outputs as they are (no stage runs); --no-relink leaves the files, and
# the modification times Snakemake compares, untouched. DVC reads params.yaml's paths, not $$FMIX_DATA's.
dvc-commit: install
	@if [ -n "$$FMIX_DATA" ]; then \
		echo "FMIX_DATA is set: DVC reads params.yaml's data paths, so dvc.lock is left as it was (docs/pipeline.md)"; \
	else \
		dvc commit --force --no-relink --quiet && echo "dvc.lock now records this run (dvc status: up to date)"; \
	fi

dvc-repro: install
	dvc repro

test: install
	python -m pytest

# The stage table and both front ends agree, the Snakemake rules pass the linter, docs/cli.md is current.
pipeline-check: install
	fmix pipeline generate --check
	snakemake --lint
	python -m fmix.docs_cli --check

# Lint and formatting (ruff, configured in pyproject.toml); `ruff check --fix . && ruff format .` repairs.
lint: install
	ruff check .
	ruff format --check .

install: $(STAMP)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) --editable '.[$(EXTRAS)]'
	touch $(STAMP)
