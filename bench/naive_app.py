"""The service a team writes first: Flask, the TensorFlow code inside the request, JSON both ways.

The peer to beat. It takes the same request document as tapeserve, runs the workload's
hand-written tape code (the very functions of the floor, bench.workloads) in the request,
and answers with plain `jsonify`. No queue, no validation, no cache: one gunicorn sync worker.

    gunicorn -w 1 -k sync "bench.naive_app:create_app()"
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flask import Flask, Response, abort, jsonify, request  # noqa: E402

from bench.workloads import WORKLOADS, decode_arrays  # noqa: E402  (imports TensorFlow)


def create_app() -> Flask:
    """Build the naive app: `POST /v1/<workload>` runs that workload's hand-written code."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.post("/v1/<workload>")
    def gradients(workload: str) -> Response:
        if workload not in WORKLOADS:
            abort(404)
        doc = request.get_json()
        target, grads = WORKLOADS[workload].hand_for(doc)(decode_arrays(doc))
        return jsonify(
            {
                "target": {"value": target.tolist(), "dtype": "float32", "shape": list(target.shape)},
                "gradients": {
                    name: {"value": g.tolist(), "dtype": "float32", "shape": list(g.shape)}
                    for name, g in zip(doc["sources"], grads, strict=True)
                },
            }
        )

    return app
