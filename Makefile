# `make run` and `make test` set themselves up on a fresh machine (Python 3.11+ and, for
# Redis, either a redis-server on PATH or apt-get to install one). `make run` puts nginx in
# front of the API when it is installed (`python3 scripts/ensure_nginx.py` installs it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: run test lint bench venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[api,worker,dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	PORT=$(PORT) $(PY) scripts/run.py

test: $(STAMP)
	$(PY) scripts/ensure_redis.py
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy tapecore service worker tests bench scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
