"""The app factory: settings, Redis, the job queue, the routes and the error handlers."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from tapecore.limits import Limits
from tapecore.logs import configure_logging
from tapecore.ops import REGISTRY
from tapecore.redisconn import connect_from_env

from .auth import KeyRing, install_auth, install_key_check, load_keys
from .config import DEFAULTS, inflight_body_bytes
from .inflight import BodyBudget, install_body_budget
from .jobqueue import JobQueue
from .metrics import install_metrics
from .problems import register_error_handlers
from .ratelimit import address_limit, install_rate_limit
from .responses import OrjsonProvider
from .routes import docs, gradients, health, jobs, ops, problem_pages
from .state import Services
from .waiting import WaitSlots

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REDIS_TIMEOUT_S = 5.0  # a Redis call that takes longer than this fails (and becomes a 503)
JOB_TIMEOUT_MARGIN_S = 30  # RQ's own job time-out sits behind the TF process's time limit


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the API: defaults, then `REDIS_URL` and `TAPESERVE_*` from the environment, then `config`."""
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("TAPESERVE")
    if "REDIS_URL" in os.environ:
        app.config["REDIS_URL"] = os.environ["REDIS_URL"]
    if config:
        app.config.update(config)
    if not app.testing:
        configure_logging(app.config["LOG_FORMAT"])

    if int(app.config["PROXY_HOPS"]) > 0:  # the client's address (for the address limit) is in X-Forwarded-For
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["PROXY_HOPS"]))  # type: ignore[method-assign]
    limits = Limits.from_mapping(app.config)
    # One byte more than the limit: a chunked body must be read one byte past it to tell a body
    # at the limit from one over it (service.body answers 413 for that byte, naming the limit).
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes + 1
    redis = connect_from_env(
        app.config["REDIS_URL"],
        socket_timeout=REDIS_TIMEOUT_S + float(app.config["MAX_WAIT_S"]),
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=10,
        retry_on_timeout=False,
        max_connections=int(app.config["REDIS_MAX_CONNECTIONS"]),
    )
    app.extensions["tapeserve"] = Services(
        redis=redis,
        jobs=JobQueue(
            redis,
            result_ttl=int(app.config["RESULT_TTL_S"]),
            failure_ttl=int(app.config["FAILURE_TTL_S"]),
            queued_ttl=int(app.config["QUEUED_TTL_S"]),
            job_timeout=limits.time_limit_s + JOB_TIMEOUT_MARGIN_S,
            worker_check_s=float(app.config["WORKER_CHECK_S"]),
        ),
        limits=limits,
        registry=REGISTRY,
        pools=tuple(p.strip() for p in str(app.config["POOLS"]).split(",") if p.strip()),
        body_budget=BodyBudget(inflight_body_bytes(app.config, limits)),
        waits=WaitSlots(int(app.config["MAX_WAITING_REQUESTS"])),
    )

    @app.before_request
    def request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID_RE.match(given) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    # First: a body that does not fit is refused before anything else is spent on it.
    install_body_budget(app, app.extensions["tapeserve"].body_budget, limits.max_body_bytes)
    install_metrics(app)
    ring = KeyRing(load_keys(str(app.config["API_KEYS"]), str(app.config["API_KEYS_FILE"])))
    # In this order: a wrong key is counted against its address before it is refused.
    install_auth(app, ring)
    by_address = address_limit(app.config["ADDRESS_RATE_LIMIT"], ring.enabled)
    install_rate_limit(app, str(app.config["RATE_LIMIT"]), by_address, app.config["REDIS_URL"])
    install_key_check(app)
    for module in (gradients, jobs, ops, health, docs, problem_pages):
        app.register_blueprint(module.bp)
    register_error_handlers(app)
    return app
