"""Issue 21: workers on other hosts. A cluster of two worker hosts, each in its own network
namespace (scripts/netns_cluster.py), runs predictions created on the API; then one host loses
power (its link cut, then kill -9 of everything in its namespace) in the middle of a
text-generation batch, and every prediction still succeeds, recorded once."""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from scripts.netns_cluster import Cluster, netns_available
from tests.support.helpers import register_and_login
from tests.support.processes import wait_until
from tests.system.test_faults import AUDIT

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
SEED_CACHE = Path.home() / ".cache" / "quern" / "models"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if reason := netns_available():  # probed here, not at collection
        pytest.skip(f"no network namespaces here: {reason}")
    # The cluster's own settings, not the ones tests/conftest.py set for the in-process API.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("QUERN_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        QUERN_LOG_FORMAT="text",
        QUERN_RATE_LIMIT_WRITE="1000000/minute",
        QUERN_RATE_LIMIT_READ="1000000/minute",
        QUERN_RATE_LIMIT_AUTH="1000000/minute",
        # A dead host's predictions go back to the queue 3 s after its last heartbeat.
        QUERN_WORKER_LEASE_S="3",
        QUERN_WORKER_SWEEP_INTERVAL_S="0.5",
        QUERN_WORKER_RETRY_BASE_S="0.5",
        QUERN_WORKER_RETRY_CAP_S="2",
        QUERN_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS="5000",
    )
    cluster = Cluster(
        tmp_path_factory.mktemp("cluster"),
        prefix="quern-t",  # not make cluster's names: both may run at once
        subnet="10.78.0",
        api_port=8000,
        redis_port=6391,
        postgres_port=5491,
        env=env,
        # Each host's own cache, started from the converted weights when this machine has them
        # (a new machine converts them itself: ~30 s more on 2 cores).
        seed_cache=SEED_CACHE if SEED_CACHE.is_dir() else None,
        webhooks=False,
    )
    try:
        cluster.up(2)
        with psycopg.connect(cluster.sql_url, autocommit=True) as conn:
            conn.execute(AUDIT)  # records any terminal status changed, any output written twice
        yield cluster
    finally:
        cluster.down()
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith("quern-t-")]


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.base_url, timeout=30) as client:
        client.headers.update(register_and_login(client))
        yield client


def create(client: httpx.Client, model: str, inputs: list[dict[str, object]]) -> list[str]:
    ids = []
    for input in inputs:
        response = client.post("/v1/predictions", json={"model": model, "input": input})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def rows(cluster: Cluster, ids: list[str]) -> dict[str, tuple[str, int, bool]]:
    """id -> (status, attempts, has an output), straight from PostgreSQL."""
    with psycopg.connect(cluster.sql_url) as conn:
        found = conn.execute(
            "SELECT id, status, attempts, output IS NOT NULL FROM predictions WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in found}


def wait_terminal(cluster: Cluster, ids: list[str], timeout: float) -> dict[str, str]:
    def done() -> bool:
        return {status for status, _, _ in rows(cluster, ids).values()} <= TERMINAL

    wait_until(done, timeout, f"{len(ids)} predictions")
    return {id: status for id, (status, _, _) in rows(cluster, ids).items()}


def ran_on(cluster: Cluster, ids: list[str]) -> dict[int, set[str]]:
    """Host index -> the predictions whose task succeeded in that host's worker log."""
    found: dict[int, set[str]] = {}
    for index, host in cluster.hosts.items():
        lines = [line for line in host.log_text().splitlines() if " succeeded in " in line]
        found[index] = {id for id in ids if any(id in line for line in lines)}
    return found


def test_predictions_run_on_both_hosts_and_a_dead_host_loses_none(
    cluster: Cluster, client: httpx.Client
) -> None:
    # Each host talks to the control node over its own interface only.
    for host in cluster.hosts.values():
        assert host.address not in ("127.0.0.1", cluster.address)
        assert "worker@host-" in host.node_name and host.process.poll() is None

    texts = [{"text": f"cluster sentence {i}"} for i in range(24)]
    embeddings = []
    for start in range(0, len(texts), 6):  # in waves, so both idle hosts get some
        embeddings += create(client, "quern/all-minilm-l6-v2", texts[start : start + 6])
        time.sleep(0.5)
    assert set(wait_terminal(cluster, embeddings, 120).values()) == {"succeeded"}
    output = client.get(f"/v1/predictions/{embeddings[0]}").json()
    assert len(output["output"]) == 384
    # URLs in what the API returns name the bridge address, reachable from other hosts.
    assert output["urls"]["get"].startswith(cluster.base_url)

    prompts = [
        {"prompt": f"Count to ten ({i}).", "max_new_tokens": 24, "temperature": 0} for i in range(8)
    ]
    generations = create(client, "quern/smollm2-135m-instruct", prompts)

    # Kill the first host to load the text model, a second into its first batch.
    def loaded() -> int | None:
        for index, host in cluster.hosts.items():
            if "loaded text-generation" in host.log_text():
                return index
        return None

    wait_until(lambda: loaded() is not None, 120, "a host to load the text model")
    time.sleep(1)
    victim = loaded()
    assert victim is not None
    assert {status for status, _, _ in rows(cluster, generations).values()} != {"succeeded"}
    # A power cut: the link goes first, so no FIN or RST of the dead sockets reaches the
    # servers; its sessions stay open on PostgreSQL's side (an open transaction ends after
    # QUERN_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS), its Redis connection too.
    killed = cluster.kill_host(victim, cut_link=True)
    assert killed >= 1
    wait_until(lambda: cluster.hosts[victim].process.poll() is not None, 10, "the kill")
    killed_at = time.monotonic()

    final = wait_terminal(cluster, generations, 240)
    print(f"host {victim} killed; all 8 done {time.monotonic() - killed_at:.1f}s later")
    assert set(final.values()) == {"succeeded"}, final
    recorded = rows(cluster, generations)
    assert all(has_output for _, _, has_output in recorded.values())
    # Some were running on the dead host: their lease ran out and another attempt ran them.
    assert max(attempts for _, attempts, _ in recorded.values()) >= 2, recorded
    # Recorded once: no terminal status ever changed, no output written twice.
    with psycopg.connect(cluster.sql_url) as conn:
        assert conn.execute("SELECT id, what FROM audit_violations").fetchall() == []

    survivor = next(index for index in cluster.hosts if index != victim)

    def accounted() -> bool:  # a task logs its success just after its outcomes are recorded
        ran = ran_on(cluster, embeddings + generations)
        return set(generations) - ran[victim] <= ran[survivor]

    wait_until(accounted, 10, "the survivor's log to show the rest")  # the survivor ran the rest
    ran = ran_on(cluster, embeddings + generations)
    assert ran[victim] and ran[survivor], ran  # both hosts ran predictions
