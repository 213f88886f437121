"""The sliced /metrics rendering: identical bytes to prometheus_client, and the event loop
keeps running while a large scrape is rendered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    SummaryMetricFamily,
)

from gateway.metrics import exposition


def _registry(devices: int) -> CollectorRegistry:
    reg = CollectorRegistry()
    hist = Histogram(
        "t_poll_duration_seconds", "per device", ["device", "driver"],
        buckets=(0.01, 0.1, 1), registry=reg,
    )
    up = Gauge("t_device_up", "up", ["device"], registry=reg)
    polls = Counter("t_polls_total", "polls", ["outcome"], registry=reg)
    Info("t_build", "build", registry=reg).info({"version": "1.0"})
    Counter("t_plain_total", "no labels", registry=reg).inc(3)
    for i in range(devices):
        dev = f'dev-{i:04d} "quoted" \\ back'
        hist.labels(dev, "modbus").observe(i / devices)
        up.labels(dev).set(i % 2)
    polls.labels("ok").inc(devices)
    return reg


@pytest.mark.parametrize("slice_samples", [1, 2, 5, 7, 1000])
def test_same_bytes_as_generate_latest(slice_samples: int) -> None:
    reg = _registry(40)
    want = generate_latest(reg)
    got = asyncio.run(exposition(reg, slice_samples=slice_samples))
    assert got == want
    # each family header appears exactly once even when a family is cut into many slices
    assert got.count(b"# TYPE t_poll_duration_seconds histogram\n") == 1
    assert got.count(b"# HELP t_device_up up\n") == 1


class _Custom:
    """Families whose extra samples generate_latest moves to the end under headers of their
    own (``_created``, ``_gsum``/``_gcount``), and a summary."""

    def collect(self) -> Iterator[Metric]:
        gh = GaugeHistogramMetricFamily("t_queue", "gauge histogram", labels=["q"])
        for q in ("a", "b", "c"):
            gh.add_metric([q], [("1.0", 2.0), ("+Inf", 3.0)], gsum_value=4.0)
        yield gh
        c = CounterMetricFamily("t_events", "with created", labels=["k"])
        for k in ("x", "y", "z"):
            c.add_metric([k], 5.0, created=1_700_000_000.0)
        yield c
        sm = SummaryMetricFamily("t_latency", "summary", labels=["op"])
        for op in ("r", "w", "d"):
            sm.add_metric([op], count_value=3, sum_value=1.5)
        yield sm


@pytest.mark.parametrize("slice_samples", [1, 2, 4])
def test_families_with_trailing_samples_are_not_cut(slice_samples: int) -> None:
    reg = CollectorRegistry()
    reg.register(_Custom())  # type: ignore[arg-type]
    got = asyncio.run(exposition(reg, slice_samples=slice_samples))
    assert got == generate_latest(reg)
    assert got.count(b"# HELP t_queue_gsum") == 1 and got.count(b"# HELP t_events_created") == 1


def test_empty_registry() -> None:
    assert asyncio.run(exposition(CollectorRegistry())) == b""


def test_loop_runs_while_a_large_scrape_renders() -> None:
    reg = _registry(2000)  # 2,000 x 6 histogram samples + 2,000 gauges

    async def main() -> tuple[int, bytes]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        body = await exposition(reg, slice_samples=500)
        done.set()
        await t
        return ticks, body

    ticks, body = asyncio.run(main())
    assert body == generate_latest(reg)
    # 14,000 samples in slices of 500: the other task ran between the slices
    assert ticks >= 14_000 // 500
