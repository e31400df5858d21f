"""`make run` (scripts/run.py) cleans up after itself: the private Redis it starts and its data go on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, ROOT, free_port, redis_ping, wait_until


def test_ctrl_c_stops_the_private_redis_and_removes_its_data_dir() -> None:
    redis_port = free_port()  # nothing answers there, so run.py starts a redis-server of its own
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", PORT=str(free_port()), PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        [PYTHON, "scripts/run.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert run.stdout is not None
        first = run.stdout.readline()
        found = re.search(r"data in (\S+)\)", first)
        assert found, first
        workdir = Path(found.group(1))
        wait_until(lambda: redis_ping(redis_port), 20, "the private redis-server")
        assert workdir.is_dir()
        while not (line := run.stdout.readline()).startswith("tapeserve: API on"):  # all started
            assert line, "run.py exited before it started the API"
    finally:
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert not workdir.exists(), f"{workdir} is left behind"
    assert not redis_ping_or_false(redis_port), "the private redis-server still answers"


def redis_ping_or_false(port: int) -> bool:
    try:
        return redis_ping(port)
    except Exception:  # refused: nothing listens any more
        return False
