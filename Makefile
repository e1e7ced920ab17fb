# Fresh machine:  make run   (set up .venv, then run the whole pipeline with DVC)
#                 make test  (set up .venv, then run the test suite)
# Offline, point EMOTIVELENS_MIRROR at a folder holding caltech-faces-1999/, genki-4k/, smilesmiled/
# and keras-weights/.

VENV_BIN := .venv/bin
export PATH := $(CURDIR)/$(VENV_BIN):$(PATH)

.PHONY: setup run run-snakemake test

setup: .venv/.installed

.venv/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

run: setup
	dvc repro

run-snakemake: setup
	snakemake --cores 8

test: setup
	python -m pytest
