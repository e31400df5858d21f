"""The API's tests pass with the `api` extra alone: TensorFlow and numpy are made unimportable for them."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, ROOT

# The API's own test modules (the parser is tapecore's, plain Python by import-linter). The tests
# in them that run jobs ask for the `worker` fixture, which skips without TensorFlow.
API_MODULES = [
    "tests/test_api.py",
    "tests/test_auth.py",
    "tests/test_openapi.py",
    "tests/test_parsecache.py",
    "tests/test_ratelimit.py",
    "tests/test_costmodel.py",
    "tests/test_redisconn.py",
    "tests/test_problem_types.py",
]
PLUGIN = ["-p", "tests.plugins.no_tensorflow"]


def test_the_blocker_makes_tensorflow_and_numpy_unimportable() -> None:
    for package in ("tensorflow", "numpy"):
        probe = f"import tests.plugins.no_tensorflow\ntry: import {package}\nexcept ModuleNotFoundError as e: print(e)"
        out = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == f"{package} is blocked: the API must run with the `api` extra alone", out.stderr


def test_the_api_tests_pass_without_tensorflow_or_numpy() -> None:
    # The plugin fails any test that skips for want of TensorFlow without asking for the engine.
    run = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLUGIN, *API_MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
