"""The privacy policy fails closed: when it cannot be built the gateway does not start, and
nothing (no buffer, no bus, no API) is opened before it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import privacy
from gateway.app import GatewayApp
from gateway.config import load_config
from gateway.supervisor import StartupError


async def test_no_privacy_policy_no_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "g.toml"
    db = tmp_path / "state" / "buffer.db"
    cfg.write_text('[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n'
                   f'[buffer]\npath = "{db}"\n')

    class Broken(privacy.PrivacyPolicy):
        def __init__(self, *a: object, **kw: object) -> None:
            raise ValueError("hmac key unreadable")

    monkeypatch.setattr(privacy, "PrivacyPolicy", Broken)
    app = GatewayApp(load_config(cfg))
    with pytest.raises(StartupError, match="privacy policy cannot be built.*hmac key unreadable"):
        await app.start()
    assert app.pipeline is None and app.buffer is None
    assert not db.exists()
