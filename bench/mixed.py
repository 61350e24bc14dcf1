"""The mixed text-generation workload: static against continuous batching (issue 20).

Requests of 8 to 256 new tokens arrive spread over time (an open loop on a fixed, seeded
schedule: the same for both runs), each through the API with its end seen by NOTIFY. Time to
first token is the first output entry of the prediction's event stream (a Redis stream ID is
its time in ms) less the moment the client posted it. Throughput is the tokens generated
(`output_token_count`) over the time from the first post to the last end.
"""

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from common.contract import events_key

if TYPE_CHECKING:
    from bench.run import Client

TOPICS = ["rivers", "bread", "trains", "owls", "glass", "music", "rain", "chess", "salt", "maps"]
SHORT = (8, 12, 16)  # max_new_tokens of a "short" request
LONG = (64, 128, 192, 256)


def schedule(scale: float) -> list[tuple[float, dict[str, Any]]]:
    """(arrival second, input): 30 requests over 24 s at scale 1, two in five short."""
    rng = random.Random(20)  # noqa: S311 - a fixed workload, not a secret
    count = max(6, int(30 * scale))
    spread = 24 * count / 30
    arrivals = sorted(rng.uniform(0, spread) for _ in range(count))
    planned = []
    for n, at in enumerate(arrivals):
        topic = TOPICS[n % len(TOPICS)]
        if n % 5 in (1, 3):
            tokens, prompt = rng.choice(SHORT), f"Write one sentence about {topic}."
        else:
            tokens, prompt = rng.choice(LONG), f"Write a long, detailed essay about {topic}."
        planned.append(
            (at, {"prompt": prompt, "max_new_tokens": tokens, "temperature": 0, "top_p": 1})
        )
    return planned


@dataclass
class Mixed:
    label: str
    seconds: float = 0.0
    tokens: int = 0
    ttft: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    latency: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def run(
    client: "Client", redis_url: str, label: str, version: str, planned: list[tuple[float, Any]]
) -> Mixed:
    """Post each input at its time; wait for every one to end."""
    result = Mixed(label)
    stream = redis.Redis.from_url(redis_url)
    started = time.time()
    ended: list[float] = []

    async def one(at: float, input: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, started + at - time.time()))
        posted = time.time()
        latency, prediction = await client.run_one(version, input)
        ended.append(time.time())
        short = input["max_new_tokens"] in SHORT
        first = await asyncio.to_thread(stream.xrange, events_key(prediction["id"]), count=1)
        first_ms = int(_text(first[0][0]).split("-")[0]) if first else None
        result.tokens += prediction["metrics"]["output_token_count"]
        result.latency[short].append(latency)
        if first_ms is not None:
            result.ttft[short].append(first_ms / 1000 - posted)

    await asyncio.gather(*(one(at, input) for at, input in planned))
    result.seconds = max(ended) - started
    stream.close()
    return result


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _p(values: list[float], q: int) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000:.0f}"


def report(static: Mixed, continuous: Mixed, planned: list[tuple[float, Any]]) -> list[list[str]]:
    """(summary rows, the section) for bench/RESULTS.md."""
    shorts = sum(input["max_new_tokens"] in SHORT for _, input in planned)

    def p95(run: Mixed) -> float:
        ordered = sorted(run.latency[True])
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    ratio = p95(static) / p95(continuous)
    summary = [
        "| text-generation, mixed lengths: short requests' p95 latency, static / continuous | "
        f"{ratio:.1f}x lower ({p95(static) * 1000:.0f} / {p95(continuous) * 1000:.0f} ms) "
        "| ≥ 3x |",
        "| text-generation, mixed lengths: tokens/s, continuous / static | "
        f"{continuous.tokens_per_s / static.tokens_per_s:.2f} "
        f"({continuous.tokens_per_s:.1f} / {static.tokens_per_s:.1f}) | ≥ 1 |",
    ]
    section = [
        "",
        "## text-generation, mixed lengths: static against continuous batching",
        "",
        "| Batching | Tokens/s | Short: TTFT p50 / p95 ms | Short: latency p50 / p95 ms "
        "| All: TTFT p50 / p95 ms | All: latency p50 / p95 ms |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {run.label} | {run.tokens_per_s:.1f} | {_p(run.ttft[True], 50)} / "
            f"{_p(run.ttft[True], 95)} | {_p(run.latency[True], 50)} / "
            f"{_p(run.latency[True], 95)} | {_p(run.ttft[True] + run.ttft[False], 50)} / "
            f"{_p(run.ttft[True] + run.ttft[False], 95)} | "
            f"{_p(run.latency[True] + run.latency[False], 50)} / "
            f"{_p(run.latency[True] + run.latency[False], 95)} |"
            for run in (static, continuous)
        ),
        "",
        f"{len(planned)} requests arriving over {planned[-1][0]:.0f} s on a fixed schedule (the "
        f"same for both runs), greedy, {shorts} short ({'/'.join(map(str, SHORT))} new tokens) "
        f"and the rest long ({'/'.join(map(str, LONG))}; a long one may end sooner, at its "
        "end-of-sequence token). Both versions copy the built-in SmolLM2 with max batch 16; "
        "static waits up to 250 ms for company, as the built-in static version did, and runs "
        "the inputs of one batch that ask for different `max_new_tokens` as separate "
        "`generate` calls, one after the other (they cannot share one): much of its loss "
        "here. TTFT: "
        "the post to the first output entry of the prediction's event stream. Tokens/s: "
        "the tokens generated over the time from the first post to the last end.",
    ]
    return [summary, section]
