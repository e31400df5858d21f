"""`openapi.yaml` as data: look-ups, answers and examples checked against it, the contract's examples."""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from flask import Flask
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi.yaml"
CONTRACT_PATH = ROOT.parent / "shared" / "API.md"  # the wire contract, beside the checkout
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ROUTE_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")  # Flask's <job_id>, <path:filename>
SPEC_URI = "urn:tapeserve:openapi"

Key = tuple[str, str, str]  # (spec path, method, status)


def documented_statuses() -> set[Key]:
    """Every (path, method, status) the spec documents; `default` is a bug's 500."""
    return {
        (path, method, status)
        for path, item in SPEC["paths"].items()
        for method in HTTP_METHODS
        if method in item
        for status in item[method]["responses"]
    }


def escape(token: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def lookup(pointer: str) -> Any:
    """Return what a JSON Pointer names in the spec."""
    node: Any = SPEC
    for token in pointer.split("/")[1:]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def follow(obj: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local `$ref` (if any) to the object and its pointer."""
    while "$ref" in obj:
        pointer = obj["$ref"].removeprefix("#")
        obj = lookup(pointer)
    return obj, pointer


def documented_response(key: Key) -> tuple[dict[str, Any], str]:
    """Return the response object documented for `key`, and its pointer."""
    path, method, status = key
    pointer = "/" + "/".join(escape(t) for t in ("paths", path, method, "responses", status))
    return follow(lookup(pointer), pointer)


def closed(node: Any) -> Any:
    """Return a copy of the spec where every object schema that lists properties allows no others."""
    node = copy.deepcopy(node)

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            if isinstance(n.get("properties"), dict) and "additionalProperties" not in n:
                n["additionalProperties"] = False
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(node)
    return node


# The closed spec as one JSON Schema resource, so that its `#/components/...` references resolve.
REGISTRY: Registry[Any] = Registry().with_resource(
    SPEC_URI, Resource.from_contents(closed(SPEC), default_specification=DRAFT202012)
)


def schema_errors(instance: Any, pointer: str) -> list[str]:
    """Validate against the (closed) schema at `pointer` in the spec; return the errors found."""
    ref = f"{SPEC_URI}#{urllib.parse.quote(pointer, safe='/~')}"
    validator = OAS31Validator({"$ref": ref}, registry=REGISTRY, format_checker=OAS31Validator.FORMAT_CHECKER)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(instance)]


def assert_answer_is_documented(response: TestResponse, key: Key) -> None:
    """Check the answer's media type, headers and body against the documented response."""
    spec, pointer = documented_response(key)
    assert response.headers.get("X-Request-ID"), "every answer carries X-Request-ID"
    for name, header in spec.get("headers", {}).items():
        header, _ = follow(header, "")
        if header.get("required"):
            assert name in response.headers, f"{name} is documented as always sent"
        if name in response.headers and header["schema"].get("type") == "integer":
            assert re.fullmatch(r"[0-9]+", response.headers[name]), (name, response.headers[name])
    content = spec.get("content")
    if not content:
        assert response.data == b"", "the documented answer has no body"
        return
    mimetype = response.mimetype or ""
    media = mimetype if mimetype in content else "*/*"
    assert media in content, f"{mimetype} is not documented: {sorted(content)}"
    schema_pointer = f"{pointer}/content/{escape(media)}/schema"
    if mimetype.endswith("json"):
        errors = schema_errors(json.loads(response.data), schema_pointer)
    elif mimetype.endswith("yaml"):
        errors = schema_errors(yaml.safe_load(response.data), schema_pointer)
    elif lookup(schema_pointer).get("format") == "binary":
        errors = []
    else:
        errors = schema_errors(response.get_data(as_text=True), schema_pointer)
    assert not errors, "\n".join(errors)


def app_routes(app: Flask) -> dict[tuple[str, str], str]:
    """Map (spec path, method) to the endpoint for every route but Flask's own /static."""
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes[(ROUTE_PARAM.sub(r"{\1}", rule.rule), method.lower())] = rule.endpoint
    return routes


def media_examples() -> Iterator[tuple[str, str, Any]]:
    """Yield (where, schema pointer, value) for every example of a request or response body."""
    objects: list[tuple[dict[str, Any], str]] = []
    for path, item in SPEC["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                continue
            base = "/" + "/".join(escape(t) for t in ("paths", path, method))
            if "requestBody" in item[method]:
                objects.append((item[method]["requestBody"], base + "/requestBody"))
            for status, response in item[method]["responses"].items():
                if "$ref" not in response:
                    objects.append((response, f"{base}/responses/{status}"))
    for name, response in SPEC["components"]["responses"].items():
        objects.append((response, f"/components/responses/{name}"))
    for obj, pointer in objects:
        for media, content in obj.get("content", {}).items():
            schema = f"{pointer}/content/{escape(media)}/schema"
            if "example" in content:
                yield f"{pointer} {media}", schema, content["example"]
            for name, example in content.get("examples", {}).items():
                yield f"{pointer} {media} {name}", schema, example["value"]


def request_examples() -> dict[str, Any]:
    """The request bodies `POST /v1/gradients` documents, by name."""
    content = SPEC["paths"]["/v1/gradients"]["post"]["requestBody"]["content"]["application/json"]
    return {name: example["value"] for name, example in content["examples"].items()}


def response_examples() -> dict[str, Any]:
    """The finished jobs `POST /v1/gradients` documents for its 200, by name."""
    content = SPEC["paths"]["/v1/gradients"]["post"]["responses"]["200"]["content"]["application/json"]
    return {name: example["value"] for name, example in content["examples"].items()}


@dataclass
class ContractExample:
    """One row of the contract's table: a request, its target's value and its gradients' values."""

    request: Any
    target: Any
    gradients: dict[str, Any]


def read_contract(text: str) -> tuple[dict[str, ContractExample], Any, Any]:
    """Return the contract's table of examples, its explicit graph and its result document."""
    rows = re.findall(r"^\| (\d+) \| `(\{.*\})` \| (.*) \|$", text, re.M)
    examples = {}
    for number, body, result in rows:
        values = {name: json.loads(v) for name, v in re.findall(r"(\w+):?\s+`([^`]+)`", result)}
        target = values.pop("target")
        examples[f"example{number}"] = ContractExample(json.loads(body), target, values)
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    graph = next(b for b in blocks if "ops" in b)
    result = next(b for b in blocks if "status" in b)
    return examples, graph, result


def is_within(small: Any, big: Any) -> bool:
    """Say whether `small` is `big` with some object members left out."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and is_within(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(is_within, small, big))
    return bool(small == big)
