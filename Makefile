# `make test` and `make demo` each set up .venv first (reused when the requirements are unchanged).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt requirements-analysis.txt requirements-dev.txt

.PHONY: test demo venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	touch $@

test: venv
	$(VENV)/bin/ruff check .
	$(PY) test_model.py
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
