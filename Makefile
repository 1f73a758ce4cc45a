# The two commands a newcomer needs. Each does its own set-up (tools/setup.sh) and is fast the
# second time. Everything built lives outside the repository, under $(KAITO_HOME).
KAITO_HOME ?= $(HOME)/.cache/kaito
VENV ?= $(KAITO_HOME)/venv
export KAITO_HOME
export KAITO_VENV := $(VENV)
BIN := $(VENV)/bin

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
