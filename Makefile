# Every target bootstraps .venv from nothing, so a fresh clone needs only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint typecheck docs bench clean browser

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

# The dashboard's browser tests need Debian's chromium: installed when missing and root,
# otherwise one line says they skip (CI=true: a missing browser fails the run instead).
browser:
	@sh scripts/ensure-browser

test: lint typecheck docs browser
	$(BIN)/pytest

# The reliability tests' long variants (docs/reliability.md): fault rounds repeated, fuzzing
# at scale. The default test run leaves them out.
soak: $(STAMP)
	$(BIN)/pytest -m soak tests/test_reliability_*.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
