"""`GET /openapi.yaml` and `GET /docs`: the spec, and Swagger UI over it (served locally)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint("docs", __name__)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tapeserve API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/docs/static/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.yaml", dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});
  </script>
</body>
</html>
"""


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """Serve the OpenAPI description of this service."""
    path = Path(current_app.config["OPENAPI_PATH"])
    return Response(path.read_bytes(), mimetype="application/yaml")


@bp.get("/docs")
def docs() -> Response:
    """Serve an interactive page over the spec."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    """Serve Swagger UI's files from its Python package (never from a CDN)."""
    return send_from_directory(swagger_ui_path, filename, max_age=86_400)
