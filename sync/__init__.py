"""Upward sync: MQTT and HTTPS uplinks with downlink commands.

Public surface (used by the core's supervisor)::

    from sync import UPLINK_KINDS, uplink_schema, create_uplink, Uplink, CommandHandler

See ``sync/README.md`` for the configuration keys and the delivery guarantees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from sync.config import HttpsUplinkConfig, MqttUplinkConfig, TlsConfig, UplinkConfig
from sync.engine import BufferLike

__all__ = [
    "UPLINK_KINDS",
    "CommandHandler",
    "HttpsUplinkConfig",
    "MqttUplinkConfig",
    "TlsConfig",
    "Uplink",
    "UplinkConfig",
    "create_uplink",
    "uplink_schema",
]

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_SCHEMAS: dict[str, type[BaseModel]] = {"mqtt": MqttUplinkConfig, "https": HttpsUplinkConfig}
UPLINK_KINDS: tuple[str, ...] = tuple(_SCHEMAS)


@runtime_checkable
class Uplink(Protocol):
    name: str

    async def run(self) -> None:
        """Run until cancelled; network and platform errors are retried, never raised."""

    def state(self) -> dict[str, Any]:
        """``{"connected", "lag_seconds", "pending", "inflight_batches", ...}``."""


def uplink_schema(kind: str) -> type[BaseModel]:
    """The pydantic model of an ``[[uplinks]]`` entry of this kind (``extra="forbid"``)."""
    try:
        return _SCHEMAS[kind]
    except KeyError:
        raise ValueError(
            f"unknown uplink kind {kind!r}; expected one of {', '.join(UPLINK_KINDS)}"
        ) from None


def create_uplink(
    config: UplinkConfig | Mapping[str, Any],
    *,
    gw_id: str,
    buffer: BufferLike,
    commands: CommandHandler | None,
    status: Callable[[], dict[str, Any]],
) -> Uplink:
    """Build the uplink for a validated config (a mapping is validated first)."""
    if isinstance(config, Mapping):
        config = uplink_schema(str(config.get("kind", ""))).model_validate(dict(config))  # type: ignore[assignment]
    if isinstance(config, MqttUplinkConfig):
        from sync.mqtt import MqttUplink

        return MqttUplink(config, gw_id=gw_id, buffer=buffer, commands=commands, status=status)
    if isinstance(config, HttpsUplinkConfig):
        from sync.https import HttpsUplink

        return HttpsUplink(config, gw_id=gw_id, buffer=buffer, commands=commands, status=status)
    raise TypeError(f"not an uplink configuration: {type(config).__name__}")
