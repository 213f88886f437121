"""SOAP 1.2 and WS-Security pieces of the simulated camera (independent of the gateway).

Written from the public specifications: SOAP 1.2, WS-Security UsernameToken Profile 1.0
(PasswordDigest = Base64(SHA-1(nonce + created + password))), ONVIF Core (faults, the
pre-authentication of GetSystemDateAndTime), WS-Addressing 1.0.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass

from lxml import etree

NS = {
    "env": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "tt": "http://www.onvif.org/ver10/schema",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "tns1": "http://www.onvif.org/ver10/topics",
    "ter": "http://www.onvif.org/ver10/error",
    "wsrf-rw": "http://docs.oasis-open.org/wsrf/rw-2",
}
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
)
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"
)

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


class SoapError(Exception):
    """Becomes a SOAP fault. ``code`` is Sender/Receiver, ``subcode`` a QName string."""

    def __init__(self, code: str, subcode: str, reason: str, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason
        self.http_status = http_status or (400 if code == "Sender" else 500)


def not_authorized(reason: str = "Sender not authorized") -> SoapError:
    return SoapError("Sender", "ter:NotAuthorized", reason)


@dataclass(frozen=True, slots=True)
class Request:
    operation: str  # local name of the body's first child
    body: etree._Element  # that child
    header: etree._Element | None
    message_id: str | None


def parse_request(data: bytes) -> Request:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapError("Sender", "ter:WellFormed", f"not well-formed XML: {exc}") from None
    if root.tag != f"{{{NS['env']}}}Envelope":
        raise SoapError("Sender", "ter:WellFormed", "not a SOAP 1.2 envelope")
    body = root.find(f"{{{NS['env']}}}Body")
    if body is None or len(body) == 0:
        raise SoapError("Sender", "ter:WellFormed", "empty SOAP body")
    op = body[0]
    header = root.find(f"{{{NS['env']}}}Header")
    mid = None
    if header is not None:
        m = header.find(f"{{{NS['wsa']}}}MessageID")
        if m is not None and m.text:
            mid = m.text.strip()
    return Request(etree.QName(op.tag).localname, op, header, mid)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_xs_datetime(text: str) -> float:
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_xs_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m or text.strip() in ("P", "PT"):
        raise ValueError(f"not an xs:duration: {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def termination_time(text: str | None, now: float, default: float) -> float:
    """Relative (PT60S) or absolute (xs:dateTime) termination time -> camera epoch."""
    if not text or not text.strip():
        return now + default
    value = text.strip()
    if value.startswith("P"):
        return now + parse_xs_duration(value)
    return parse_xs_datetime(value)


def digest(nonce: bytes, created: str, password: str) -> str:
    return base64.b64encode(
        hashlib.sha1(nonce + created.encode("utf-8") + password.encode("utf-8")).digest()
    ).decode("ascii")


@dataclass(frozen=True, slots=True)
class Token:
    username: str
    password: str
    password_type: str
    nonce: bytes
    created: str


def extract_token(header: etree._Element | None) -> Token | None:
    if header is None:
        return None
    sec = header.find(f"{{{NS['wsse']}}}Security")
    if sec is None:
        return None
    tok = sec.find(f"{{{NS['wsse']}}}UsernameToken")
    if tok is None:
        raise not_authorized("Security header without UsernameToken")

    def text(tag: str) -> tuple[str, etree._Element | None]:
        el = tok.find(tag)
        return ((el.text or "").strip() if el is not None else ""), el

    user, _ = text(f"{{{NS['wsse']}}}Username")
    pw, pw_el = text(f"{{{NS['wsse']}}}Password")
    nonce_text, _ = text(f"{{{NS['wsse']}}}Nonce")
    created, _ = text(f"{{{NS['wsu']}}}Created")
    ptype = pw_el.get("Type", PASSWORD_TEXT) if pw_el is not None else PASSWORD_TEXT
    try:
        nonce = base64.b64decode(nonce_text, validate=True) if nonce_text else b""
    except ValueError:
        raise not_authorized("Nonce is not Base64") from None
    return Token(user, pw, ptype, nonce, created)


def verify_token(
    token: Token | None,
    users: dict[str, str],
    camera_now: float,
    max_skew: float,
    seen_nonces: dict[bytes, float],
) -> str:
    """Check a UsernameToken against the camera's users and clock; returns the user."""
    if token is None:
        raise not_authorized("authentication required")
    expected = users.get(token.username)
    if expected is None:
        raise not_authorized("unknown user or wrong password")
    if token.password_type == PASSWORD_DIGEST:
        if not token.nonce or not token.created:
            raise not_authorized("PasswordDigest needs Nonce and Created")
        try:
            created = parse_xs_datetime(token.created)
        except ValueError:
            raise not_authorized("Created is not an xs:dateTime") from None
        if abs(created - camera_now) > max_skew:
            raise not_authorized(
                f"Created {token.created} is {created - camera_now:+.0f} s off the camera clock"
            )
        if not hmac.compare_digest(digest(token.nonce, token.created, expected), token.password):
            raise not_authorized("unknown user or wrong password")
        if token.nonce in seen_nonces:
            raise not_authorized("replayed nonce")
        seen_nonces[token.nonce] = camera_now
        if len(seen_nonces) > 4096:  # bounded replay cache: forget the oldest half
            for key in sorted(seen_nonces, key=seen_nonces.__getitem__)[:2048]:
                del seen_nonces[key]
        return token.username
    if not hmac.compare_digest(expected, token.password):
        raise not_authorized("unknown user or wrong password")
    return token.username


def envelope(body_xml: str, action: str | None = None, relates_to: str | None = None) -> bytes:
    """Wrap a body fragment (which may use any prefix of ``NS``) in a SOAP 1.2 envelope."""
    decls = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items())
    header = ""
    if action or relates_to:
        parts = []
        if action:
            parts.append(f"<wsa:Action>{action}</wsa:Action>")
        if relates_to:
            parts.append(f"<wsa:RelatesTo>{_esc(relates_to)}</wsa:RelatesTo>")
        header = "<env:Header>" + "".join(parts) + "</env:Header>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope {decls}>{header}'
        f"<env:Body>{body_xml}</env:Body></env:Envelope>"
    ).encode()


def fault(err: SoapError) -> bytes:
    body = (
        f"<env:Fault><env:Code><env:Value>env:{err.code}</env:Value>"
        f"<env:Subcode><env:Value>{err.subcode}</env:Value></env:Subcode></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{_esc(err.reason)}</env:Text></env:Reason>'
        "</env:Fault>"
    )
    return envelope(body)


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


esc = _esc
