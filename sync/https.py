"""HTTPS uplink (aiohttp): ``POST {url}/v1/gateways/{gw}/records`` with
``Idempotency-Key: {batch_id}``.

Answers: 2xx and 409 acknowledge the batch. 408, 429 and 5xx, timeouts and connection
errors are retried (the same batch id and bytes, after a backoff with full jitter that
honours ``Retry-After``). 401, 403, 404, 405 and 407 say the *request* is wrong (token,
URL), not the records: they are retried with backoff and logged, so a configuration error
never dead-letters data. 413 halves the batch size. Every other 4xx rejects the batch into
the buffer's dead-letter table with the status and the start of the answer as reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from urllib.parse import quote

import aiohttp

from sync import metrics
from sync.backoff import parse_retry_after
from sync.config import HttpsUplinkConfig
from sync.engine import (
    BufferLike,
    CommandHandler,
    LinkDown,
    Outgoing,
    Rejected,
    StatusFn,
    UplinkEngine,
)
from sync.tls import build_ssl_context, classify_error

log = logging.getLogger("sync.https")

_RETRY_STATUSES = {408, 429}
_CONFIG_STATUSES = {401, 403, 404, 405, 407}
_REASON_BODY = 300


class HttpsUplink(UplinkEngine):
    kind = "https"
    config: HttpsUplinkConfig

    def __init__(
        self,
        config: HttpsUplinkConfig,
        *,
        gw_id: str,
        buffer: BufferLike,
        commands: CommandHandler | None = None,
        status: StatusFn | None = None,
    ) -> None:
        super().__init__(config, gw_id=gw_id, buffer=buffer, commands=commands, status=status)
        self.endpoint = f"{config.records_url_base}/v1/gateways/{quote(gw_id, safe='')}/records"
        self._ssl: ssl.SSLContext | None = (
            build_ssl_context(config.tls, uplink=config.name) if config.uses_tls else None
        )
        if not config.uses_tls:
            log.warning("uplink %s: plain http:// -- records travel unencrypted", config.name)
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/json", "User-Agent": "edge-gateway"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        if config.token is not None:
            self._headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        self._stats.extra.update(url=config.url)

    async def _run_link(self) -> None:
        cfg = self.config
        connector = aiohttp.TCPConnector(
            ssl=self._ssl if self._ssl is not None else False, limit=cfg.window
        )
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        first = True
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                self._session = session
                while True:
                    if not first:
                        self._stats.reconnects += 1
                        metrics.UPLINK_RECONNECTS.labels(self.name).inc()
                    self._begin_session(up=first)
                    started = time.monotonic()
                    try:
                        await self._pump()
                    except LinkDown as exc:
                        self._note_failure(str(exc), exc.reason)
                        retry_after = exc.retry_after
                    except Exception as exc:  # a bug must not stop the uplink for good
                        log.exception("uplink %s: unexpected error", self.name)
                        self._note_failure(f"internal error: {exc!r}", "other")
                        retry_after = None
                    first = False
                    delay = self._next_delay(time.monotonic() - started, retry_after)
                    await asyncio.sleep(delay)
        finally:
            self._session = None
            self._set_connected(False)
            await self._release_retries()

    async def _send(self, item: Outgoing) -> None:
        session = self._session
        if session is None:
            raise LinkDown("no HTTP session")
        headers = dict(self._headers)
        headers["Idempotency-Key"] = item.batch.batch_id
        try:
            async with session.post(self.endpoint, data=item.payload, headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                body = (await resp.content.read(_REASON_BODY)).decode("utf-8", "replace")
        except TimeoutError:
            raise LinkDown(f"POST {self.endpoint} timed out", reason="timeout") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise LinkDown(
                f"TLS handshake with {self.config.url} failed (certificate not trusted?): {exc}",
                reason="tls",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise LinkDown(f"POST {self.endpoint} failed: {exc}", reason=classify_error(exc)) from None
        if 200 <= status < 300 or status == 409:
            if not self._connected:
                self._mark_up()
            return
        wait = parse_retry_after(retry_after, now=time.time(), maximum=self.config.retry_after_max)
        text = " ".join(body.split())[:200]
        if status >= 500 or status in _RETRY_STATUSES:
            reason = "http_429" if status == 429 else ("timeout" if status == 408 else "http_5xx")
            raise LinkDown(f"platform answered {status}: {text}", reason=reason, retry_after=wait)
        if status in _CONFIG_STATUSES:
            raise LinkDown(
                f"platform answered {status} (check url and credentials): {text}",
                reason="auth" if status in (401, 403, 407) else "protocol",
                retry_after=wait,
            )
        if status == 413:
            raise Rejected(f"http 413: {text}", split=True)
        if 400 <= status < 500:
            raise Rejected(f"http {status}: {text}")
        raise LinkDown(f"unexpected answer {status}: {text}", reason="protocol", retry_after=wait)
