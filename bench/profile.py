"""Where the time goes: py-spy samples of a process under load, summed by component.

`py-spy record --gil` samples a thread only while it holds the GIL, so what it sees is Python
time: torch's own compute (which releases the GIL) mostly is not counted, Quern's overhead
is. Components are charged for their own time: a sample goes to the component of the
innermost frame that has one (SQLAlchemy calling psycopg counts as psycopg). Quern's functions
are listed inclusively (a function with everything it calls), so they overlap.
"""

import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# (component, pattern matched against a frame's file path), the first match wins. py-spy
# writes paths relative to sys.path: "sqlalchemy/orm/session.py", "api/deps.py".
COMPONENTS = [
    ("SQLAlchemy", r"sqlalchemy/"),
    ("psycopg (driver)", r"psycopg(_pool)?/"),
    ("Celery + kombu (messages, events)", r"(celery|kombu|billiard)/"),
    ("redis client", r"redis/"),
    ("limits (rate limiting)", r"limits/"),
    ("jsonschema", r"jsonschema"),
    ("json encode/decode", r"json/|orjson"),
    ("logging", r"logging/|pythonjsonlogger/"),
    ("FastAPI + Starlette", r"(fastapi|starlette)/"),
    ("pydantic", r"pydantic"),
    ("uvicorn + HTTP parsing", r"(uvicorn|httptools|h11)/"),
    ("asyncio, anyio, threads (scheduling, hops)", r"(asyncio|anyio|concurrent|threading|queue)"),
    ("prometheus-client", r"prometheus_client/"),
    ("the model's predict (Python side)", r"(models|transformers|torch)/"),
    ("Quern: api/", r"api/"),
    ("Quern: workers/", r"workers/"),
    ("Quern: db/", r"db/"),
]
QUERN = re.compile(r"^(api|workers|db|models)/")
FRAME = re.compile(r"^(?P<function>.+?) \((?P<path>[^:()]+):\d+\)$")


def record(pid: int, seconds: float, *, subprocesses: bool = False) -> Path:
    """A raw (collapsed stacks) profile of `pid` for `seconds`."""
    out = Path(tempfile.mkstemp(suffix=".txt")[1])
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    args = [py_spy, "record", "--gil", "--nonblocking", "-r", "100", "-d", str(int(seconds)),
            "-f", "raw", "-o", str(out), "-p", str(pid)]  # fmt: skip
    if subprocesses:
        args.append("--subprocesses")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, path) of each frame, outermost first."""
    matches = (FRAME.match(frame.strip()) for frame in stack.split(";"))
    return [(m["function"], m["path"]) for m in matches if m]


def _component(path: str) -> str | None:
    return next((name for name, pattern in COMPONENTS if re.match(pattern, path)), None)


def shares(raw: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(component, share of own time) and the top Quern functions (function, inclusive share)."""
    by_component: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    # py-spy reads names out of a running process's memory: now and then one is garbled.
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        owner = next(filter(None, (_component(path) for _, path in reversed(frames))), "other")
        by_component[owner] += count
        quern = {f"{path}:{function}" for function, path in frames if QUERN.match(path)}
        by_function.update(dict.fromkeys(quern, count))
    if not total:
        return [], []
    return (
        [(name, count / total) for name, count in by_component.most_common()],
        [(name, count / total) for name, count in by_function.most_common(10)],
    )


def table(title: str, raw: Path) -> list[str]:
    components, functions = shares(raw)
    lines = [
        f"### {title}",
        "",
        "| Component (own time) | Share of Python time |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {share:.0%} |" for name, share in components if share >= 0.01]
    lines += ["", "| Quern function (inclusive) | Share |", "| --- | --- |"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in functions]
    return [*lines, ""]
