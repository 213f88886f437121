"""Project-wide test guards.

* An async test that leaves asyncio tasks running fails (leaked tasks hide shutdown bugs).
  Mark a test ``no_task_guard`` to opt out with a reason.
* "coroutine ... was never awaited" is an error (pyproject filterwarnings turns
  RuntimeWarning and unraisable-exception warnings into errors).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def _leaked_task_guard() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    for _ in range(3):  # let just-cancelled tasks finish
        await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done() and t not in before]
    if leaked:
        for t in leaked:
            t.cancel()
        names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leaked))
        pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {names}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_task_guard: skip the leaked-task check")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if fn is not None and inspect.iscoroutinefunction(fn) and "no_task_guard" not in item.keywords:
            names = getattr(item, "fixturenames", None)
            if names is not None and "_leaked_task_guard" not in names:
                names.insert(0, "_leaked_task_guard")
