# The two set-up commands on a fresh machine: `make demo` and `make test`.
# Both work in a project virtual environment, .venv (git-ignored), made once from the first
# Python 3.10+ on the PATH (or PYTHON=/path/to/python3.x); nothing is installed into that
# interpreter itself. The install is redone only when pyproject.toml changes (stamp files).
VENV ?= .venv
PY := $(VENV)/bin/python
CANDIDATES := python3 python3.13 python3.12 python3.11 python3.10
PYTHON ?= $(shell for p in $(CANDIDATES); do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && { command -v $$p; break; }; done)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv install install-test demo test container-test bench bench-quick clean-venv

venv: $(PY)
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(PY):
	@test -n "$(PYTHON)" || { echo "make: no Python 3.10 or newer on the PATH (tried $(CANDIDATES));" \
		"install one, or give it: make PYTHON=/path/to/python3.x ..." >&2; exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "make: $(PYTHON) is older" \
		"than Python 3.10" >&2; exit 1; }
	@"$(PYTHON)" -c 'import venv, ensurepip' 2>/dev/null || { echo "make: $(PYTHON) cannot make a virtual" \
		"environment (its venv/ensurepip module is missing). On Debian or Ubuntu:" \
		"sudo apt-get install python3-venv (or python3.X-venv for Python 3.X), then run make again." >&2; exit 1; }
	"$(PYTHON)" -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

demo: install
	PYTHON=$(PY) bash examples/demo.sh

test: install-test
	$(PY) -m pytest

container-test:
	bash tests/container/run.sh

# Speed targets of the README's "Speed" section, against baselines measured in the same run.
bench: install-test
	$(PY) bench/run.py

bench-quick: install-test
	$(PY) bench/run.py --quick

clean-venv:
	rm -rf $(VENV)
