# The two commands a newcomer needs. Each does its own set-up (tools/setup.sh) and is fast the
# second time. Everything built lives outside the repository, under $(KAITO_HOME).
KAITO_HOME ?= $(HOME)/.cache/kaito
VENV ?= $(KAITO_HOME)/venv
export KAITO_HOME
export KAITO_VENV := $(VENV)
BIN := $(VENV)/bin
# Two workers: the cluster tier (one control plane, one real node) on one, everything else on
# the other (tests/conftest.py groups them). PYTEST_ARGS= runs in one process.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: demo test

demo:
	@tools/setup.sh demo
	@$(BIN)/kaito demo

test:
	@tools/setup.sh test
	$(BIN)/ruff check src tests bench charts
	$(BIN)/ruff format --check src tests bench charts docs
	$(BIN)/mypy --strict src
	$(BIN)/pytest $(PYTEST_ARGS)
