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

demo: $(STAMP)
	$(BIN)/when-coordinator demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# System tools the tests drive: tmux (`watch` in a real 80x24 terminal). Installed with
# apt-get where possible (as root, else with sudo); otherwise those tests skip, and under
# CI=true they fail instead.
system-deps:
	@command -v tmux >/dev/null 2>&1 || { \
	  echo "make: installing tmux for the terminal tests of the command line"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends tmux; } \
	      || echo "make: warning: could not install tmux: the terminal tests will skip"; \
	  else \
	    echo "make: warning: no apt-get: install tmux, or the terminal tests will skip"; \
	  fi; \
	}

test: lint typecheck docs system-deps
	$(BIN)/pytest

# The reliability tests' long variants (docs/reliability.md): fault rounds repeated, fuzzing
# at scale. The default test run leaves them out.
soak: $(STAMP)
	$(BIN)/pytest -m soak tests/test_reliability_*.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
