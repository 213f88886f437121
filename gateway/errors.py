"""Errors that carry data.

``ReasonError`` is the shape every runtime error of the product shares: a short, bounded
``reason`` (a metric label: ``timeout``, ``crc``, ``disk_full``) and a ``detail`` for people.
Configuration and profile errors (``ConfigIssue``) name the file, the line, the key path,
what was expected and what was found; checks collect every error and report them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


class ReasonError(Exception):
    """An error with a bounded ``reason`` label and a ``detail``; ``str()`` is
    ``"reason: detail"`` (or the reason alone). Subclasses add their own data as attributes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    path: str  # key path, e.g. "devices[2].address.unit"
    message: str  # what was expected and what was found
    line: int | None = None
    # errors that only follow from this one (a device naming a profile whose file is broken):
    # shown under it, not counted as problems of their own
    consequences: tuple[ConfigIssue, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        return f"{self.where}: {self.path or '(top level)'}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "consequences": [c.to_dict() for c in self.consequences],
        }


class ConfigError(Exception):
    """One or more configuration problems; ``issues`` holds every independent one, each
    with the errors that follow from it in ``consequences``."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        lines: list[str] = []
        for i in issues:
            lines.append(f"  {i}")
            lines.extend(f"      consequence: {c}" for c in i.consequences)
        super().__init__(f"{len(issues)} configuration error(s):\n" + "\n".join(lines))


_TOML_LINE_RE = re.compile(r"\(at line (\d+), column \d+\)")


def toml_issue(file: str, exc: Exception) -> ConfigIssue:
    """A TOML syntax error, with the line tomllib names."""
    m = _TOML_LINE_RE.search(str(exc))
    return ConfigIssue(file, "", f"not valid TOML: {exc}", int(m.group(1)) if m else None)


def join_path(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe_found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def issues_from_validation(
    exc: ValidationError, file: str, text: str | None, prefix: tuple[Any, ...] = ()
) -> list[ConfigIssue]:
    """Turn a pydantic error into issues. Never echoes input for secret fields."""
    out: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not _is_union_tag(p))
        path = join_path(loc)
        msg = err["msg"]
        etype = err["type"]
        if etype == "missing":
            message = "required key is missing"
        elif etype == "extra_forbidden":
            message = "unknown key (not part of this section's schema)"
        else:
            message = msg.removeprefix("Value error, ")
            secret_like = any(
                str(p) in {"password", "token", "hmac_key", "secret", "key"} for p in loc
            )
            if "input" in err and not secret_like and etype not in ("value_error",):
                message += f"; found {_describe_found(err['input'])}"
        out.append(ConfigIssue(file, path, message, locate(text, loc) if text else None))
    return out


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member / function names to locations; they are not keys
    return isinstance(part, str) and (
        part.startswith("function-") or part in {"str", "dict[str,str]", "float", "int"}
    )


_TABLE_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


def locate(text: str | None, loc: tuple[Any, ...] | list[Any]) -> int | None:
    """Best-effort 1-based line of a key path in a TOML text (tables, arrays of tables and
    dotted/inline keys). Returns the line of the deepest part found."""
    if not text or not loc:
        return None
    lines = text.splitlines()
    parts = list(loc)
    # Walk table headers: find the header that matches the longest prefix of the path.
    array_counts: dict[str, int] = {}
    best: int | None = None
    current_header: list[str] = []
    current_index: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        m = _TABLE_RE.match(line)
        if m:
            name = m.group(2).strip()
            keys = [k.strip().strip("\"'") for k in name.split(".")]
            if m.group(1) == "[[":
                array_counts[name] = array_counts.get(name, -1) + 1
                current_index = dict(current_index)
                current_index[name] = array_counts[name]
            current_header = keys
            if _header_matches(keys, parts, array_counts, m.group(1) == "[["):
                best = lineno
            continue
        km = _KEY_RE.match(line)
        if km and best is not None:
            key = km.group(1).strip().strip("\"'")
            full = _header_path(current_header, array_counts) + key.split(".")
            want = [p for p in parts if not isinstance(p, int)]
            if full[: len(want)] == want[: len(full)] and len(full) > 0:
                if _same_array_positions(current_header, parts, array_counts):
                    best = lineno
    return best


def _header_path(keys: list[str], counts: dict[str, int]) -> list[str]:
    return list(keys)


def _header_matches(
    keys: list[str], parts: list[Any], counts: dict[str, int], is_array: bool
) -> bool:
    idx = 0
    for i, key in enumerate(keys):
        if idx >= len(parts) or parts[idx] != key:
            return False
        idx += 1
        table = ".".join(keys[: i + 1])
        if table in counts and idx < len(parts) and isinstance(parts[idx], int):
            if counts[table] != parts[idx]:
                return False
            idx += 1
    return True


def _same_array_positions(keys: list[str], parts: list[Any], counts: dict[str, int]) -> bool:
    return _header_matches(keys, parts, counts, False)
