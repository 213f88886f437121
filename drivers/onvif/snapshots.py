"""Local JPEG store for snapshots taken on events, with a retention limit.

Files live under ``<root>/<device>/<epoch_ms>-<n>.jpg``. After each write the store deletes
the oldest files (across all devices) until both ``max_count`` and ``max_bytes`` hold. The
event record carries only a local reference (``local:<device>/<file>``), never the image:
images leave the box only if the privacy policy says so.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from pathlib import Path

from drivers.onvif import metrics
from gateway.errors import ReasonError

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")
REF_PREFIX = "local:"


class SnapshotError(ReasonError, ValueError):
    """A snapshot could not be fetched or stored. ``reason`` is a bounded metric label."""


def is_jpeg(data: bytes) -> bool:
    return len(data) >= 4 and data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


class SnapshotStore:
    """Thread-safe (writes run in a worker thread); one per directory."""

    _instances: dict[Path, SnapshotStore] = {}
    _instances_lock = threading.Lock()

    def __init__(self, root: Path, max_count: int, max_bytes: int) -> None:
        self.root = root
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._counter = itertools.count()

    @classmethod
    def shared(cls, root: Path, max_count: int, max_bytes: int) -> SnapshotStore:
        """One store per directory, so retention covers every camera writing there."""
        key = root.resolve()
        with cls._instances_lock:
            store = cls._instances.get(key)
            if store is None:
                store = cls._instances[key] = cls(key, max_count, max_bytes)
            else:  # the tightest limits configured for this directory win
                store.max_count = min(store.max_count, max_count)
                store.max_bytes = min(store.max_bytes, max_bytes)
            return store

    def save(self, device: str, data: bytes, now: float | None = None) -> str:
        """Write one JPEG and apply retention; returns the local reference."""
        if not is_jpeg(data):
            raise SnapshotError("not_jpeg", f"{len(data)} bytes without JPEG markers")
        if len(data) > self.max_bytes:
            raise SnapshotError("too_large", f"{len(data)} bytes exceed the store limit {self.max_bytes}")
        stamp = int((time.time() if now is None else now) * 1000)
        dev = _SAFE.sub("_", device) or "camera"
        with self._lock:
            folder = self.root / dev
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            name = f"{stamp:013d}-{next(self._counter):06d}.jpg"
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, folder / name)
            self._prune()
        return f"{REF_PREFIX}{dev}/{name}"

    def path_of(self, ref: str) -> Path:
        if not ref.startswith(REF_PREFIX):
            raise ValueError(f"not a local snapshot reference: {ref!r}")
        rel = ref[len(REF_PREFIX) :]
        path = (self.root / rel).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"reference escapes the store: {ref!r}")
        return path

    def files(self) -> list[tuple[Path, int]]:
        out: list[tuple[Path, int]] = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for f in folder.glob("*.jpg"):
                try:
                    out.append((f, f.stat().st_size))
                except FileNotFoundError:
                    continue
        out.sort(key=lambda x: x[0].name)  # names start with the capture time
        return out

    def _prune(self) -> None:
        files = self.files()
        total = sum(size for _, size in files)
        while files and (len(files) > self.max_count or total > self.max_bytes):
            path, size = files.pop(0)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            metrics.SNAPSHOT_EVICTIONS.inc()
        metrics.SNAPSHOT_STORE_BYTES.set(total)
