# Quick start: `make run` (default pipeline on the default data) and `make test`.
# Both create, once, a virtual environment keyed on pyproject.toml's dependencies (outside the clone, so
# clones share it), then put this checkout into it.

PYTHON ?= python3
# Keyed on the dependency lists only (from "dependencies =" to the scripts table).
DEPS_HASH := $(shell sed -n '/^dependencies = \[/,/^\[project.scripts\]/p' pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/fmix/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed
CORES ?= 2

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test dvc-repro install pipeline-check

run: install
	snakemake --cores $(CORES)

dvc-repro: install
	dvc repro

test: install
	python -m pytest

# The stage table and both front ends agree, and the Snakemake rules pass the linter.
pipeline-check: install
	fmix pipeline generate --check
	snakemake --lint

install: $(STAMP)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $(STAMP)
