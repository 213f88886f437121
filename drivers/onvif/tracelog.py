"""Keep WS-Security tokens and SOAP bodies out of the gateway's logs.

The SOAP client library logs every request and answer at DEBUG, whole envelopes with the
UsernameToken (PasswordDigest, Nonce, Created) -- thousands of lines a minute per camera,
and a digest with its nonce is what an attacker replays or brute-forces offline. Here:

* envelopes ("HTTP Post to ...", "HTTP Response from ...") and the library's other
  per-request bookkeeping never reach the normal logs;
  they go to the trace logger ``drivers.onvif.soap``, which is **off** unless the
  environment variable ``EDGE_GW_ONVIF_TRACE=1`` is set when the daemon starts (the SOAP
  library's schema-parsing chatter at DEBUG is only shown then, too);
* every record of the library's and the driver's loggers -- at every level, the trace
  logger included -- has token values, HTTP ``Authorization`` headers and URL
  credentials replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import re

TRACE = logging.getLogger("drivers.onvif.soap")
TRACE_ENV = "EDGE_GW_ONVIF_TRACE"

# loggers of the SOAP stack (and ours) whose records are filtered
FILTERED_LOGGERS = (
    "drivers.onvif",
    "onvif",
    "onvif.zeep_aiohttp",
    "onvif.client",
    "onvif.managers",
    "zeep",
    "zeep.transports",
    "zeep.wsdl.bindings.soap",
    "zeep.wsse",
)
# per-request records of the SOAP library: bodies, and two lines of retry bookkeeping per
# request -- trace material, not log lines
_BODY_PREFIXES = (
    "HTTP Post to",
    "HTTP Response from",
    "HTTP Get from",
    "retry_connection_error wrapper called",
    "Attempt ",
    "Creating service",
    "Closing service",
)

_ELEMENT = re.compile(
    r"(<(?:[\w.-]+:)?(?:Password|Nonce|Created|BinarySecurityToken)\b[^>]*>)([^<]*)(</)", re.IGNORECASE
)
_AUTH_HEADER = re.compile(r"((?:Proxy-)?Authorization['\"]?\s*[:=]\s*['\"]?)(?:Digest|Basic|Bearer)?\s*[^'\"\r\n]*", re.IGNORECASE)
_DIGEST_PARAMS = re.compile(r"\b(response|cnonce|nonce)=(\"[^\"]*\"|[^,\s]+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with token values, Authorization headers and URL credentials masked."""
    if "<" in text:
        text = _ELEMENT.sub(lambda m: f"{m.group(1)}***{m.group(3)}", text)
    if "uthorization" in text:
        text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}***", text)
    if "nonce" in text.lower() or "response=" in text:
        text = _DIGEST_PARAMS.sub(lambda m: f"{m.group(1)}=***", text)
    if "@" in text:
        text = _URL_USERINFO.sub(r"\1***:***@", text)
    return text


class RedactFilter(logging.Filter):
    """Moves envelope dumps to the trace logger and masks tokens in everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and msg.startswith(_BODY_PREFIXES) and record.name != TRACE.name:
            if TRACE.isEnabledFor(logging.DEBUG):
                TRACE.debug("%s", redact(_message(record)))
            return False
        text = _message(record)
        clean = redact(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a broken log call must not break the daemon
        text = str(record.msg)
    if isinstance(record.msg, bytes | bytearray):
        text = bytes(record.msg).decode("utf-8", "replace")
    return text


_FILTER = RedactFilter()


def trace_enabled() -> bool:
    return os.environ.get(TRACE_ENV, "") not in ("", "0", "false", "no")


def install() -> None:
    """Idempotent: attach the filter to the SOAP stack's loggers, set the trace level. The
    SOAP library's own DEBUG chatter (schema parsing, one line per type of the WSDL
    documents) is kept for the trace as well."""
    on = trace_enabled()
    TRACE.setLevel(logging.DEBUG if on else logging.CRITICAL + 10)
    if not on:
        logging.getLogger("zeep").setLevel(logging.INFO)
    for name in (*FILTERED_LOGGERS, TRACE.name):
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
