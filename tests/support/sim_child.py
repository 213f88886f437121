"""A simulator (or any helper program) in a child process that prints one JSON line when it
is ready. The line is read with a deadline, so a broken child fails the test at once
instead of hanging it; ``stop`` sends SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

START_TIMEOUT = 15.0


def terminate(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM ``proc`` (a clean shutdown), SIGKILL it after ``grace`` seconds; reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ReadyLineChild:
    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        stderr = open(self.log, "ab") if self.log is not None else None
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr, env=self.env)
        finally:
            if stderr is not None:
                stderr.close()
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.stop()
                raise AssertionError(f"{self.argv} did not start within {timeout}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"{self.argv} exited with {self.proc.wait()} before it was ready")
            line += chunk
        self.info = json.loads(line)
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
