"""settle_heap: start-up objects frozen out of the cyclic GC; a reload unfreezes first so
the replaced configuration's cycles can still be collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.app import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_start_freezes_what_exists() -> None:
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 0


def test_reload_lets_replaced_cycles_be_collected() -> None:
    old = _Node()
    ref = weakref.ref(old)
    settle_heap()  # start-up: the node is frozen along with everything else
    del old
    gc.collect()
    assert ref() is not None  # frozen objects are not collected...
    settle_heap(reloaded=True)  # ...until a reload settles the heap again
    assert ref() is None
    assert gc.get_freeze_count() > 0
