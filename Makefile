# `make demo` serves the seed's multiplexed deployment on :8000, `make test` runs the test suite,
# `make bench` runs the benchmarks. They share one virtual environment, and each installs only
# the extras it needs: the demo numpy and requests, the tests also pytest and Ray, the benchmarks
# Ray Serve and matplotlib. A stamp per extra means nothing is installed twice or removed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean system-deps
# The stamps below share one venv: two pip runs in it at once would race.
.NOTPARALLEL:

# The package itself (editable), without extras; again whenever pyproject.toml changes.
$(VENV)/.package: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# One extra's requirements, read from the installed package's metadata: naming the package
# rather than "." leaves the installed package as it is.
$(VENV)/.extra-%: $(VENV)/.package
	$(BIN)/pip install --quiet 'modelplex[$*]'
	touch $@

demo: $(VENV)/.extra-examples
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

# tests/ray needs Ray; the bench tests import only bench's pure modules (trace, simulate).
test: $(VENV)/.extra-test $(VENV)/.extra-examples $(VENV)/.extra-ray system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Real tools the tests point at (tools/system-packages.txt), installed when missing and root.
system-deps:
	sh tools/system-deps.sh

bench: $(VENV)/.extra-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
