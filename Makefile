# Every target sets up .venv itself when it is missing or older than pyproject.toml,
# so a fresh clone needs nothing but Python 3.11+ and make, and, for `make test`, PostgreSQL's
# server binaries (the tests start their own server; `.ci/run` installs them when missing).

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is needed (none found on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/envagent run --foreground

lint: $(STAMP)
	$(BIN)/ruff check agent tests
	$(BIN)/ruff format --check agent tests
	$(BIN)/mypy --strict agent
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest

# The same, less the tests marked slow (real installs and upgrades, fault injection, anything
# over about 5 s): for the edit-and-check loop. CI runs `make test`, which runs everything.
test-fast: lint
	$(BIN)/pytest -m "not slow"

# Benchmarks, not tests: run them on a quiet machine (the full run takes about 15 minutes).
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
