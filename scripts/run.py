"""`make run`: Redis (when none answers at REDIS_URL), one worker and the API, in the foreground.

Ctrl-C or SIGTERM stops everything this script started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensure_redis import ensure_redis_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def main() -> int:
    url = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    port = os.environ.setdefault("PORT", "8000")
    children: list[subprocess.Popen[bytes]] = []
    if not redis_answers(url):
        parsed = urlparse(url)
        binary = ensure_redis_server()
        workdir = tempfile.mkdtemp(prefix="tapeserve-redis-")
        print(f"starting a private redis-server on port {parsed.port or 6379} (data in {workdir})", flush=True)
        children.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(parsed.port or 6379),
                    "--bind",
                    parsed.hostname or "127.0.0.1",
                    "--dir",
                    workdir,
                    "--appendonly",
                    "yes",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if time.monotonic() > deadline:
                print("redis-server did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
    python = sys.executable
    children.append(subprocess.Popen([python, "-m", "worker", "--pool", "cpu"], cwd=ROOT))
    children.append(
        subprocess.Popen([python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"], cwd=ROOT)
    )
    print(f"tapeserve: API on http://127.0.0.1:{port} (docs at /docs); Ctrl-C stops it", flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True  # Ctrl-C reaches the children too; their exits are then expected

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        if not stopping:
            print("a process exited; stopping the rest", file=sys.stderr)
            return 1
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
