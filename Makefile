# `make run` and `make test` set themselves up on a fresh machine (Python 3.11+ and, for
# Redis, either a redis-server on PATH or apt-get to install one). `make run` puts nginx in
# front of the API when it is installed (`python3 scripts/ensure_nginx.py` installs it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
# `make fuzz`: examples per property of the hostile-input fuzzers (at 500 the run took 3 minutes on 2 cores).
FUZZ_EXAMPLES ?= 500

.PHONY: run test fuzz lint bench venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[api,worker,dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	PORT=$(PORT) $(PY) scripts/run.py

# The same examples on every run: hypothesis derandomized, schemathesis seeded (tests/conftest.py).
test: $(STAMP)
	$(PY) scripts/ensure_redis.py
	TAPESERVE_HYPOTHESIS_PROFILE=deterministic $(PY) -m pytest -q

# Fresh random examples, many more of them: the fuzzers only, bounded by their example counts.
fuzz: $(STAMP)
	$(PY) scripts/ensure_redis.py
	TAPESERVE_HYPOTHESIS_PROFILE=fuzz TAPESERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_hostile.py tests/test_expression.py tests/test_tensor_fastpaths.py tests/test_schemathesis.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy tapecore service worker tests bench scripts
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
