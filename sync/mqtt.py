"""MQTT uplink (aiomqtt, QoS 1, persistent session, last will, birth, downlink commands).

Topics under ``{topic_prefix}/{gw}/``: ``records`` (batches), ``status`` (retained; birth
message, last will ``offline``), ``cmd`` (subscribed, QoS 1) and ``cmd/result``.

Each connection uses a fresh client, so the only retransmission is ours: batches that were
in flight when a connection died are resent first on the next connection with the same
batch id and bytes. Records of a batch are acknowledged to the buffer only after PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiomqtt

from gateway import __version__
from sync import metrics
from sync.codec import CommandError, command_result, encode_json, normalise_result, parse_command
from sync.config import MqttUplinkConfig
from sync.engine import BufferLike, CommandHandler, LinkDown, Outgoing, StatusFn, UplinkEngine
from sync.tls import build_ssl_context, classify_error

log = logging.getLogger("sync.mqtt")

# aiomqtt warns on every publish once more than 10 are pending; with a window that is the
# normal state, and the log flood costs throughput. Only errors get through.
_QUIET = logging.getLogger("sync.mqtt.client")
_QUIET.setLevel(logging.ERROR)

_RESULT_QUEUE_MAX = 1000


def _granted_code(granted: Any) -> int | None:
    """The SUBACK return code of a one-topic subscription as aiomqtt reports it (granted
    QoS ints, or paho reason codes); None when the answer has no code at all."""
    try:
        first = list(granted)[0]
        return int(getattr(first, "value", first))
    except (TypeError, ValueError, IndexError):
        return None


class MqttUplink(UplinkEngine):
    kind = "mqtt"
    config: MqttUplinkConfig

    def __init__(
        self,
        config: MqttUplinkConfig,
        *,
        gw_id: str,
        buffer: BufferLike,
        commands: CommandHandler | None = None,
        status: StatusFn | None = None,
    ) -> None:
        super().__init__(config, gw_id=gw_id, buffer=buffer, commands=commands, status=status)
        base = f"{config.topic_prefix}/{gw_id}"
        self.topic_records = f"{base}/records"
        self.topic_status = f"{base}/status"
        self.topic_cmd = f"{base}/cmd"
        self.topic_result = f"{base}/cmd/result"
        # RabbitMQ maps MQTT topics onto AMQP routing keys, where "." separates levels: a
        # command published on "cd.wh/gw.01/cmd" is delivered as "cd/wh/gw/01/cmd".
        self._cmd_topics = {self.topic_cmd, self.topic_cmd.replace(".", "/")}
        self._cmd_rewritten_seen = False
        self.client_id = config.client_id or f"edge-gw-{gw_id}-{config.name}"[:128]
        self._ssl = build_ssl_context(config.tls, uplink=config.name) if config.uses_tls else None
        self._client: aiomqtt.Client | None = None
        self._results: list[dict[str, Any]] = []  # results waiting for a connection
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._command_sem = asyncio.Semaphore(config.command_concurrency)
        self._stats.extra.update(
            commands_received=0, url=config.url, commands="pending" if config.commands else "off"
        )
        self._m_commands = {o: metrics.COMMANDS.labels(self.name, o) for o in metrics.COMMAND_OUTCOMES}

    # ------------------------------------------------------------------ connection
    def _new_client(self) -> aiomqtt.Client:
        cfg = self.config
        will = aiomqtt.Will(
            self.topic_status,
            encode_json({"gw": self.gw_id, "status": "offline", "reason": "connection lost"}),
            qos=1,
            retain=True,
        )
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=self.client_id,
            clean_session=False,
            will=will,
            timeout=cfg.timeout,
            keepalive=max(5, int(cfg.keepalive)),
            logger=_QUIET,
            max_inflight_messages=cfg.window + 32,
            tls_context=self._ssl,
        )

    async def _run_link(self) -> None:
        """Connect, publish, reconnect; returns only by cancellation."""
        first = True
        try:
            while True:
                started: float | None = None
                retry_after: float | None = None
                client = self._new_client()
                try:
                    async with asyncio.timeout(self.config.timeout + 5):
                        await client.__aenter__()
                except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                    self._note_failure(self._describe(exc), classify_error(exc))
                else:
                    started = time.monotonic()
                    was_first, first = first, False
                    try:
                        await self._connected_session(client, was_first)
                    except LinkDown as exc:
                        self._note_failure(str(exc), exc.reason)
                        retry_after = exc.retry_after
                    except aiomqtt.MqttError as exc:
                        self._note_failure(f"connection lost: {exc}", classify_error(exc))
                    except asyncio.CancelledError:
                        await self._goodbye(client)
                        raise
                    except Exception as exc:  # a bug must not stop the uplink for good
                        log.exception("uplink %s: unexpected error", self.name)
                        self._note_failure(f"internal error: {exc!r}", "other")
                    finally:
                        self._client = None
                        self._set_connected(False)
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(5):
                                await client.__aexit__(None, None, None)
                session = None if started is None else time.monotonic() - started
                await asyncio.sleep(self._next_delay(session, retry_after))
        finally:
            self._set_connected(False)
            tasks = list(self._command_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._release_retries()

    def _describe(self, exc: BaseException) -> str:
        where = self.config.url
        if classify_error(exc) == "tls":
            return f"TLS handshake with {where} failed (certificate not trusted?): {exc}"
        if isinstance(exc, TimeoutError):
            return f"connecting to {where} timed out"
        return f"cannot connect to {where}: {exc}"

    async def _connected_session(self, client: aiomqtt.Client, first: bool) -> None:
        self._client = client
        if not first:
            self._stats.reconnects += 1
            metrics.UPLINK_RECONNECTS.labels(self.name).inc()
        # Birth message (retained) -- published before anything else so the platform knows
        # who is talking. Its PUBACK proves the link works end to end.
        birth = {"version": __version__, **self._safe_status()}
        birth.update(gw=self.gw_id, status="online", uplink=self.name, ts=round(time.time(), 3))
        # every broker round trip is bounded: a link cut at the wrong moment must not leave
        # the session waiting for an acknowledgement that never comes
        await client.publish(
            self.topic_status, encode_json(birth), qos=1, retain=True, timeout=self.config.timeout
        )
        if self.config.commands:
            granted = await client.subscribe(self.topic_cmd, qos=1, timeout=self.config.timeout)
            self._note_command_grant(granted)
        self._begin_session()
        log.info("uplink %s: connected to %s (backlog up to seq %d)", self.name, self.config.url, self._hw)
        await self._flush_results(client)
        pump = asyncio.create_task(self._pump(), name=f"uplink-{self.name}-pump")
        reader = asyncio.create_task(self._read(client), name=f"uplink-{self.name}-reader")
        try:
            done, _ = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, reader):
                task.cancel()
            results = await asyncio.gather(pump, reader, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                raise res
        raise LinkDown("connection closed")

    def _note_command_grant(self, granted: Any) -> None:
        """Check the broker's SUBACK for the command topic. A broker may refuse the
        subscription (ACL; code 0x80) or grant less than QoS 1: records still flow, but the
        downlink is degraded -- said once per change at warning, and counted as a
        ``protocol`` error on every connection where it happens."""
        code = _granted_code(granted)
        if code == 1 or code == 2:
            state = "subscribed"
        elif code == 0:
            state = "qos0"
        else:
            state = "refused"
        before = self._stats.extra.get("commands")
        self._stats.extra["commands"] = state
        if state != "subscribed":
            metrics.UPLINK_ERRORS.labels(self.name, "protocol").inc()
        if state == before:
            return
        if state == "refused":
            log.warning(
                "uplink %s: the broker refused the subscription to %s (SUBACK code %s): "
                "downlink commands will not arrive on this uplink; records are still sent",
                self.name, self.topic_cmd, "unknown" if code is None else f"0x{code:02x}",
            )
        elif state == "qos0":
            log.warning(
                "uplink %s: the broker granted QoS 0 (not 1) for %s: commands sent while the "
                "gateway is offline, or in flight during a reconnect, can be lost",
                self.name, self.topic_cmd,
            )
        elif before in ("refused", "qos0"):
            log.info("uplink %s: the broker now accepts the subscription to %s", self.name, self.topic_cmd)

    def _safe_status(self) -> dict[str, Any]:
        try:
            return dict(self._status())
        except Exception:
            log.exception("uplink %s: status callback failed", self.name)
            return {}

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Graceful stop: retained ``offline`` status, then DISCONNECT (no will)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await client.publish(
                    self.topic_status,
                    encode_json({"gw": self.gw_id, "status": "offline", "reason": "shutdown",
                                 "ts": round(time.time(), 3)}),
                    qos=1,
                    retain=True,
                )

    async def _send(self, item: Outgoing) -> None:
        client = self._client
        if client is None:
            raise LinkDown("not connected")
        try:
            await client.publish(self.topic_records, item.payload, qos=1, timeout=self.config.timeout)
        except aiomqtt.MqttError as exc:
            reason = "timeout" if "timed out" in str(exc).lower() else "protocol"
            raise LinkDown(f"publish failed: {exc}", reason=reason) from None

    # ------------------------------------------------------------------ downlink
    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic not in self._cmd_topics:
                # amqtt sends every client the retained messages of other clients' filters
                log.debug("uplink %s: message on %s ignored (not the command topic)", self.name, topic)
                continue
            if topic != self.topic_cmd and not self._cmd_rewritten_seen:
                self._cmd_rewritten_seen = True
                log.info(
                    "uplink %s: the broker delivers the command topic %s as %s ('.' taken as a "
                    "level separator, as RabbitMQ does); accepted", self.name, self.topic_cmd, topic,
                )
            payload = message.payload
            data = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            task = asyncio.create_task(self._command(bytes(data)))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)
        raise LinkDown("message stream ended")  # pragma: no cover - aiomqtt raises instead

    async def _command(self, payload: bytes) -> None:
        self._stats.extra["commands_received"] += 1
        now = time.time()
        try:
            cmd = parse_command(payload)
        except CommandError as exc:
            if exc.command_id is None:
                self._m_commands["malformed"].inc()
                log.warning("uplink %s: malformed command dropped (no id): %s", self.name, exc.reason)
                return
            self._m_commands["rejected"].inc()
            log.warning("uplink %s: command %s rejected: %s", self.name, exc.command_id, exc.reason)
            await self._publish_result(command_result(exc.command_id, "rejected", ts=now, reason=exc.reason))
            return
        if self._commands is None:
            result = command_result(cmd.id, "rejected", ts=now, reason="this gateway does not accept commands")
        else:
            async with self._command_sem:
                try:
                    raw = await self._commands(cmd.to_handler_dict(source=f"mqtt:{self.name}", received=now))
                    result = normalise_result(cmd.id, raw, ts=time.time())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("uplink %s: command %s failed in the handler", self.name, cmd.id)
                    result = command_result(cmd.id, "failed", ts=time.time(), reason=f"internal error: {exc}")
        self._m_commands[result["outcome"]].inc()
        await self._publish_result(result)

    async def _publish_result(self, result: dict[str, Any]) -> None:
        client = self._client
        if client is not None:
            try:
                await client.publish(self.topic_result, encode_json(result), qos=1, timeout=self.config.timeout)
                return
            except aiomqtt.MqttError:
                pass
        if len(self._results) >= _RESULT_QUEUE_MAX:
            dropped = self._results.pop(0)
            log.warning("uplink %s: result of command %s dropped (queue full)", self.name, dropped.get("id"))
        self._results.append(result)

    async def _flush_results(self, client: aiomqtt.Client) -> None:
        while self._results:
            result = self._results[0]
            await client.publish(self.topic_result, encode_json(result), qos=1, timeout=self.config.timeout)
            self._results.pop(0)
