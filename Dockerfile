# syntax=docker/dockerfile:1
#
# tapeserve images, one Dockerfile, one target per role:
#
#   docker build --target api        -t tapeserve-api .         # Flask + gunicorn, no TensorFlow
#   docker build --target worker     -t tapeserve-worker .      # RQ worker, tensorflow-cpu
#   docker build --target worker-gpu -t tapeserve-worker-gpu .  # RQ worker, tensorflow[and-cuda]
#   docker build --target dashboard  -t tapeserve-dashboard .   # rq-dashboard (compose profile "ops")
#
# The GPU worker's base is a build argument: any NVIDIA CUDA 12 image works, e.g.
#   docker build --target worker-gpu --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04 .
# The `base` flavour is enough: the tensorflow[and-cuda] wheels bring their own CUDA, cuDNN,
# cuBLAS and NCCL libraries (nvidia-*-cu12), so the image only needs the host's driver, which
# the NVIDIA Container Toolkit mounts in. Ubuntu 24.04 ships Python 3.12, which TensorFlow 2.21
# supports.
#
# Code runs from /app, laid out as in a checkout (service/, worker/, openapi.yaml,
# gunicorn.conf.py); /opt/venv holds only the third-party dependencies, pinned by constraints.txt.
# Tags are pinned; for byte-for-byte rebuilds append the digest that
# `docker buildx imagetools inspect <image>` prints (image@sha256:...).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-base-ubuntu24.04

# ---------------------------------------------------------------- common bases

FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
# A fixed, numeric uid so that orchestrators can check runAsNonRoot; a home for Keras's cache.
RUN groupadd --system --gid 10001 tapeserve \
    && useradd --system --uid 10001 --gid tapeserve --create-home --shell /usr/sbin/nologin tapeserve

# pyproject.toml and constraints.txt with empty packages: enough for pip to resolve the extras
# without the source, so a code change does not reinstall TensorFlow (the layer stays cached).
FROM python-base AS project-manifest
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN mkdir service worker tapecore && touch service/__init__.py worker/__init__.py tapecore/__init__.py

FROM python-base AS venv
COPY --from=project-manifest /src /src
WORKDIR /src
RUN python -m venv /opt/venv

# ---------------------------------------------------------------- dependencies
# Each installs the project's extra, then removes the (empty) project itself: the real code
# is copied to /app in the runtime stage.

FROM venv AS api-deps
RUN pip install --no-cache-dir -c constraints.txt ".[api]" \
    && pip uninstall --yes tapeserve

FROM venv AS worker-deps
RUN pip install --no-cache-dir -c constraints.txt ".[worker]" \
    && pip uninstall --yes tapeserve

# rq-dashboard 0.9.0 imports `six` without declaring it, so six is installed alongside.
FROM venv AS dashboard-deps
RUN pip install --no-cache-dir -c constraints.txt "rq-dashboard==0.9.0" "six==1.17.0"

# ---------------------------------------------------------------- api

FROM python-base AS api
COPY --from=api-deps /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py openapi.yaml ./
# The API is the shared core and service/ only: no worker code, never TensorFlow.
COPY tapecore/ tapecore/
COPY service/ service/
# prometheus-client's multiprocess mode: one file per gunicorn worker, in a directory they share.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tapeserve-prometheus
RUN install -d -o tapeserve -g tapeserve -m 0700 /tmp/tapeserve-prometheus
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client, os; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('PORT', '8000')), timeout=4); c.request('GET', '/healthz'); raise SystemExit(c.getresponse().status != 200)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"]

# ---------------------------------------------------------------- worker (CPU)

FROM python-base AS worker
COPY --from=worker-deps /opt/venv /opt/venv
WORKDIR /app
COPY tapecore/ tapecore/
COPY worker/ worker/
USER 10001:10001
# Importing TensorFlow and registering with Redis takes a while: a minute's grace.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "worker", "--healthcheck"]
CMD ["python", "-m", "worker", "--pool", "cpu"]

# ---------------------------------------------------------------- worker (GPU)

FROM ${CUDA_IMAGE} AS cuda-python-base
ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
# Not version-pinned: Ubuntu's archive drops a package's superseded versions at its next
# security update, so a pin would break the build; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tapeserve \
    && useradd --system --uid 10001 --gid tapeserve --create-home --shell /usr/sbin/nologin tapeserve

FROM cuda-python-base AS worker-gpu-deps
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
COPY --from=project-manifest /src /src
WORKDIR /src
# The base dependencies (".") plus TensorFlow with CUDA in place of the worker extra's
# tensorflow-cpu: both wheels provide the `tensorflow` package, so they must not meet.
RUN python3.12 -m venv /opt/venv \
    && pip install --no-cache-dir -c constraints.txt . "tensorflow[and-cuda]==2.21.0" \
    && pip uninstall --yes tapeserve

FROM cuda-python-base AS worker-gpu
COPY --from=worker-gpu-deps /opt/venv /opt/venv
WORKDIR /app
COPY tapecore/ tapecore/
COPY worker/ worker/
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["python", "-m", "worker", "--healthcheck"]
CMD ["python", "-m", "worker", "--pool", "gpu"]

# ---------------------------------------------------------------- rq-dashboard (ops)

FROM python-base AS dashboard
COPY --from=dashboard-deps /opt/venv /opt/venv
USER 10001:10001
EXPOSE 9181
# rq-dashboard takes its password from RQ_DASHBOARD_PASSWORD only; this reads it from the file
# named by RQ_DASHBOARD_PASSWORD_FILE (a compose secret), and refuses to serve without
# authentication rather than open the queues to anyone who reaches the port.
ENTRYPOINT ["/bin/sh", "-c", "if [ -n \"${RQ_DASHBOARD_PASSWORD_FILE:-}\" ]; then RQ_DASHBOARD_PASSWORD=\"$(cat \"$RQ_DASHBOARD_PASSWORD_FILE\")\" || exit 1; export RQ_DASHBOARD_PASSWORD; fi; if [ -z \"${RQ_DASHBOARD_USERNAME:-}\" ] || [ -z \"${RQ_DASHBOARD_PASSWORD:-}\" ]; then echo 'dashboard: set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD (or RQ_DASHBOARD_PASSWORD_FILE); refusing to start without authentication' >&2; exit 64; fi; exec \"$@\"", "dashboard-entrypoint"]
# 401 means the server answers and authentication is on: healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client; c = http.client.HTTPConnection('127.0.0.1', 9181, timeout=4); c.request('GET', '/'); raise SystemExit(c.getresponse().status not in (200, 401))"]
# --json: tapeserve's jobs are JSON (tapecore.protocol.OrjsonSerializer), never pickles.
CMD ["rq-dashboard", "--json", "--bind", "0.0.0.0", "--port", "9181"]
