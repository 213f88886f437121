"""Configuration schemas of the ``[[uplinks]]`` entries (one per uplink kind).

Every key is documented in ``sync/README.md``. Unknown keys are errors so that ``check``
catches typos; secrets use :data:`gateway.types.Secret` and never appear in reprs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.types import Duration, Secret

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# "*" is MQTT-legal, but RabbitMQ maps topics onto AMQP routing keys where it is a wildcard
# (delivered back as "+", a topic no MQTT client library accepts)
_TOPIC_BAD = re.compile(r"[#+*\x00]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """TLS settings shared by both uplink kinds."""

    ca_file: Path | None = None
    """PEM bundle of CAs to trust instead of the system store."""
    cert_file: Path | None = None
    """Client certificate (PEM) for mutual TLS."""
    key_file: Path | None = None
    """Private key of the client certificate (PEM); may be inside ``cert_file``."""
    verify: bool = True
    """Verify the server certificate and host name. ``false`` needs ``insecure = true``."""
    insecure: bool = False
    """Explicit acknowledgement that ``verify = false`` is wanted (test benches only)."""

    @model_validator(mode="after")
    def _check(self) -> TlsConfig:
        if not self.verify and not self.insecure:
            raise ValueError(
                "tls.verify = false turns off server authentication; "
                "set tls.insecure = true as well if this is really wanted"
            )
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file needs tls.cert_file")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{key}: file {path} does not exist")
        return self


class _UplinkBase(_Strict):
    name: str = Field(pattern=_NAME_RE)
    url: str
    window: int = Field(default=16, ge=1, le=1000)
    batch_max_records: int = Field(default=500, ge=1, le=20000)
    batch_linger: Duration = 0.02
    gzip: bool = False
    backlog_rate: float = Field(default=2000.0, ge=0)
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 60.0
    timeout: Duration = 10.0
    retry_after_max: Duration = 600.0
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check_base(self) -> _UplinkBase:
        if self.reconnect_min <= 0:
            raise ValueError("reconnect_min must be positive")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.port is not None:
            return parts.port
        return {"mqtt": 1883, "mqtts": 8883, "http": 80, "https": 443}[parts.scheme]

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "https")


class MqttUplinkConfig(_UplinkBase):
    """``kind = "mqtt"``: QoS 1 publishes of record batches, downlink commands."""

    kind: Literal["mqtt"] = "mqtt"
    topic_prefix: str = Field(min_length=1)
    username: str | None = None
    password: Secret | None = None
    client_id: str | None = None
    keepalive: Duration = 30.0
    commands: bool = True
    command_concurrency: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _check_mqtt(self) -> MqttUplinkConfig:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"url must start with mqtt:// or mqtts://, found {self.url!r}")
        if not parts.hostname:
            raise ValueError(f"url {self.url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(
                "url must be mqtt[s]://host[:port] (credentials go in username/password)"
            )
        if _TOPIC_BAD.search(self.topic_prefix) or self.topic_prefix.startswith("/") or (
            self.topic_prefix.endswith("/")
        ):
            raise ValueError(
                "topic_prefix must not contain +, # or * (a wildcard on RabbitMQ) "
                "and must not start or end with /"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.keepalive < 5:
            raise ValueError("keepalive must be at least 5s")
        return self


class HttpsUplinkConfig(_UplinkBase):
    """``kind = "https"``: POST of record batches with an Idempotency-Key."""

    kind: Literal["https"] = "https"
    token: Secret | None = None
    allow_plaintext: bool = False
    window: int = Field(default=4, ge=1, le=256)

    @model_validator(mode="after")
    def _check_https(self) -> HttpsUplinkConfig:
        parts = urlsplit(self.url)
        if parts.scheme == "http":
            if not self.allow_plaintext:
                raise ValueError(
                    "http:// sends records in clear text; use https:// "
                    "(allow_plaintext = true is for test benches only)"
                )
        elif parts.scheme != "https":
            raise ValueError(f"url must start with https://, found {self.url!r}")
        if not parts.hostname:
            raise ValueError(f"url {self.url!r} has no host")
        if parts.query or parts.fragment or parts.username:
            raise ValueError("url must be https://host[:port][/base-path] without query")
        return self

    @property
    def records_url_base(self) -> str:
        return self.url.rstrip("/")


UplinkConfig = MqttUplinkConfig | HttpsUplinkConfig
