"""The operations files: docker-compose.gpu.yml, Prometheus's config and Grafana's provisioning
and dashboard, checked without Docker or a network; and Flower, run for real (slow).

The compose checks reuse tests/ops/test_compose_file.py's interpolation and vendored Compose
Specification schema. The dashboard's PromQL may name only metrics that Quern, Flower or
Prometheus itself export, so a renamed metric shows up here rather than as an empty panel.
"""

import base64
import importlib.util
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jsonschema.validators import validator_for
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import DATABASE_URL, WORKER_REDIS_URL
from tests.ops.test_compose_file import (
    COMPOSE_FILE,
    ROOT,
    SCHEMA_FILE,
    TEST_ENV,
    interpolate,
    published_ports,
    raw_compose,
    run_compose,
)
from tests.support.live import LiveStack
from tests.support.processes import free_port, http_ok, start, stop, wait_for_prediction, wait_until

GPU_COMPOSE_FILE = ROOT / "docker-compose.gpu.yml"
OPS = ROOT / "ops"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = OPS / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards"
DASHBOARDS = OPS / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "quern.json"

# The metrics the dashboard is built on: the API's (api/metrics.py) and the workers'
# (workers/metrics.py, also read below), Flower's worker count and Prometheus's `up`.
HISTOGRAMS = {
    "quern_http_request_duration_seconds",
    "quern_prediction_total_seconds",
    "quern_batch_size",
    "quern_batch_predict_seconds",
    "quern_model_load_seconds",
}
METRICS = {
    "quern_http_requests_total",
    "quern_predictions_created_total",
    "quern_predictions_finished_total",
    "quern_queue_depth",
    "quern_prediction_retries_total",
    "quern_gpu_memory_bytes",
    "quern_webhook_deliveries_total",
    "quern_cache_hits_total",
    "quern_cache_misses_total",
    "flower_worker_online",
    "up",
}
# What the issue asks the dashboard to show, by the metric each panel is drawn from.
REQUIRED_ON_DASHBOARD = {
    "quern_predictions_finished_total",  # throughput by status and model
    "quern_predictions_created_total",
    "quern_http_requests_total",
    "quern_http_request_duration_seconds_bucket",  # latency percentiles
    "quern_queue_depth",
    "quern_batch_size_bucket",
    "quern_prediction_retries_total",
    "quern_webhook_deliveries_total",
    "quern_cache_hits_total",
    "quern_cache_misses_total",
    "flower_worker_online",  # worker count, and up{job="worker"}
    "up",
    "quern_model_load_seconds_sum",
    "quern_gpu_memory_bytes",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A worker in a container serves its metrics to the compose network, never to the host.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def exposed(name: str, kind: str) -> set[str]:
    """The names a metric has on the wire (prometheus-client appends _total to counters)."""
    if kind == "histogram":
        return {name + suffix for suffix in HISTOGRAM_SUFFIXES}
    if kind == "counter" and not name.endswith("_total"):
        return {name + "_total"}
    return {name}


def worker_metrics() -> set[str]:
    from workers import metrics

    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= exposed(family.name, family.type)
    return names


def flower_metrics() -> set[str]:
    """Every metric Flower defines (read from the installed Flower's source)."""
    spec = importlib.util.find_spec("flower")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "events.py").read_text()
    kinds = {
        "PrometheusCounter": "counter",
        "Counter": "counter",
        "Gauge": "gauge",
        "Histogram": "histogram",
    }
    names: set[str] = set()
    for kind, name in re.findall(r"""\b(\w+)\(\s*['"](flower_[a-z_]+)['"]""", source):
        names |= exposed(name, kinds[kind])
    assert "flower_worker_online" in names
    return names


def allowed_metrics() -> set[str]:
    names = set(METRICS)
    for name in HISTOGRAMS:
        names |= exposed(name, "histogram")
    return names | worker_metrics() | flower_metrics()


def defined_in_source() -> set[str]:
    """Metric names written as string literals in api/ and workers/ (Python)."""
    names: set[str] = set()
    for folder in ("api", "workers"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in re.findall(r"""['"](quern_[a-z0-9_]+)['"]""", path.read_text()):
                names.add(name)
    return names


# PromQL words that look like metric names but are not: keywords (functions and aggregations
# are recognised by the "(" that follows them).
_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_KEYWORDS |= {"and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's short-syntax volumes."""
    result: dict[str, str] = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        result[target] = source
    return result


def host_path(source: str) -> Path:
    return (ROOT / source).resolve()


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = interpolate(raw_compose(), TEST_ENV)["services"]
    return result


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


# --- docker-compose.gpu.yml ---------------------------------------------------------------


def raw_gpu_compose() -> dict[str, Any]:
    document = load_yaml(GPU_COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def test_gpu_override_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = validator_for(schema)(schema)
    errors = list(validator.iter_errors(interpolate(raw_gpu_compose(), TEST_ENV)))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_gpu_override_says_how_to_use_it() -> None:
    header = GPU_COMPOSE_FILE.read_text().split("\nservices:")[0]
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up" in header
    assert "docker-compose.gpu.yml" in COMPOSE_FILE.read_text()


def test_gpu_override_runs_one_worker_per_gpu() -> None:
    services = raw_gpu_compose()["services"]
    assert services["worker"]["deploy"]["replicas"] == 0, "the CPU worker is off by default"
    gpu_workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    assert len(gpu_workers) >= 2
    pinned: list[str] = []
    for name, service in gpu_workers.items():
        assert service["extends"] == {"file": "docker-compose.yml", "service": "worker"}
        assert service["build"]["args"]["TORCH_VARIANT"] == "cu128"
        assert service["build"]["dockerfile"] == "workers/Dockerfile"
        assert "cu128" in service["image"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        (device_id,) = device["device_ids"]
        assert name == f"worker-gpu{device_id}"
        pinned.append(device_id)
        # The container sees only its own GPU, renumbered 0.
        assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert "worker" in service["networks"]["default"]["aliases"], "scraped as `worker`"
        assert not service.get("ports")
    assert len(set(pinned)) == len(pinned), "two workers on one GPU"


def _run_compose_config(files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_compose(files, env, "config", "--format", "json")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "files", [[COMPOSE_FILE], [COMPOSE_FILE, GPU_COMPOSE_FILE]], ids=["base", "base+gpu"]
)
def test_docker_compose_config_resolves_to_a_valid_project(files: list[Path]) -> None:
    """The real Compose CLI merges and resolves the files; the result meets the schema."""
    resolved = _run_compose_config(files, TEST_ENV)
    assert resolved.returncode == 0, resolved.stderr
    project = json.loads(resolved.stdout)
    schema = json.loads(SCHEMA_FILE.read_text())
    errors = list(validator_for(schema)(schema).iter_errors(project))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    services = project["services"]
    assert {"api", "worker", "flower", "prometheus", "grafana"} <= services.keys()
    if (ROOT / ".env").exists():
        return  # an operator's .env may supply the secrets
    missing = _run_compose_config(files, {})
    assert missing.returncode != 0


@pytest.mark.timeout(120)
def test_merged_gpu_workers_keep_everything_a_worker_needs() -> None:
    resolved = _run_compose_config([COMPOSE_FILE, GPU_COMPOSE_FILE], TEST_ENV)
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    cpu = services["worker"]
    assert cpu["deploy"]["replicas"] == 0
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"
    for name in ("worker-gpu0", "worker-gpu1"):
        gpu = services[name]
        assert gpu["build"]["args"]["TORCH_VARIANT"] == "cu128"
        assert "replicas" not in gpu.get("deploy", {}), "a GPU worker must not inherit 0"
        for key in ("DATABASE_URL", "REDIS_URL", "QUERN_BROKER_VISIBILITY_TIMEOUT_S"):
            assert gpu["environment"][key] == cpu["environment"][key]
        assert gpu["environment"]["QUERN_WORKER_METRICS_PORT"] == "9808"
        assert gpu["environment"]["QUERN_WORKER_METRICS_HOST"] == ALL_INTERFACES
        assert gpu["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert [v["target"] for v in gpu["volumes"]] == ["/var/cache/quern/models"]
        assert gpu["stop_grace_period"] == cpu["stop_grace_period"]
        assert "worker" in gpu["networks"]["default"]["aliases"]
    devices = [
        services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in ("worker-gpu0", "worker-gpu1")
    ]
    assert devices == [["0"], ["1"]]


# --- Prometheus and Grafana in docker-compose.yml -------------------------------------------


def test_prometheus_and_grafana_are_on_loopback_with_data_volumes(
    services: dict[str, dict[str, Any]],
) -> None:
    assert published_ports(services["prometheus"]) == [("127.0.0.1", "9090")]
    assert published_ports(services["grafana"]) == [("127.0.0.1", "3000")]
    assert mounts(services["prometheus"])["/prometheus"] == "prometheus-data"
    assert mounts(services["grafana"])["/var/lib/grafana"] == "grafana-data"
    for name in ("prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest")


def test_grafana_needs_a_login(services: dict[str, dict[str, Any]]) -> None:
    environment = services["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == TEST_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_prometheus_reads_the_mounted_config(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    (config_flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = Path(config_flag.split("=", 1)[1])
    source = mounts(prometheus)[str(config_path.parent)]
    assert host_path(source) / config_path.name == PROMETHEUS_CONFIG
    assert any(arg.startswith("--storage.tsdb.path=/prometheus") for arg in prometheus["command"])


def test_prometheus_gets_flowers_credentials_as_files(services: dict[str, dict[str, Any]]) -> None:
    """The config names files; the entrypoint writes them from the same variables as Flower's."""
    prometheus = services["prometheus"]
    flower_auth = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    environment = prometheus["environment"]
    assert f"{environment['FLOWER_USER']}:{environment['FLOWER_PASSWORD']}" == flower_auth
    script = prometheus["entrypoint"][2]
    (flower_job,) = [
        j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "flower"
    ]
    auth = flower_job["basic_auth"]
    assert "password" not in auth and "username" not in auth, "no credentials in the repository"
    for key, variable in (("username_file", "FLOWER_USER"), ("password_file", "FLOWER_PASSWORD")):
        path = auth[key]
        assert f"printf '%s' \"${variable}\" > {path}" in script
        assert any(str(path).startswith(t.split(":")[0] + "/") for t in prometheus["tmpfs"])
    assert script.rstrip().endswith('exec /bin/prometheus "$@"')


def test_prometheus_sends_the_apis_metrics_token_from_a_file(
    services: dict[str, dict[str, Any]],
) -> None:
    """The API answers /metrics only to QUERN_METRICS_TOKEN (api/ops_access.py): the same
    variable reaches the API and, through the entrypoint, the file the api job reads."""
    prometheus = services["prometheus"]
    token = services["api"]["environment"]["QUERN_METRICS_TOKEN"]
    assert prometheus["environment"]["QUERN_METRICS_TOKEN"] == token
    (api_job,) = [
        j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "api"
    ]
    auth = api_job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert "credentials" not in auth and "bearer_token" not in api_job, "no token in the repo"
    path = auth["credentials_file"]
    assert f"printf '%s' \"$QUERN_METRICS_TOKEN\" > {path}" in prometheus["entrypoint"][2]
    assert any(str(path).startswith(t.split(":")[0] + "/") for t in prometheus["tmpfs"])


# --- ops/prometheus/prometheus.yml ---------------------------------------------------------


def test_prometheus_scrapes_the_api_every_worker_and_flower(
    services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"api", "worker", "flower"} <= jobs.keys()
    assert len(jobs) == len(config["scrape_configs"]), "job names must be unique"

    assert jobs["api"]["static_configs"] == [{"targets": ["api:8000"]}]
    assert "--port 8000" in (ROOT / "api" / "Dockerfile").read_text()
    assert published_ports(services["api"]) == [("127.0.0.1", "8000")]

    # Every replica, by DNS: no static list that `--scale worker=N` would outgrow.
    worker = jobs["worker"]
    assert "static_configs" not in worker
    (dns,) = worker["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A"
    port = services["worker"]["environment"]["QUERN_WORKER_METRICS_PORT"]
    assert dns["port"] == int(port)
    assert port in services["worker"]["expose"]
    assert services["worker"]["environment"]["QUERN_WORKER_METRICS_HOST"] == ALL_INTERFACES

    assert jobs["flower"]["static_configs"] == [{"targets": ["flower:5555"]}]
    assert "--port=5555" in services["flower"]["command"]
    assert jobs["flower"].get("metrics_path", "/metrics") == "/metrics"


# --- ops/grafana ---------------------------------------------------------------------------


def test_grafana_provisioning_is_mounted(services: dict[str, dict[str, Any]]) -> None:
    grafana = mounts(services["grafana"])
    assert host_path(grafana["/etc/grafana/provisioning"]) == OPS / "grafana" / "provisioning"
    (provider_file,) = GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml")
    (provider,) = load_yaml(provider_file)["providers"]
    assert provider["type"] == "file"
    dashboards_in_container = provider["options"]["path"]
    assert host_path(grafana[dashboards_in_container]) == DASHBOARDS
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_in_container)
    assert (DASHBOARDS / Path(home).name).is_file()


def test_grafana_datasource_is_the_compose_prometheus(services: dict[str, dict[str, Any]]) -> None:
    (datasource_file,) = GRAFANA_DATASOURCES.glob("*.yml")
    document = load_yaml(datasource_file)
    assert document["apiVersion"] == 1
    (datasource,) = document["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services
    scrape_interval = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_dashboard_has_what_provisioning_needs(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "quern" and dashboard["title"] == "Quern"
    ids = [panel["id"] for panel in dashboard["panels"]]
    ids += [p["id"] for row in dashboard["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = list(dashboard_panels(dashboard))
    assert len(panels) >= 10
    for panel in panels:
        title = panel.get("title")
        assert title, panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        assert panel["targets"], title
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", title
            assert target["expr"].strip(), title
            assert target["expr"].count("(") == target["expr"].count(")"), title
            assert target["expr"].count("{") == target["expr"].count("}"), title
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, title


def test_dashboard_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_promql_metric_names_are_found() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_seconds_bucket{status=~"5.."}'
        "[$__rate_interval]))) / sum(b_total) or vector(0) and on(x) count(up == 1)"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}


def test_dashboard_queries_only_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            unknown = names - allowed_metrics()
            assert not unknown, f"{panel['title']}: unknown metrics {sorted(unknown)}"
            used |= names
    assert used >= REQUIRED_ON_DASHBOARD, sorted(REQUIRED_ON_DASHBOARD - used)

    # Quern's own metrics must be defined in the code that serves them.
    defined = defined_in_source()
    defined |= {name + "_total" for name in defined}
    for name in sorted(used):
        if not name.startswith("quern_"):
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in defined or base in defined, f"{name} is not exported by api/ or workers/"


# --- Flower, for real ----------------------------------------------------------------------

FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def flower(live: LiveStack, tmp_path: Path) -> Iterator[str]:
    """Flower on the live stack's broker, with basic auth from FLOWER_BASIC_AUTH as in compose."""
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": WORKER_REDIS_URL,
        "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
    }
    process = start(
        ["-m", "celery", "-A", "workers.celery_app", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env, tmp_path / "flower.log",
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and http_ok(f"{base_url}/healthcheck"), 60, "Flower"
        )
        yield base_url
    finally:
        stop(process)
        print((tmp_path / "flower.log").read_text()[-4000:])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_flower_sees_the_workers_and_their_predictions(live: LiveStack, flower: str) -> None:
    auth = _basic(FLOWER_USER, FLOWER_PASSWORD)
    with httpx.Client(base_url=flower, timeout=10) as client:
        assert client.get("/api/workers").status_code == 401
        assert client.get("/api/workers", headers=_basic(FLOWER_USER, "wrong")).status_code == 401
        assert client.get("/api/tasks").status_code == 401
        assert client.get("/", headers=_basic("nobody", FLOWER_PASSWORD)).status_code == 401
        # What ops/prometheus/prometheus.yml and the compose healthcheck rely on.
        assert client.get("/healthcheck").status_code == 200
        assert client.get("/metrics").status_code == 200

        # The live worker's node name, from its banner: " -------------- test-ab12cd@host v5.x".
        names: list[str] = []

        def worker_ready() -> bool:
            names[:] = re.findall(r"(test-[0-9a-f]+@\S+) v\d", live.worker_log.read_text())
            return bool(names) and f"{names[0]} ready." in live.worker_log.read_text()

        wait_until(worker_ready, 120, "the live worker")
        node = names[0]

        workers: dict[str, Any] = {}

        def worker_listed() -> bool:
            nonlocal workers
            response = client.get("/api/workers", params={"refresh": 1}, headers=auth)
            assert response.status_code == 200, response.text
            workers = response.json()
            return node in workers

        wait_until(worker_listed, 60, f"Flower to list {node}")
        # Workers send task events only once Flower turns them on, which it does every 5 s
        # (workers/celery_app.py): after that, the task below is Flower's to see.
        time.sleep(6)

        created = live.client.post(
            "/v1/predictions",
            json={"model": "quern/all-minilm-l6-v2", "input": {"text": "Flower watches."}},
            headers=live.headers,
        )
        assert created.status_code == 201, created.text
        prediction_id = created.json()["id"]
        try:
            done = wait_for_prediction(
                live.client, f"/v1/predictions/{prediction_id}", live.headers, timeout=240
            )
        except TimeoutError as exc:
            # Another test run's worker on the same Redis database takes messages it cannot run.
            others = sorted(set(workers) - {node})
            raise TimeoutError(f"{exc}; other workers on this broker: {others}") from exc
        assert done["status"] == "succeeded", done

        task: dict[str, Any] = {}

        def task_succeeded() -> bool:
            nonlocal task
            response = client.get(
                "/api/tasks", params={"taskname": "quern.predictions.run"}, headers=auth
            )
            assert response.status_code == 200, response.text
            for candidate in response.json().values():
                if prediction_id in str(candidate.get("args")):
                    task = candidate
                    return bool(candidate.get("state") == "SUCCESS")
            return False

        wait_until(task_succeeded, 30, "Flower to record the task's success")
        assert task["name"] == "quern.predictions.run"
        assert task["worker"] == node

        # Flower's own metrics, as the dashboard queries them.
        text = client.get("/metrics").text
        assert f'flower_worker_online{{worker="{node}"}} 1.0' in text.splitlines()
        succeeded = [
            line
            for line in text.splitlines()
            if line.startswith("flower_events_total{")
            and f'worker="{node}"' in line
            and 'task="quern.predictions.run"' in line
            and 'type="task-succeeded"' in line
        ]
        assert succeeded and float(succeeded[0].rsplit(" ", 1)[1]) >= 1, text[-2000:]
