"""The ``boot`` marker (until it is registered in pyproject.toml)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boot: boots a Debian root with systemd-nspawn (root, mmdebstrap, mirror)"
    )
