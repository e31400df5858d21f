"""`make run`: Redis (when none answers at REDIS_URL), one worker and the API, in the foreground.

When nginx is installed it listens on 127.0.0.1:$PORT in front of gunicorn, which then serves
on a unix socket in a private directory: nginx reads each request whole before gunicorn sees
it, so slow clients cannot hold gunicorn (deploy/nginx/, docs/scaling.md). Without nginx,
gunicorn listens on $PORT itself. Ctrl-C or SIGTERM stops everything this script started,
and nothing else, and removes the private directories (the front door's, and a private Redis's data).
"""

from __future__ import annotations

import os
import re
import shutil
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
from ensure_nginx import find_nginx  # noqa: E402
from ensure_redis import ensure_redis_server  # noqa: E402

from tapecore.limits import Limits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "tapeserve.conf.template"
PROBLEMS_DIR = ROOT / "deploy" / "nginx" / "problems"

# The main configuration around the template (compose's nginx image has its own): everything
# nginx writes goes to the private directory, so it runs as any user, root or not.
NGINX_MAIN = """\
{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log stderr error;
daemon off;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/tapeserve.conf;
}}
"""


def render_template(text: str, values: dict[str, str]) -> str:
    """Substitute ${NAME} for the given names only, as the nginx image's envsubst does."""
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
    left = sorted(set(re.findall(r"\$\{(TAPESERVE_\w+)\}", rendered)))
    if left:
        raise ValueError(f"no value for {', '.join(left)}")
    return rendered


def template_values(*, listen: str, api: str, max_body_bytes: int) -> dict[str, str]:
    """The template's variables for nginx on `listen` in front of gunicorn at `api`."""
    return {
        "TAPESERVE_LISTEN": listen,
        "TAPESERVE_API": api,
        "TAPESERVE_PROBLEMS_DIR": str(PROBLEMS_DIR),
        "TAPESERVE_MAX_BODY_BYTES": str(max_body_bytes),
    }


def write_nginx_config(workdir: Path, values: dict[str, str]) -> Path:
    """Write nginx.conf and the rendered template into `workdir`; return nginx.conf's path."""
    (workdir / "tapeserve.conf").write_text(render_template(NGINX_TEMPLATE.read_text(), values))
    # As root, nginx would hand its workers to `nobody`, who cannot read the private directory:
    # they run as the user of make run instead, like gunicorn and the worker.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    main = workdir / "nginx.conf"
    main.write_text(NGINX_MAIN.format(user=user, workdir=workdir))
    return main


def redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def start_redis(url: str, workdir: str) -> subprocess.Popen[bytes]:
    """Start a private redis-server for `url`, its data in `workdir`."""
    parsed = urlparse(url)
    binary = ensure_redis_server()
    print(f"starting a private redis-server on port {parsed.port or 6379} (data in {workdir})", flush=True)
    argv = [binary, "--port", str(parsed.port or 6379), "--bind", parsed.hostname or "127.0.0.1", "--dir", workdir]
    argv += ["--appendonly", "yes", "--maxmemory-policy", "noeviction"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL)


def main() -> int:
    url = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    port = os.environ.setdefault("PORT", "8000")
    children: list[subprocess.Popen[bytes]] = []
    private_dirs: list[str] = []  # removed on exit, with whatever the children wrote there
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True  # Ctrl-C reaches the children too; their exits are then expected

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if not redis_answers(url):
            private_dirs.append(tempfile.mkdtemp(prefix="tapeserve-redis-"))
            children.append(start_redis(url, private_dirs[-1]))
            deadline = time.monotonic() + 10
            while not redis_answers(url):
                if time.monotonic() > deadline or stopping:
                    print("redis-server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        python = sys.executable
        host = os.environ.get("HOST", "127.0.0.1")
        nginx = find_nginx()
        frontdoor = tempfile.mkdtemp(prefix="tapeserve-frontdoor-")  # 0700: the socket is ours alone
        private_dirs.append(frontdoor)
        socket_path = Path(frontdoor) / "api.sock"
        gunicorn = [python, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        if nginx is None:
            print("nginx is not installed: gunicorn serves clients directly (slow clients can hold it)", flush=True)
        else:
            gunicorn += ["--bind", f"unix:{socket_path}"]
            os.environ.setdefault("TAPESERVE_PROXY_HOPS", "1")  # the client's address is in X-Forwarded-For
        children.append(subprocess.Popen([python, "-m", "worker", "--pool", "cpu"], cwd=ROOT))
        children.append(subprocess.Popen([*gunicorn, "service:create_app()"], cwd=ROOT))
        if nginx is not None:
            max_body_bytes = int(os.environ.get("TAPESERVE_MAX_BODY_BYTES") or Limits().max_body_bytes)
            values = template_values(listen=f"{host}:{port}", api=f"unix:{socket_path}", max_body_bytes=max_body_bytes)
            config = write_nginx_config(Path(frontdoor), values)
            nginx_argv = [nginx, "-p", frontdoor, "-e", "stderr", "-c", str(config)]
            children.append(subprocess.Popen(nginx_argv, cwd=frontdoor))
        front = "nginx in front of gunicorn" if nginx else "gunicorn"
        print(f"tapeserve: API on http://{host}:{port} ({front}; docs at /docs); Ctrl-C stops it", flush=True)
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
                child.wait()
        for path in private_dirs:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
