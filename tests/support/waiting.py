"""The one way tests wait for a condition: poll it until it is truthy or the time is up,
then fail saying what was awaited, the last value seen and (optionally) more detail and
the daemon's log."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timed_out(what: str, timeout: float, last: Any, log: Callable[[], str] | None,
               detail: Callable[[], object] | None) -> AssertionError:
    more = f"; {detail()!r}" if detail is not None else ""
    tail = f"\n--- daemon log ---\n{log()}" if log is not None else ""
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}; last={last!r}{more}{tail}")


def wait_for(pred: Callable[[], Any], timeout: float, what: str = "the condition", *,
             step: float = 0.05, log: Callable[[], str] | None = None,
             detail: Callable[[], object] | None = None) -> Any:
    """Blocking: call ``pred`` every ``step`` seconds; return its first truthy value."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= end:
            raise _timed_out(what, timeout, last, log, detail)
        time.sleep(step)


async def wait_until(pred: Callable[[], Any], timeout: float, what: str = "the condition", *,
                     step: float = 0.05, log: Callable[[], str] | None = None,
                     detail: Callable[[], object] | None = None) -> Any:
    """In a coroutine: the same, and ``pred`` may be a plain or an async callable."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        last = pred()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= end:
            raise _timed_out(what, timeout, last, log, detail)
        await asyncio.sleep(step)
