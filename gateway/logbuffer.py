"""Keep the most recent warnings and errors in memory for the API and support bundles."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

_LOCK = threading.Lock()


class RecentLogHandler(logging.Handler):
    def __init__(self, capacity: int = 200, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken log call must not break the daemon
            msg = str(record.msg)
        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name, "message": msg}
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        with _LOCK:
            self.records.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with _LOCK:
            return list(self.records)


HANDLER = RecentLogHandler()


def install() -> RecentLogHandler:
    root = logging.getLogger()
    if HANDLER not in root.handlers:
        root.addHandler(HANDLER)
    return HANDLER
