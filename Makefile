# Two commands: `make book` (execute every notebook, build _build/html/) and `make test`.
# Both create .venv from requirements.txt on first use and reuse it afterwards.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp's name carries a hash of requirements.txt: editing the file re-runs pip.
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.requirements-$(REQ_HASH)
DATA_DIR := $(or $(LAB_DATA_DIR),.data)
CORPUS_PACKAGE := python3.11-doc

# Everything runs offline and deterministically. MPLBACKEND is left alone for notebooks
# (their kernels draw figures inline); only the unit tests use Agg.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYTHONHASHSEED := 0
export TOKENIZERS_PARALLELISM := false
unexport MPLBACKEND
# Notebooks run with their own folder as working directory; this makes `import lab` work there.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help venv data book outputs test test-unit test-notebooks test-nbval clean

help:
	@echo "make book     build the Jupyter Book (executes every notebook) into _build/html/"
	@echo "make test     unit tests, papermill regression runs of every notebook, nbval"
	@echo "make outputs  re-execute every notebook in place (refreshes the outputs nbval checks)"
	@echo "make clean    remove _build/, test caches and metrics files (keeps .venv and .data)"

$(STAMP): requirements.txt
	if [ ! -x $(PY) ]; then $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -r requirements.txt
	rm -f $(VENV)/.requirements-*
	touch $@

venv: $(STAMP)

# The corpus (Debian package python3.11-doc) is fetched once with apt-get download.
data: $(STAMP)
	if [ ! -f $(DATA_DIR)/$(CORPUS_PACKAGE)/MANIFEST.json ] && \
	   ! apt-cache policy $(CORPUS_PACKAGE) | grep -q 'Candidate: [0-9]'; then \
		apt-get update -qq; \
	fi
	$(PY) -m lab.data

book: data
	$(VENV)/bin/jupyter-book build -W --keep-going --builder html .

# The outputs stored in notebooks/*.ipynb are what nbval re-validates: refresh them here.
outputs: data
	for nb in notebooks/*.ipynb; do \
		$(VENV)/bin/papermill --cwd notebooks --kernel python3 --no-progress-bar "$$nb" "$$nb"; \
	done

test: test-unit test-notebooks test-nbval

test-unit: data
	MPLBACKEND=Agg $(PY) -m pytest tests --ignore=tests/test_notebooks.py

test-notebooks: data
	$(PY) -m pytest tests/test_notebooks.py

test-nbval: data
	$(PY) -m pytest --nbval notebooks/ --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600

clean:
	rm -rf _build .pytest_cache .hypothesis notebooks/*.metrics.json
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
