"""Capturing log lines as production writes them (common/log_format.py), parsed back."""

import json
import logging
from collections.abc import Iterator
from typing import Any

from common.log_format import JsonFormatter


class Lines(logging.Handler):
    """Every record, formatted by the JSON formatter in the logging thread, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def with_message(self, text: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if text in line["message"]]


def capture_lines() -> Iterator[Lines]:
    """For a fixture: a Lines handler on the root logger, at INFO, for one test."""
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
