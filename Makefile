# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch / torchvision pair pinned for this project's machines (CPU); pyproject keeps open ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
DATA ?= data/synthetic

.PHONY: install test test-all demo benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

demo: install
	@echo "make demo: placeholder until the training issue lands"

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
