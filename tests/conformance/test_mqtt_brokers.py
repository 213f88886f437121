"""The MQTT uplink against broker implementations this project did not write: RabbitMQ's
MQTT plugin (Debian ``rabbitmq-server``) and amqtt's broker (PyPI).

The gateway side is the real thing: ``buffer.Buffer`` on a SQLite file and the MQTT uplink
(``sync/mqtt.py`` over ``sync/engine.py``), fed by the simulated community (telemetry,
state and event records: all three lanes). The platform side is a plain aiomqtt client on
the same broker with a persistent session, asking for QoS 2 (and getting what the broker
grants).

What is checked, per broker:

* every record arrives, each seq with one id; no duplicates without a failure; batches
  arrive in the order they were published (their UUIDv7 ids);
* per lane, live records arrive in seq order, and so do backlog (``hist``) records. Across
  lanes the gateway itself reorders (a claim hands out events, then state, then telemetry,
  and live records overtake the backlog), so a seq may arrive after a higher one of another
  lane; neither broker reorders anything on top of that;
* a broker restart in the middle of the stream (clean stop, a pause, a start on the same
  port): the uplink reconnects, the buffer drains, no seq is missing, and every duplicate is
  a re-delivery of an id already seen (at-least-once, acknowledged by id: gateway/ARCHITECTURE.md); a command
  sent after the restart is executed and answered;
* the last will on a cut link, the retained status, and commands sent while the gateway is
  away;
* the downlink on a broker that refuses the command subscription (amqtt's topic ACL): one
  warning, a counted ``protocol`` error, ``state()["commands"] == "refused"``, records flow.

Broker rules met on the way (not the gateway's to change):

* RabbitMQ 3.10 grants QoS 1 for a QoS 2 subscription, keeps ``clean_session = false``
  sessions in durable queues across a restart, and sends a retained message only to a
  subscription on exactly its topic (not to ``+``/``#`` filters). The gateway publishes its
  retained status but never relies on reading it back.
* amqtt 0.12.1 keeps sessions in memory only (a restart forgets them: the test holds the
  uplink port closed until its subscriber is back, see ``tests/support/conformance_brokers``),
  queues nothing for an offline anonymous session, and on every connect sends the client the
  retained messages matching any client's filters (so messages on topics it never
  subscribed to, and a late subscriber's retained message twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hwsim.proxy import FaultProxy
from prometheus_client import REGISTRY

from buffer import Buffer
from gateway.record import LANE_OF_KIND
from sync import uplink_schema
from sync.mqtt import MqttUplink
from tests.support.conformance_brokers import Amqtt, RabbitMq, have_amqtt, have_rabbitmq
from tests.support.sync_community import make_records, produce
from tests.support.sync_daemon import wait_until

pytestmark = pytest.mark.conformance

PREFIX = "city"
Broker = RabbitMq | Amqtt


def make_broker(kind: str, workdir: Path, **kw: Any) -> Broker:
    if kind == "rabbitmq":
        if not have_rabbitmq():
            pytest.skip("rabbitmq-server (with epmd) is not installed: /usr/lib/rabbitmq/bin/rabbitmq-server")
        return RabbitMq(workdir, **kw)
    if not have_amqtt():
        pytest.skip("amqtt is not installed in this environment")
    return Amqtt(workdir, **kw)


@pytest.fixture(scope="module", params=["rabbitmq", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = make_broker(request.param, tmp_path_factory.mktemp(request.param))
    b.start()
    try:
        yield b
    finally:
        b.stop()
        print(f"\n{b.name} {b.version}: starts {[round(s, 2) for s in b.startup_seconds]} s, "
              f"stops {[round(s, 2) for s in b.stop_seconds]} s")


def uplink_config(url: str, gw: str, **kw: Any) -> Any:
    base = {"name": "city", "kind": "mqtt", "url": url, "topic_prefix": PREFIX,
            "client_id": f"edge-gw-{gw}", "reconnect_min": 0.05, "reconnect_max": 0.5,
            "batch_linger": 0.005, "batch_max_records": 200, "window": 8, "backlog_rate": 3000,
            "timeout": 5}
    base.update(kw)
    return uplink_schema("mqtt").model_validate(base)


async def answer(cmd: dict[str, Any]) -> dict[str, Any]:
    """The core's command handler, reduced to echoing the value it was asked to write."""
    return {"outcome": "ok", "value": cmd["value"]}


@dataclass
class Observer:
    """The platform: a persistent-session aiomqtt client on the broker under test that
    collects record envelopes (in arrival order), statuses and command results, and comes
    back after a broker restart (bounded number of attempts)."""

    host: str
    port: int
    gw: str
    arrivals: list[tuple[int, str, str, bool]] = field(default_factory=list)  # seq, lane, id, hist
    batch_ids: list[str] = field(default_factory=list)  # arrival order
    statuses: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    prefix: str = PREFIX
    foreign: list[str] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)  # the topic names messages arrived on
    granted: list[int] = field(default_factory=list)
    connections: int = 0
    client: aiomqtt.Client | None = None
    max_attempts: int = 600

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.gw}/{leaf}"

    async def run(self) -> None:
        for _ in range(self.max_attempts):
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=f"platform-{self.gw}",
                                          clean_session=False, timeout=5) as client:
                    # asked at QoS 2: what the broker grants is recorded (RabbitMQ: at most 1)
                    granted = await client.subscribe(
                        [(self.topic(t), 2) for t in ("records", "status", "cmd/result")], timeout=5
                    )
                    self.granted = [int(getattr(g, "value", g)) for g in granted]
                    self.client = client
                    self.connections += 1
                    async for msg in client.messages:
                        self._take(msg)
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.1)
        raise AssertionError(f"observer gave up after {self.max_attempts} connection attempts")

    def _leaf(self, topic: str) -> str | None:
        """Which of this gateway's topics ``topic`` is -- also in the form RabbitMQ delivers
        it (a "." in a topic becomes a level separator); None for anything else."""
        for leaf in ("records", "status", "cmd/result"):
            want = self.topic(leaf)
            if topic in (want, want.replace(".", "/")):
                return leaf
        return None

    def _take(self, msg: aiomqtt.Message) -> None:
        assert isinstance(msg.payload, bytes)
        topic = str(msg.topic)
        leaf = self._leaf(topic)
        if leaf is None:  # amqtt: retained messages of other clients' filters (module docstring)
            self.foreign.append(topic)
            return
        self.topics.add(topic)
        doc = json.loads(msg.payload)
        if leaf == "records":
            self.batch_ids.append(doc["batch_id"])
            assert doc["gw"] == self.gw and isinstance(doc["batch_id"], str)
            for r in doc["records"]:
                self.arrivals.append((r["seq"], LANE_OF_KIND[r["kind"]], r["id"], doc["hist"]))
        elif leaf == "status":
            self.statuses.append(doc)
        else:
            self.results.append(doc)

    def seen(self) -> set[int]:
        return {a[0] for a in self.arrivals}

    def has_all(self, last_seq: int) -> bool:
        return len(self.seen()) == last_seq and min(self.seen(), default=1) == 1 and max(self.seen(), default=0) == last_seq

    async def publish_command(self, cmd: dict[str, Any]) -> None:
        assert self.client is not None, "observer not connected"
        await self.client.publish(self.topic("cmd"), json.dumps(cmd), qos=1, timeout=5)


@pytest.fixture
async def observer_factory() -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []

    async def start(broker: Broker, gw: str, prefix: str = PREFIX) -> Observer:
        obs = Observer(broker.host, broker.subscriber_port, gw, prefix=prefix)
        tasks.append(asyncio.create_task(obs.run(), name=f"observer-{gw}"))
        await wait_until(_async(lambda: obs.connections >= 1), 15, "observer connected", step=0.05)
        return obs

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _async(pred: Any) -> Any:
    async def check() -> Any:
        return pred()
    return check


def lane_order_violations(arrivals: list[tuple[int, str, str, bool]], hist: bool) -> dict[str, int]:
    """Per lane, how often a record (first arrival of its id, live or backlog as asked)
    arrived after a higher seq of the same lane and kind of delivery."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    bad: Counter[str] = Counter()
    for seq, lane, rid, h in arrivals:
        if rid in seen:
            continue
        seen.add(rid)
        if h != hist:
            continue
        if seq < last.get(lane, 0):
            bad[lane] += 1
        last[lane] = max(seq, last.get(lane, 0))
    return dict(bad)


def cross_lane_inversions(arrivals: list[tuple[int, str, str, bool]]) -> int:
    seen: set[str] = set()
    prev = 0
    n = 0
    for seq, _lane, rid, _h in arrivals:
        if rid in seen:
            continue
        seen.add(rid)
        n += seq < prev
        prev = max(prev, seq)
    return n


def ids_per_seq(arrivals: list[tuple[int, str, str, bool]]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for seq, _lane, rid, _h in arrivals:
        out.setdefault(seq, set()).add(rid)
    return out


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_record_once_in_lane_order(broker: Broker, tmp_path: Path, observer_factory: Any) -> None:
    gw = f"gw-{broker.name}-flow"
    obs: Observer = await observer_factory(broker, gw)
    async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
        await buf.append(make_records(gw, 1500))  # a backlog before the uplink connects
        # the shipped defaults: 500 records a batch, 16 in flight, backlog at 2000/s
        cfg = uplink_config(broker.url, gw, batch_max_records=500, window=16, backlog_rate=2000)
        up = MqttUplink(cfg, gw_id=gw, buffer=buf, commands=answer, status=lambda: {"devices": 5})
        task = asyncio.create_task(up.run())
        try:
            await produce(buf, gw, rate=1000, duration=2.0)  # live data while it drains
            last = buf.last_seq
            await wait_until(_async(lambda: buf.pending_count("city") == 0 and obs.has_all(last)),
                             30, f"all {last} records at the {broker.name} subscriber",
                             log=broker.log_tail)
            state = up.state()
        finally:
            await stop_task(task)
    arrivals = obs.arrivals
    assert len(arrivals) == last, f"{len(arrivals) - last} duplicates without any failure"
    assert all(len(ids) == 1 for ids in ids_per_seq(arrivals).values())
    assert {lane for _s, lane, _i, _h in arrivals} == {"event", "state", "telemetry"}
    assert 1500 <= sum(1 for a in arrivals if a[3]) < last  # the backlog came as hist
    assert lane_order_violations(arrivals, hist=False) == {}
    assert lane_order_violations(arrivals, hist=True) == {}
    # batch ids are UUIDv7 made at claim time, and batches are published in claim order:
    # arrival in id order means the broker passed the publisher's order through
    assert obs.batch_ids == sorted(obs.batch_ids), f"{broker.name} reordered batches"
    print(f"\n{broker.name}: {last} records in {len(obs.batch_ids)} batches, "
          f"{cross_lane_inversions(arrivals)} cross-lane inversions (the gateway's lane priority)")
    assert state["records_acked"] == last and state["connected"]
    assert state["commands"] == "subscribed"
    # the platform's QoS 2 subscription: RabbitMQ downgrades it to 1, amqtt grants 2; the
    # gateway publishes at QoS 1 either way
    assert obs.granted == ([1, 1, 1] if broker.name == "rabbitmq" else [2, 2, 2])
    assert obs.statuses and obs.statuses[0]["status"] == "online" and obs.statuses[0]["devices"] == 5
    await wait_until(_async(lambda: obs.statuses[-1]["status"] == "offline"), 10, "offline status")
    assert obs.statuses[-1]["reason"] == "shutdown"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_restart_mid_stream(
    broker: Broker, tmp_path: Path, observer_factory: Any, how: str
) -> None:
    """``stop``: a clean broker stop. ``kill`` (RabbitMQ only): SIGKILL of the node, so
    PUBACKs in flight are lost and the uplink re-sends those batches (re-deliveries)."""
    if how == "kill" and not isinstance(broker, RabbitMq):
        pytest.skip("amqtt keeps messages in memory only: a crash loses what it acknowledged "
                    "but had not forwarded yet, which no publisher can prevent")
    gw = f"gw-{broker.name}-restart-{how}"
    obs: Observer = await observer_factory(broker, gw)
    async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
        up = MqttUplink(uplink_config(broker.url, gw), gw_id=gw, buffer=buf, commands=answer)
        task = asyncio.create_task(up.run())
        prod = asyncio.create_task(produce(buf, gw, rate=800, duration=8.0))
        try:
            await wait_until(_async(lambda: len(obs.arrivals) > 500), 15, "records flowing")
            before = obs.connections
            await asyncio.to_thread(broker.kill if isinstance(broker, RabbitMq) and how == "kill" else broker.stop)
            await wait_until(_async(lambda: not up.state()["connected"]), 10, "uplink sees the broker gone")
            await asyncio.sleep(1.5)
            if broker.keeps_sessions:
                await asyncio.to_thread(broker.start)
            else:
                # the broker forgot every session: its subscriber comes back first
                assert isinstance(broker, Amqtt)
                await asyncio.to_thread(broker.start, hold_uplink=True)
                await wait_until(_async(lambda: obs.connections > before and obs.client is not None),
                                 15, "observer back")
                await asyncio.to_thread(broker.open_uplink)
            back = time.monotonic()  # the broker accepts the uplink's connections again
            await wait_until(_async(lambda: up.state()["connected"]), 20, "uplink reconnected",
                             step=0.02, log=broker.log_tail)
            reconnect_s = time.monotonic() - back
            await prod
            last = buf.last_seq
            await wait_until(_async(lambda: buf.pending_count("city") == 0 and obs.has_all(last)),
                             40, f"all {last} records at the {broker.name} subscriber",
                             log=broker.log_tail)
            # the downlink works on the new connection
            await wait_until(_async(lambda: obs.client is not None), 15, "observer connected")
            await obs.publish_command({"id": "after-restart", "device": "b2-light-01", "point": "on",
                                       "value": True})
            await wait_until(_async(lambda: any(r["id"] == "after-restart" for r in obs.results)),
                             15, "command result after the restart")
            state = up.state()
        finally:
            await stop_task(prod)
            await stop_task(task)
    arrivals = obs.arrivals
    per_seq = ids_per_seq(arrivals)
    assert sorted(per_seq) == list(range(1, last + 1)), "a seq is missing"
    assert all(len(ids) == 1 for ids in per_seq.values()), "a seq arrived with two ids"
    dups = len(arrivals) - last
    assert lane_order_violations(arrivals, hist=False) == {}
    assert state["reconnects"] >= 1 and state["records_acked"] == last
    assert sum(1 for a in arrivals if a[3]) >= 800  # the outage's records came back as backlog
    res = next(r for r in obs.results if r["id"] == "after-restart")
    assert res["outcome"] == "ok" and res["value"] is True
    print(f"\n{broker.name} {how} and start: {last} records, {dups} re-deliveries, "
          f"backlog order violations per lane {lane_order_violations(arrivals, hist=True)}, "
          f"reconnects {state['reconnects']}, connected {reconnect_s:.2f} s after the broker was back")


async def retained_status(host: str, port: int, topic_filter: str) -> list[dict[str, Any]]:
    """What a client subscribing now receives as retained on ``topic_filter`` (bounded)."""
    got: list[dict[str, Any]] = []
    async with aiomqtt.Client(host, port, identifier=f"late-{time.monotonic_ns()}", timeout=5) as c:
        await c.subscribe(topic_filter, qos=1, timeout=5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for msg in c.messages:
                    if msg.retain:
                        assert isinstance(msg.payload, bytes)
                        got.append(json.loads(msg.payload))
    return got


def distinct(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in docs:
        if d not in out:
            out.append(d)
    return out


async def test_last_will_on_a_cut_link_and_the_retained_status(
    broker: Broker, tmp_path: Path, observer_factory: Any
) -> None:
    """The link is cut without DISCONNECT (fault proxy in front of the broker): the broker
    publishes the uplink's last will (retained ``offline``), and the uplink comes back with
    a new birth. A late subscriber on the exact status topic gets the retained status from
    both brokers; on a wildcard filter RabbitMQ 3.10 sends no retained message (its rule),
    so a platform must not find gateways through retained statuses on ``+`` filters there."""
    gw = f"gw-{broker.name}-will"
    obs: Observer = await observer_factory(broker, gw)
    async with FaultProxy(broker.host, broker.port) as proxy, Buffer(
        tmp_path / "gw.db", gw=gw, uplinks=("city",)
    ) as buf:
        up = MqttUplink(uplink_config(f"mqtt://127.0.0.1:{proxy.port}", gw), gw_id=gw, buffer=buf)
        task = asyncio.create_task(up.run())
        try:
            await wait_until(_async(lambda: obs.statuses and obs.statuses[-1]["status"] == "online"),
                             15, "birth")
            await proxy.cut()
            await wait_until(_async(lambda: obs.statuses[-1].get("reason") == "connection lost"),
                             15, "last will", log=broker.log_tail)
            # amqtt sends a late subscriber the same retained message twice (once for the
            # other clients' matching filters at connect, once for its own subscription), and
            # with them the retained messages of other topics (other gateways' statuses left
            # by earlier tests on this broker): keep this gateway's
            here = await retained_status(broker.host, broker.subscriber_port, obs.topic("status"))
            exact = distinct([d for d in here if d.get("gw") == gw])
            assert [d["status"] for d in exact] == ["offline"], here
            wild = await retained_status(broker.host, broker.subscriber_port, f"{PREFIX}/+/status")
            mine = distinct([d for d in wild if d.get("gw") == gw])
            assert mine == ([] if broker.name == "rabbitmq" else exact)
            await proxy.restore()
            await wait_until(_async(lambda: obs.statuses[-1]["status"] == "online"), 15, "new birth")
            assert up.state()["reconnects"] >= 1
        finally:
            await stop_task(task)


async def test_dots_in_the_gateway_id_and_prefix(
    broker: Broker, tmp_path: Path, observer_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Gateway ids and prefixes may contain ".". RabbitMQ maps MQTT topics onto AMQP
    routing keys, where "." separates levels: ``cd.wh/gw.01/cmd`` is delivered as
    ``cd/wh/gw/01/cmd``. The command must still be executed and answered."""
    prefix, gw = "cd.wh/jifu", f"gw.{broker.name}.01"
    caplog.set_level(logging.INFO, logger="sync")
    obs: Observer = await observer_factory(broker, gw, prefix)
    async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
        up = MqttUplink(uplink_config(broker.url, gw, topic_prefix=prefix), gw_id=gw, buffer=buf,
                        commands=answer)
        task = asyncio.create_task(up.run())
        try:
            await buf.append(make_records(gw, 30))
            await wait_until(_async(lambda: obs.has_all(30)), 15, "records")
            await obs.publish_command({"id": "dotted", "device": "b2-light-01", "point": "on",
                                       "value": True})
            await wait_until(_async(lambda: [r["id"] for r in obs.results] == ["dotted"]), 10,
                             "the command's result", log=broker.log_tail)
        finally:
            await stop_task(task)
    rewritten = {t for t in obs.topics if "." not in t}
    assert bool(rewritten) == (broker.name == "rabbitmq"), obs.topics
    said = [r.getMessage() for r in caplog.records if "delivers the command topic" in r.getMessage()]
    assert len(said) == (1 if broker.name == "rabbitmq" else 0), said


# ---------------------------------------------------------------------- downlink degradations
# amqtt's ACL plugin: anonymous clients may subscribe to everything but the command topics
REFUSE_CMD = {"plugins": {"amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
    "acl": {"anonymous": [f"{PREFIX}/+/records", f"{PREFIX}/+/status", f"{PREFIX}/+/cmd/result"]}}}}


async def test_refused_command_subscription_is_logged_and_records_still_flow(
    tmp_path: Path, observer_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_broker("amqtt", tmp_path, broker_config=REFUSE_CMD)
    gw = "gw-amqtt-acl"
    caplog.set_level(logging.INFO, logger="sync")
    errors = {"uplink": "city", "reason": "protocol"}
    errors_before = REGISTRY.get_sample_value("edge_gw_uplink_errors_total", errors) or 0.0
    with b:
        obs: Observer = await observer_factory(b, gw)
        async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
            up = MqttUplink(uplink_config(b.url, gw), gw_id=gw, buffer=buf, commands=answer)
            task = asyncio.create_task(up.run())
            try:
                await buf.append(make_records(gw, 50))
                await wait_until(_async(lambda: obs.has_all(50)), 15, "records despite the rule")
                state = up.state()
            finally:
                await stop_task(task)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sync")]
    hits = [m for m in messages if "refused the subscription" in m]
    assert len(hits) == 1, messages
    assert f"{PREFIX}/{gw}/cmd" in hits[0] and "commands will not arrive" in hits[0]
    assert state["commands"] == "refused"
    assert (REGISTRY.get_sample_value("edge_gw_uplink_errors_total", errors) or 0.0) == errors_before + 1


async def test_command_sent_while_the_gateway_is_offline(
    broker: Broker, tmp_path: Path, observer_factory: Any
) -> None:
    """The design's persistent session: a command published while the gateway is away is
    delivered when it is back -- if the broker queues for the session. RabbitMQ does; amqtt
    0.12.1 queues nothing for an anonymous session (a rule in its broker code), so there the
    command is lost without the gateway ever seeing it. Either way the gateway answers
    every command it receives and keeps delivering records."""
    gw = f"gw-{broker.name}-offline-cmd"
    obs: Observer = await observer_factory(broker, gw)
    async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
        cfg = uplink_config(broker.url, gw)
        up = MqttUplink(cfg, gw_id=gw, buffer=buf, commands=answer)
        task = asyncio.create_task(up.run())
        await wait_until(_async(lambda: up.state()["connected"]), 15, "uplink connected")
        await stop_task(task)  # clean stop: the session stays on the broker
        await wait_until(_async(lambda: obs.statuses and obs.statuses[-1]["status"] == "offline"),
                         10, "offline status")
        await obs.publish_command({"id": "while-away", "device": "b2-light-01", "point": "on",
                                   "value": False})
        await buf.append(make_records(gw, 20))
        up = MqttUplink(cfg, gw_id=gw, buffer=buf, commands=answer)
        task = asyncio.create_task(up.run())
        try:
            await wait_until(_async(lambda: obs.has_all(20)), 15, "records after the comeback")
            if broker.keeps_sessions:
                await wait_until(_async(lambda: any(r["id"] == "while-away" for r in obs.results)),
                                 15, "result of the command queued while away")
            else:
                await asyncio.sleep(1.0)  # it would have come before the records
                assert obs.results == [] and up.state()["commands_received"] == 0
        finally:
            await stop_task(task)


async def test_gateway_ignores_messages_on_topics_it_did_not_subscribe_to(
    tmp_path: Path, observer_factory: Any
) -> None:
    """amqtt 0.12.1 sends every client, on connect, the retained messages matching *any*
    client's subscription. A retained command of another gateway reaches this one: it must
    not be executed or answered."""
    b = make_broker("amqtt", tmp_path)
    gw = "gw-amqtt-foreign"
    calls: list[str] = []

    async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
        calls.append(cmd["id"])
        return await answer(cmd)

    with b:
        other: Observer = await observer_factory(b, "gw-other")
        foreign = {"id": "not-for-you", "device": "b2-light-01", "point": "on", "value": True}
        async with aiomqtt.Client(b.host, b.subscriber_port, identifier="other-platform") as pub:
            await pub.subscribe(other.topic("cmd"), qos=1)  # the filter is now known to the broker
            await pub.publish(other.topic("cmd"), json.dumps(foreign), qos=1, retain=True, timeout=5)
            obs: Observer = await observer_factory(b, gw)
            async with Buffer(tmp_path / "gw.db", gw=gw, uplinks=("city",)) as buf:
                up = MqttUplink(uplink_config(b.url, gw), gw_id=gw, buffer=buf, commands=handler)
                task = asyncio.create_task(up.run())
                try:
                    await wait_until(_async(lambda: up.state()["connected"]), 15, "uplink connected")
                    await obs.publish_command({"id": "mine", "device": "b2-light-01", "point": "on",
                                               "value": True})
                    await wait_until(_async(lambda: [r["id"] for r in obs.results] == ["mine"]), 15,
                                     "the gateway's own command answered")
                    state = up.state()
                finally:
                    await stop_task(task)
    assert other.topic("cmd") in obs.foreign  # the broker did send it around
    assert calls == ["mine"] and state["commands_received"] == 1
