"""Make sure a `redis-server` binary is on PATH, installing Debian's package when it is not.

The tests start their own private servers from this binary; `make run` starts one when none
answers at REDIS_URL. Nothing else on the machine is changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def ensure_redis_server() -> str:
    """Return the path of redis-server, installing it with apt-get if it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        sys.exit("redis-server is not installed and apt-get is not available: install Redis 6.2+ first")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("installing redis-server with apt-get ...", file=sys.stderr)
    subprocess.run([*sudo, apt, "update", "-qq"], check=True)
    subprocess.run([*sudo, apt, "install", "-y", "-qq", "redis-server"], check=True)
    found = shutil.which("redis-server")
    if not found:
        sys.exit("apt-get installed redis-server but it is not on PATH")
    return found


if __name__ == "__main__":
    print(ensure_redis_server())
