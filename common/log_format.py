"""Log lines for both processes: one JSON object per line, with the ids of what it concerns.

In `common` because the API and the workers both import it (and both images ship it) while they
may not import each other (tests/test_architecture.py); it needs only the standard library
and python-json-logger, so the API never pulls torch or Celery through it.

The ids live in context variables, so code logs as usual (`log.info(...)`) and the line still
says which request and prediction it belongs to. A new thread starts with an empty context:
whoever hands work to another thread sets the ids there again (`log_context`). Starlette's
`run_in_threadpool` (sync endpoints and dependencies) runs the call in a copy of the request's
context, so ids set there reach the thread but never leak back into the request.

`QUERN_LOG_FORMAT=json` (the default) or `text` (the default when QUERN_ENV=development, as
under `make run`): `timestamp level logger message [request_id=... prediction_id=...]`.
"""

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token, copy_context
from typing import Any, ParamSpec, TypeVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

# The request a line belongs to: its X-Request-ID (api/middleware.py).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# The one prediction a line concerns.
prediction_id: ContextVar[str | None] = ContextVar("prediction_id", default=None)
# The predictions of a batch, where a line concerns several at once (workers/batch_run.py).
prediction_ids: ContextVar[tuple[str, ...] | None] = ContextVar("prediction_ids", default=None)
# The Celery task running in this thread (workers/celery_app.py).
task_id: ContextVar[str | None] = ContextVar("task_id", default=None)

P = ParamSpec("P")
T = TypeVar("T")

CONTEXT: dict[str, ContextVar[Any]] = {
    "request_id": request_id,
    "prediction_id": prediction_id,
    "prediction_ids": prediction_ids,
    "task_id": task_id,
}
FORMATS = ("json", "text")
HANDLER_NAME = "quern"


def context_fields() -> dict[str, Any]:
    """The ids set in the current context (unset ones left out), in a fixed order."""
    fields: dict[str, Any] = {}
    for name, var in CONTEXT.items():
        value = var.get()
        if value is not None:
            fields[name] = list(value) if isinstance(value, tuple) else value
    return fields


def bind(**values: str | Sequence[str] | None) -> list[Token[Any]]:
    """Set ids (None leaves one as it is); `unbind` the tokens to restore the previous ones."""
    tokens: list[Token[Any]] = []
    for name, value in values.items():
        if value is not None:
            stored = value if isinstance(value, str) else tuple(value)
            tokens.append(CONTEXT[name].set(stored))
    return tokens


def unbind(tokens: list[Token[Any]]) -> None:
    for token in reversed(tokens):
        token.var.reset(token)


@contextmanager
def log_context(**values: str | Sequence[str] | None) -> Iterator[None]:
    """Lines logged inside carry these ids: `log_context(prediction_id=...)`."""
    tokens = bind(**values)
    try:
        yield
    finally:
        unbind(tokens)


def predictions_context(ids: Sequence[str]) -> AbstractContextManager[None]:
    """A line about one prediction names it in `prediction_id`, about several in
    `prediction_ids`."""
    if len(ids) == 1:
        return log_context(prediction_id=ids[0])
    return log_context(prediction_ids=ids)


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A thread pool whose calls run in a copy of the submitter's context: its ids."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        context = copy_context()
        return super().submit(lambda: context.run(fn, *args, **kwargs))


class JsonFormatter(BaseJsonFormatter):
    """`{"timestamp", "level", "logger", "message", ids..., "exception"}`, plus any `extra=`."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            # uvicorn adds a copy of some messages with terminal colours.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            timestamp=True,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # The timestamp (ISO 8601, UTC) first, then the ids, any `extra=`, the traceback last.
        stamp = log_data.pop("timestamp").isoformat(timespec="milliseconds")
        fields = {"timestamp": stamp}
        fields |= {name: log_data.pop(name) for name in ("level", "logger", "message")}
        context = context_fields()
        for name in CONTEXT:
            if name in log_data or name in context:  # an explicit `extra=` wins
                fields[name] = log_data.pop(name, context.get(name))
        exception = log_data.pop("exception", None)
        fields |= log_data
        if exception is not None:
            fields["exception"] = exception
        log_data.clear()
        log_data.update(fields)


class TextFormatter(logging.Formatter):
    """For people at a terminal: the usual line, then the ids in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{name}={','.join(value) if isinstance(value, list) else value}"
            for name, value in context_fields().items()
        )
        line = super().formatMessage(record)
        return f"{line} [{ids}]" if ids else line


def log_format() -> str:
    """QUERN_LOG_FORMAT, else `text` in development and `json` everywhere else."""
    default = "text" if os.environ.get("QUERN_ENV") == "development" else "json"
    chosen = os.environ.get("QUERN_LOG_FORMAT", "").strip().lower() or default
    if chosen not in FORMATS:
        raise ValueError(f"QUERN_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {chosen!r}")
    return chosen


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is emitted, not when the handler was made:
    a test runner swaps stderr and closes its copy, and a late line must not hit a closed file."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: int | str = logging.INFO, fmt: str | None = None) -> None:
    """One handler on the root logger (stderr) in the chosen format; uvicorn's loggers
    (access log included) hand their lines to it. Calling it again replaces that handler and
    leaves other handlers (pytest's) alone."""
    chosen = fmt or log_format()
    if chosen not in FORMATS:
        raise ValueError(f"the log format must be one of {', '.join(FORMATS)}, not {chosen!r}")
    handler = StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if name == "uvicorn.access" and not logger.handlers and not logger.propagate:
            continue  # `uvicorn --no-access-log` left it so: uvicorn then skips the line's cost
        logger.handlers.clear()
        logger.propagate = True
