# The two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test container-test bench bench-quick

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

# Speed targets of the README's "Speed" section, against baselines measured in the same run.
bench: install-test
	$(PYTHON) bench/run.py

bench-quick: install-test
	$(PYTHON) bench/run.py --quick
