# scalekit: `make demo` runs the main job, `make test` the test suite, `make lab` opens the notebooks in JupyterLab.
# Each installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON_BIN := $(VENV)/bin/python
# Python >= 3.12: the one .python-version selects (pyenv), else python3.12 on PATH, else python3.
PY_SYS ?= $(shell for p in python3.12 python3.13 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu

.PHONY: install test test-fast demo train bench lab mutate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PY_SYS)" ]; then echo "scalekit needs Python >= 3.12 (jax 0.12); install it or put python3.12 on PATH" >&2; exit 1; fi
	@test -x $(PYTHON_BIN) || $(PY_SYS) -m venv $(VENV)
	$(PYTHON_BIN) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

test: install
	$(PYTHON_BIN) -m pytest -q

test-fast: install
	$(PYTHON_BIN) -m pytest -q -m "not slow"

train: install
	$(VENV)/bin/scalekit train --config configs/train.py:tiny --workdir runs/tiny

demo: install
	$(PYTHON_BIN) experiments/demo.py --workdir runs/demo

bench: install
	$(PYTHON_BIN) benchmarks/bench_train.py
	$(PYTHON_BIN) benchmarks/bench_fit.py --quick
	$(PYTHON_BIN) benchmarks/bench_checkpoint.py

# Mutation testing (mutmut 3, config in pyproject's [tool.mutmut]) of laws/, train/step.py, checkpoint.py,
# sweep/store.py and model/counting.py, then the per-module score table. Not in CI: ~11,500 mutants, hours on one
# core. A fresh run each time (a kept mutants/ keeps old verdicts: survivors are not re-run against new tests);
# MUTANTS narrows it to names or globs (MUTANTS='scalekit.model.counting.*'), MUTATE_JOBS sets the workers,
# MUTATE_KEEP=1 reuses mutants/ (only mutants without a verdict, or named in MUTANTS, are run).
MUTATE_JOBS ?= 1
MUTANTS ?=
MUTATE_STAMP := $(VENV)/.mutate-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

$(MUTATE_STAMP): $(STAMP)
	$(PYTHON_BIN) -m pip install -q --disable-pip-version-check -e '.[dev,mutate]'
	@rm -f $(VENV)/.mutate-*; touch $@

mutate: $(MUTATE_STAMP)
	@test -n "$(MUTATE_KEEP)" || rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(PYTHON_BIN) scripts/mutation_score.py

# JupyterLab on the repository with the jupytext percent files (notebooks/*.py) opening as notebooks on a double
# click: the `lab` extra, and jupytext's default-viewer setting written inside the venv (not in ~/.jupyter).
# Edits save back to the .py files. LAB_ARGS passes options, e.g. make lab LAB_ARGS="--no-browser --port 8899".
LAB_STAMP := $(VENV)/.lab-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
LAB_SETTINGS := $(VENV)/etc/jupyter/labconfig/default_setting_overrides.json
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)   # Jupyter refuses root without it (containers)

$(LAB_STAMP): $(STAMP)
	$(PYTHON_BIN) -m pip install -q --disable-pip-version-check -e '.[dev,lab]'
	$(VENV)/bin/jupytext-config --settings-file $(LAB_SETTINGS) set-default-viewer python
	@rm -f $(VENV)/.lab-*; touch $@

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --ServerApp.default_url=/lab/tree/notebooks $(LAB_ROOT) $(LAB_ARGS)

clean:
	rm -rf runs .pytest_cache mutants
