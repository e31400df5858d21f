"""Make sure an `nginx` binary exists, installing Debian's package when it does not.

`make run` puts nginx in front of the API when it finds one, and the front-door tests
(tests/test_frontdoor.py) need it; CI runs this first. Without apt-get it says so and exits
0: nginx is optional for `make run`, which then serves from gunicorn alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def find_nginx() -> str | None:
    """Return nginx's path; Debian installs it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def ensure_nginx() -> str | None:
    """Return the path of nginx, installing it with apt-get if it is missing and apt-get is there."""
    found = find_nginx()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        print("nginx is not installed and apt-get is not available: make run will serve without it", file=sys.stderr)
        return None
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing nginx with apt-get ...", file=sys.stderr)
    subprocess.run([*sudo, apt, "update", "-qq"], check=True, env=env)
    # The package's own service is never used: each run starts a private nginx with its own config.
    subprocess.run(
        [*sudo, apt, "install", "-y", "-qq", "--no-install-recommends", "nginx"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    found = find_nginx()
    if not found:
        sys.exit("apt-get installed nginx but it is not in /usr/sbin or on PATH")
    return found


if __name__ == "__main__":
    print(ensure_nginx() or "nginx: not installed")
