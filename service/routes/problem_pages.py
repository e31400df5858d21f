"""`GET /problems/{kind}`: the page a problem document's `type` points at, one per kind."""

from __future__ import annotations

from html import escape

from flask import Blueprint, Response
from werkzeug.exceptions import NotFound

from ..problems import problem_catalogue

bp = Blueprint("problem_pages", __name__)

# Built once: the error classes have all registered their kinds by the time routes load.
CATALOGUE = problem_catalogue()

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} ({status})</title></head>
<body>
  <h1>{title}</h1>
  <p>HTTP status: <strong>{status}</strong>. Problem type: <code>/problems/{kind}</code>.</p>
  <h2>What it means</h2>
  <p>{meaning}</p>
  <h2>What to do</h2>
  <p>{action}</p>
</body>
</html>
"""


@bp.get("/problems/<kind>")
def problem_page(kind: str) -> Response:
    """Describe one kind of problem: its title, status, what it means and what to do."""
    problem = CATALOGUE.get(kind)
    if problem is None:
        raise NotFound(f"there is no problem type {kind[:64]!r}; the API's types are listed in openapi.yaml")
    page = PAGE.format(
        kind=escape(problem.kind),
        title=escape(problem.title),
        status=problem.status,
        meaning=escape(problem.meaning),
        action=escape(problem.action),
    )
    return Response(page, mimetype="text/html")
