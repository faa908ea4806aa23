# paravm: the two commands are `make run` and `make test` (setup included).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MANIFEST ?= examples/pipeline/pipeline.toml
# perl-base is Essential on Debian and Ubuntu: this file is on every such machine.
INPUT ?= /usr/bin/perl

.PHONY: all setup guest examples run test bench clean

all: setup

setup: $(VENV)/.installed examples

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "paravm needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtualenv: on Debian/Ubuntu install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q src
	touch $@

guest:
	$(MAKE) -C guest

examples: guest
	$(MAKE) -C examples

run: setup
	$(VENV)/bin/paravm run $(MANIFEST) $(if $(INPUT),--input $(INPUT))

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run --readme

clean:
	$(MAKE) -C guest clean
	$(MAKE) -C examples clean
	rm -rf $(VENV) build src/*.egg-info
