# The two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test container-test

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e '.[test]'

demo: install
	PYTHON=$(PYTHON) bash examples/demo.sh

test: install-test
	$(PYTHON) -m pytest

container-test:
	bash tests/container/run.sh
