# Every target sets up .venv itself when it is missing or older than pyproject.toml, so a fresh
# clone needs nothing but Python 3.11+ and make, and, for `make test`, PostgreSQL's server
# binaries (the tests start their own server; `.ci/run` installs them when missing). Two stamps:
# `make run` needs the runtime only (the project and its dependencies, `-e .`); lint, the tests,
# the benchmarks and `make dist` add the test extras on top (`-e '.[test]'`: pytest, mypy, ruff,
# pipx, uv, letta-client…, most of the download).

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTENV := $(VENV)/.installed-test

.PHONY: run test test-fast lint bench mutation dist clean

# The runtime: .venv and the project with its dependencies, nothing else.
$(RUNTIME): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is needed (none found on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNTIME)

# The test extras on top of the runtime. Redone when pyproject.toml changes, directly or through
# the runtime stamp, which is then redone first and so is newer than this one.
$(TESTENV): $(RUNTIME) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(TESTENV)

run: $(RUNTIME)
	$(BIN)/envagent run --foreground

lint: $(TESTENV)
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
bench: $(TESTENV)
	$(BIN)/python -m tests.bench.run

# Mutation testing of the pure modules, each against its own tests (docs/mutation.md): about 20
# minutes, so not part of `test`. At nice 19, one module at a time, in a copy of the tree under
# build/mutation/ (never here); the summary is build/mutation/summary.md.
mutation: $(TESTENV)
	nice -n 19 $(BIN)/python -m tests.mutation.run

# The wheel and the sdist, in dist/ (emptied first, so that dist/envagent-*.whl is this version).
# `python -m build` is the standard PEP 517 front end: it builds in an isolated environment from
# [build-system] alone, makes the sdist too (pip wheel makes wheels only), and builds the wheel
# from that sdist, so a file the sdist leaves out shows here, as missing from the wheel too.
dist: $(TESTENV)
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
