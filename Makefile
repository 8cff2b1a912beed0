# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build for this machine; override on a GPU host, e.g. TORCH_SPEC='torch==2.11.*'.
TORCH_SPEC ?= torch==2.13.0
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed's C++/CUDA ops are compiled just in time when a run needs them, never at install.
export DS_BUILD_OPS := 0

.PHONY: demo test lint format bench clean

$(VENV)/.installed: setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)" py-cpuinfo psutil ninja hjson pydantic numpy packaging
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/renderloop demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest -q -m "slow or not slow"

bench: $(VENV)/.installed
	$(PY) -m bench.renderers

clean:
	rm -rf $(VENV) build *.egg-info
