"""The load generator: `wrk`, a native HTTP client, so that the client is not what is measured.

A Python client spends milliseconds of CPU per request (more than Quern's target for the
server), on the same two cores as the server. wrk spends tens of microseconds. Each of its
connections posts a prediction and, with `Prefer: wait`, holds until it is finished: a
closed loop with `connections` predictions in flight. The Lua script cycles through the
inputs and prints a JSON summary that `run` parses.
"""

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = """
local bodies = {%(bodies)s}
local headers = {["Authorization"] = "Bearer %(token)s",
                 ["Content-Type"] = "application/json"%(prefer)s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "%(path)s", headers, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors": %%d, "p50": %%d, "p95": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int  # answered, errors included
    errors: int  # connect/read/write errors, timeouts and 4xx/5xx answers
    seconds: float
    latencies_ms: tuple[float, float, float]  # p50, p95, p99
    cpu_s: float  # wrk's own CPU time


def wrk() -> str | None:
    """The wrk binary; installed from Debian's packages on first use where apt can."""
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        found = shutil.which("wrk")
    return found


def post_predictions(
    binary: str,
    base_url: str,
    token: str,
    version: str,
    inputs: list[dict[str, Any]],
    *,
    connections: int,
    seconds: float,
    wait: bool,
    openai: bool = False,
) -> LoadResult:
    """`connections` connections posting predictions of `version` for `seconds`: to
    `/v1/predictions`, or with `openai` (embeddings only) to `/openai/v1/embeddings`, which
    waits by itself."""
    if openai:
        path, prefer = "/openai/v1/embeddings", ""
        shaped = [{"model": version, "input": value["text"]} for value in inputs]
    else:
        path, prefer = "/v1/predictions", ', ["Prefer"] = "wait=60"' if wait else ""
        shaped = [{"version": version, "input": value} for value in inputs]
    bodies = ",".join(json.dumps(json.dumps(body)) for body in shaped)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(SCRIPT % {"bodies": bodies, "token": token, "prefer": prefer, "path": path})
    try:
        with tempfile.TemporaryFile() as out:
            process = subprocess.Popen(
                [binary, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "70s",
                 "-s", script.name, base_url],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode()
    finally:
        Path(script.name).unlink()
    summary = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    return LoadResult(
        requests=summary["requests"],
        errors=summary["errors"],
        seconds=summary["duration_us"] / 1e6,
        latencies_ms=(summary["p50"] / 1e3, summary["p95"] / 1e3, summary["p99"] / 1e3),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
