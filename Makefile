# Two commands: `make book` (execute the notebooks whose code changed, build _build/html/) and `make test`.
# Both create .venv from requirements.txt on first use and reuse it afterwards.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp's name carries a hash of requirements.txt: editing the file re-runs pip.
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
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
# Bytecode is written (.venv's __pycache__): with PYTHONDONTWRITEBYTECODE=1 every process (each notebook
# kernel, test worker and spawned rank) compiled torch and transformers from source again, 8 s of CPU each.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help venv data book book-stored browser outputs output-spread test test-unit test-notebooks test-book gpu-dry-run clean

help:
	@echo "make book     build the Jupyter Book into _build/html/ (executes the notebooks whose code"
	@echo "              changed since the last build; the others come from _build/.jupyter_cache)"
	@echo "make book-stored  build it from the outputs stored in the notebooks (executes none; CI's build)"
	@echo "make test-book    book-stored, then open every page in headless chromium (tests/book)"
	@echo "make test     unit tests, the sm_90 kernel check, each notebook executed once (metrics and"
	@echo "              stored outputs checked), the book built from stored outputs and opened in chromium"
	@echo "make outputs  re-execute every notebook in place (refreshes the stored outputs the tests compare)"
	@echo "make output-spread  execute every notebook on six CPU code paths of torch (tests/code_paths.py) and"
	@echo "              print how far each printed number moved between them: the measurement behind the"
	@echo "              tolerances of tests/notebook_outputs.py (about 70 minutes on 2 cores; _build/spread/)"
	@echo "make check-kernels  python -m lab.bench static under triton 3.6.0 (the GPU machine's): every kernel"
	@echo "              configuration compiled for sm_90 (no GPU) and the static model, into _build/kernels-sm90/;"
	@echo "              check-kernels-pinned the same under the pinned triton; both fail on spills"
	@echo "make kernels-static  the kernels' sm_90 compile and static model into results/kernels_sm90.json"
	@echo "make gpu-dry-run  rehearse the staged GPU run (python -m lab.bench gpu) on the CPU"
	@echo "make clean    remove _build/, test caches and metrics files (keeps .venv and .data)"

$(STAMP): requirements.txt pyproject.toml
	if [ ! -x $(PY) ]; then $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --no-compile -r requirements.txt  # .pyc written on first import: ~50 s less here
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -c 'import lab.doctor, matplotlib.pyplot, pandas, seaborn, transformers.models.llama'  # their bytecode, once
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

# execute_notebooks: cache (_config.yml): a notebook runs only when its code cells changed since the
# last build; the others take their outputs from jupyter-cache (_build/.jupyter_cache).
book: data
	$(VENV)/bin/jupyter-book build -W --keep-going --builder html .

# The same book from the outputs stored in notebooks/*.ipynb, no notebook executed: a copy of
# _config.yml with execute_notebooks: off (jupyter-book 1.x has no -D for Sphinx settings).
BOOK_STORED_CONFIG := _build/_config.stored.yml
book-stored: $(STAMP)
	mkdir -p _build
	$(PY) -c 'import sys, yaml; c = yaml.safe_load(open("_config.yml")); c["execute"]["execute_notebooks"] = "off"; yaml.safe_dump(c, open(sys.argv[1], "w"), sort_keys=False)' $(BOOK_STORED_CONFIG)
	$(VENV)/bin/jupyter-book build -W --keep-going --builder html --config $(BOOK_STORED_CONFIG) .

# Debian's chromium and chromium-driver (apt-get), when /usr/bin/chromium or /usr/bin/chromedriver is missing.
browser:
	bash .ci/install-browser

# The outputs stored in notebooks/*.ipynb are what tests/test_notebooks.py compares with: refresh them here.
# Two at a time, each on one thread, the longest first (as make test runs them).
outputs: data
	$(PY) -c 'from tests.test_notebooks import NOTEBOOKS; print("\n".join(map(str, NOTEBOOKS)))' | \
		OMP_NUM_THREADS=1 xargs -P 2 -I NB $(VENV)/bin/papermill --cwd notebooks --kernel python3 \
		--no-progress-bar NB NB

# How far the notebooks' printed numbers move with the CPU: every notebook on each code path of
# tests/code_paths.py (about 70 minutes on 2 cores), then the spread table and the verbs that hang on the CPU.
output-spread: data
	$(PY) -m tests.output_spread --again

# CI (.ci/run) on 2 cores: the notebooks (two halves of equal stored time, each longest first), the kernel check, the
# unit tests (two workers, so that both cores stay busy once the notebooks are done) and the book (built from the
# stored outputs, opened in chromium) share the cores, each torch process on one thread (OMP_NUM_THREADS=1: no
# oversubscribed thread pools).
test:
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j2 --output-sync=target test-notebooks check-kernels test-unit test-book

test-unit: data
	MPLBACKEND=Agg $(PY) -m pytest -n 2 tests --ignore=tests/test_notebooks.py --ignore=tests/book --durations=5

test-notebooks: data
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup tests/test_notebooks.py

# Every page of _build/html in headless chromium: formulas typeset, images loaded, no console error,
# internal links resolve, sidebar complete; screenshots in _build/screenshots/.
test-book: book-stored browser
	$(PY) -m pytest tests/book -q

# Every Triton kernel configuration the wrappers launch for the shapes their callers declare, compiled ahead of
# time for sm_90 without a GPU, and the static model of the kernels' time (python -m lab.bench static:
# registers, spills, shared memory, CTAs/SM, main-loop SASS, predicted µs); one record, kernels_sm90.json,
# and a failure on a compile error, a spill or > 227 KB of shared memory.
# check-kernels (in make test): under triton 3.6.0, the GPU machine's, installed once beside the pin, into _build/;
# a configuration whose fingerprint (compilation key, kernel source, Triton version) results/kernels_sm90.json
# holds takes that record's compile, so only the kernels a change touched compile again.
# check-kernels-pinned: the same under the pinned triton (the unit tests compile representative configurations
# with it). kernels-static: under triton 3.6.0 into results/, the committed record chapter 3 reads.
TRITON_36_DIR := $(VENV)/triton-3.6.0
.PHONY: check-kernels check-kernels-pinned kernels-static
$(TRITON_36_DIR)/.installed: | $(STAMP)
	$(PY) -m pip install --no-deps --target $(TRITON_36_DIR) triton==3.6.0
	touch $@

check-kernels: $(STAMP) $(TRITON_36_DIR)/.installed
	PYTHONPATH=$(TRITON_36_DIR) $(PY) -m lab.bench static --out _build/kernels-sm90 --no-progress \
		--reuse results/kernels_sm90.json

check-kernels-pinned: $(STAMP)
	$(PY) -m lab.bench static --out _build/kernels-sm90-pinned --no-progress

kernels-static: $(STAMP) $(TRITON_36_DIR)/.installed
	PYTHONPATH=$(TRITON_36_DIR) $(PY) -m lab.bench static --out results --no-progress

# The staged GPU run with tiny shapes on the CPU (one record per stage in _build/gpu-dry-run/); book/reproducing.md.
gpu-dry-run: data
	$(PY) -m lab.bench gpu --dry-run --no-progress --out _build/gpu-dry-run

clean:
	rm -rf _build .pytest_cache .hypothesis notebooks/*.metrics.json
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
