"""Reusable pydantic field types for configuration and driver schemas.

* ``Duration``: seconds as a float; accepts a number or a string such as ``"250ms"``,
  ``"5s"``, ``"2m"``, ``"1h"``, ``"1d"``.
* ``ByteSize``: bytes as an int; accepts a number or ``"512KiB"``, ``"2GiB"``, ``"10MB"``.
* ``Secret``: a secret given as ``{ env = "NAME" }``, ``{ credential = "name" }`` (a file in
  systemd's ``$CREDENTIALS_DIRECTORY``), ``{ file = "/path" }`` or, discouraged, a literal
  string. Resolved when the configuration is validated into a ``pydantic.SecretStr``, so it
  never appears in reprs, logs or ``check`` output.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 250ms or 2m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 5s, 250ms or 2m, found {value!r}")


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 2GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "B").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size such as 512MiB or 2GiB, found {value!r}")


class SecretError(ValueError):
    pass


def resolve_secret(value: Any, environ: dict[str, str] | None = None) -> SecretStr:
    """Resolve a secret reference. Error messages name the source, never the value."""
    env = os.environ if environ is None else environ
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, str):
        return SecretStr(value)
    if isinstance(value, dict) and len(value) == 1:
        ((key, ref),) = value.items()
        if not isinstance(ref, str) or not ref:
            raise SecretError(f"secret {key}: expected a non-empty string name")
        if key == "env":
            if ref not in env:
                raise SecretError(f"environment variable {ref} is not set")
            return SecretStr(env[ref])
        if key == "credential":
            cred_dir = env.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise SecretError(
                    f"credential {ref!r}: CREDENTIALS_DIRECTORY is not set (use LoadCredential= "
                    "in the systemd unit, or { env = ... } outside systemd)"
                )
            path = Path(cred_dir) / ref
            try:
                return SecretStr(path.read_text("utf-8").rstrip("\r\n"))
            except OSError as exc:
                raise SecretError(f"credential {ref!r}: cannot read {path}: {exc.strerror}") from None
        if key == "file":
            try:
                return SecretStr(Path(ref).read_text("utf-8").rstrip("\r\n"))
            except OSError as exc:
                raise SecretError(f"secret file {ref}: {exc.strerror}") from None
    raise SecretError(
        'expected { env = "NAME" }, { credential = "name" }, { file = "/path" } or a string'
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
