"""A burst of requests wider than the connection pool and the thread pool: every request is
answered, none waits out the pool's timeout (the request-scoped transaction gives its
connection back in a second thread-pool call, which a full thread pool used to starve)."""

from concurrent.futures import ThreadPoolExecutor, wait

from fastapi.testclient import TestClient


def test_a_burst_of_reads_wider_than_every_pool_is_all_answered(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {"model": "quern/all-minilm-l6-v2", "input": {"text": "read me"}}
    url = client.post("/v1/predictions", json=body, headers=auth).json()["urls"]["get"]
    with ThreadPoolExecutor(max_workers=200) as pool:
        futures = [pool.submit(client.get, url, headers=auth) for _ in range(200)]
        done, late = wait(futures, timeout=25)  # the pool's checkout timeout is 30 s
        assert not late, f"{len(late)} of 200 requests still waiting after 25 s"
    assert [f.result().status_code for f in done] == [200] * 200
