"""gateway.backoff.Backoff: the one backoff every retry loop uses."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import Backoff


def test_device_probe_schedule_grows_caps_and_jitters() -> None:
    """As the supervisor uses it: one poll interval, doubling, capped, at least half."""
    b = Backoff(1.0, 30.0, jitter=0.5, rng=random.Random(1))
    delays = [b.delay(n - 1) for n in range(1, 10)]
    assert 0.5 <= delays[0] <= 1.0
    assert 4 <= delays[3] <= 8
    assert all(d <= 30.0 for d in delays) and delays[-1] >= 15.0
    assert len({round(b.delay(2), 6) for _ in range(20)}) > 1


def test_full_jitter_bounds() -> None:
    """As the uplinks use it: anything up to the cap."""
    b = Backoff(0.5, 8, rng=random.Random(1))
    caps = []
    for _ in range(8):
        cap = b.cap()
        d = b.next_delay()
        assert 0 <= d <= cap
        caps.append(cap)
    assert caps == [0.5, 1, 2, 4, 8, 8, 8, 8]
    b.reset()
    assert b.cap() == 0.5


def test_exact_schedule_with_given_jitter() -> None:
    b = Backoff(30.0, 600.0, jitter=0.1)
    assert [b.delay(n, u=0.0) for n in range(6)] == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0]
    assert b.delay(0, u=1.0) == pytest.approx(27.0)
    assert Backoff(60.0, 30.0, jitter=0).delay(0) == 30.0  # a cap below the start is the cap


@pytest.mark.parametrize(("lo", "hi", "jitter"), [(0, 1, 0.5), (1, 0, 0.5), (1, 2, 1.5), (1, 2, -0.1)])
def test_refuses_nonsense(lo: float, hi: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(lo, hi, jitter=jitter)


@given(st.integers(0, 10_000), st.floats(0, 1), st.floats(0.001, 100), st.floats(0.001, 1000),
       st.floats(0, 1))
def test_never_above_the_cap_nor_below_its_jitter(n: int, u: float, lo: float, hi: float, jitter: float) -> None:
    b = Backoff(lo, hi, jitter=jitter)
    d = b.delay(n, u=u)
    assert b.cap(n) * (1 - jitter) - 1e-9 <= d <= b.cap(n) <= hi
