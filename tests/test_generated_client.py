"""A Python client generated from openapi.yaml (openapi-python-client) against the live service.

If the generator cannot express part of the spec, the spec is what gets fixed.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT, Stack
from tests.examples import EXAMPLE_1, EXAMPLE_2, EXAMPLE_3

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    generator = Path(sys.executable).parent / "openapi-python-client"
    if not generator.exists():
        pytest.fail("openapi-python-client is not installed (it is in the dev extra)")
    out = tmp_path_factory.mktemp("client")
    package = out / "tapeserve_client"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    run = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(ROOT / "openapi.yaml"),
            "--meta",
            "none",
            "--output-path",
            str(package),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("tapeserve_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.startswith("tapeserve_client")]:
            del sys.modules[name]
        shutil.rmtree(out, ignore_errors=True)


def client_for(generated: ModuleType, stack: Stack) -> Any:
    return generated.Client(
        base_url=stack.base, raise_on_unexpected_status=True, timeout=importlib.import_module("httpx").Timeout(60.0)
    )


@pytest.mark.parametrize(
    ("example", "target", "grads"),
    [(EXAMPLE_1, 9.0, {"x": 6.0}), (EXAMPLE_2, 114.0, {"x": [[6.0] * 3] * 2, "z": 12.0}), (EXAMPLE_3, 7.0, {"x": 6.0})],
    ids=["example-1", "example-2", "example-3"],
)
def test_contract_examples_through_the_generated_client(
    generated: ModuleType, stack: Stack, example: dict[str, Any], target: float, grads: dict[str, Any]
) -> None:
    post = importlib.import_module("tapeserve_client.api.gradients.post_gradients")
    models = importlib.import_module("tapeserve_client.models")
    with client_for(generated, stack) as client:
        response = post.sync_detailed(client=client, body=models.GradientRequest.from_dict(example))
    assert response.status_code == 200
    job = response.parsed
    assert isinstance(job, models.Job)
    result = job.to_dict()["result"]
    assert result["target"]["value"] == target
    assert {k: v["value"] for k, v in result["gradients"].items()} == grads


def test_an_async_job_through_the_generated_client(generated: ModuleType, stack: Stack) -> None:
    post = importlib.import_module("tapeserve_client.api.gradients.post_gradients")
    get_job = importlib.import_module("tapeserve_client.api.jobs.get_job")
    models = importlib.import_module("tapeserve_client.models")
    with client_for(generated, stack) as client:
        accepted = post.sync_detailed(
            client=client, body=models.GradientRequest.from_dict(EXAMPLE_3), prefer="respond-async"
        )
        assert accepted.status_code == 202
        job_id = str(accepted.parsed.id)
        assert accepted.headers["Location"] == f"/v1/jobs/{job_id}"
        done = get_job.sync_detailed(job_id, client=client, prefer="wait=30")
    assert done.status_code == 200
    assert isinstance(done.parsed, models.Job)
    assert done.parsed.status.value == "finished"
    assert done.parsed.to_dict()["result"]["gradients"]["x"]["value"] == 6.0
