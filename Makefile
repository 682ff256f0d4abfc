# Every target bootstraps .venv from nothing, so a fresh clone needs only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint typecheck docs bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make demo ARGS=--keep leaves the hub (and its dashboard) running until Ctrl-C.
demo: $(STAMP)
	$(BIN)/when-coordinator demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The system programs the tests start (redis-server, chromium, postgresql, tmux, haproxy):
# installed with apt-get when missing and root, else one line names them (CI=true: fails).
system-deps:
	@sh scripts/ensure-system-deps

test: system-deps lint typecheck docs
	$(BIN)/pytest

# The reliability tests' long variants (docs/reliability.md): fault rounds repeated, fuzzing
# at scale. The default test run leaves them out.
soak: $(STAMP)
	$(BIN)/pytest -m soak tests/reliability/

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
