"""TLS context for both uplink kinds: verification on unless explicitly waived."""

from __future__ import annotations

import logging
import ssl

from sync.config import TlsConfig

log = logging.getLogger(__name__)


def build_ssl_context(tls: TlsConfig, *, uplink: str) -> ssl.SSLContext:
    """A client context: system CAs (or ``ca_file``), TLS >= 1.2, optional client cert."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        log.warning(
            "uplink %s: TLS SERVER VERIFICATION IS OFF (tls.verify = false): anyone on the "
            "path can impersonate the platform and read every record",
            uplink,
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def classify_error(exc: BaseException) -> str:
    """Map a connection error to one of the bounded ``reason`` label values."""
    text = f"{type(exc).__name__} {exc}".lower()
    if isinstance(exc, ssl.SSLError) or "certificate" in text or "ssl" in text or "tls" in text:
        return "tls"
    if "not authori" in text or "bad user" in text or "password" in text:
        return "auth"
    if "refused" in text:
        return "refused"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    return "other"
