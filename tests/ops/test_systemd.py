"""The systemd units, sysusers.d and tmpfiles.d files, checked with systemd's own tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.ops_systemd import (
    PREFIX,
    SYSTEMD_DIR,
    analyze,
    exposure,
    parse_unit,
    require_systemd_tools,
    with_fake_exec,
)

UNITS = ("edge-gateway.service", "hwsim.service")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_systemd_tools()


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """The units copied to a temp dir, their executables replaced by existing fakes."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        (out / unit).write_text(with_fake_exec(text, PREFIX, tmp_path))
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_verify_passes(staged: Path, unit: str) -> None:
    proc = analyze("verify", str(staged / unit), cwd=staged)
    assert proc.returncode == 0, proc.stderr
    # no complaints at all (unknown keys, bad values, missing binaries are all reported here)
    complaints = [
        line
        for line in proc.stderr.splitlines()
        if unit in line or "Unknown" in line or "Invalid" in line
    ]
    assert complaints == [], proc.stderr


def test_verify_catches_a_broken_unit(staged: Path) -> None:
    """The verify check is able to fail: a typo'd key and a missing binary are reported."""
    text = (staged / "edge-gateway.service").read_text()
    broken = staged / "broken.service"
    broken.write_text(
        text.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomee=yes").replace(
            "venv/bin/edge-gateway", "venv/bin/missing-binary"
        )
    )
    proc = analyze("verify", str(broken), cwd=staged)
    assert proc.returncode != 0
    assert "ProtectHomee" in proc.stderr and "missing-binary" in proc.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2(staged: Path, unit: str) -> None:
    level, report = exposure(staged / unit)
    assert level <= 2.0, report


def test_security_rating_is_sensitive(staged: Path) -> None:
    """Stripping the hardening makes the rating bad: the measurement is real."""
    lines = (staged / "edge-gateway.service").read_text().splitlines()
    hardening_start = lines.index("# Hardening")
    stripped = staged / "soft.service"
    stripped.write_text(
        "\n".join(lines[:hardening_start] + ["", "[Install]", "WantedBy=multi-user.target"])
    )
    level, _ = exposure(stripped)
    assert level > 5.0


def test_gateway_unit_contract() -> None:
    unit = parse_unit((SYSTEMD_DIR / "edge-gateway.service").read_text())
    svc = unit["Service"]

    def one(key: str) -> str:
        values = svc.get(key)
        assert values and len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") == "30s"
    assert one("Restart") == "on-failure"
    assert one("ExecStart") == (
        "/opt/edge-gateway/current/venv/bin/edge-gateway run -c /etc/edge-gateway/gateway.toml"
    )
    assert one("User") == "edge-gateway"
    assert one("SupplementaryGroups") == "dialout"
    assert one("StateDirectory") == "edge-gateway"
    assert one("ConfigurationDirectory") == "edge-gateway"
    assert one("LogsDirectory") == "edge-gateway"
    creds = svc["LoadCredential"]
    assert "privacy-key:/etc/edge-gateway/credentials/privacy-key" in creds
    assert "api-token:/etc/edge-gateway/credentials/api-token" in creds
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "MemoryMax": "512M",
        "DevicePolicy": "closed",
    }.items():
        assert value in svc[key], (key, svc[key])
    families = one("RestrictAddressFamilies").split()
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    devices = {d.split()[0] for d in svc["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyS", "char-ttyAMA"} <= devices
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_watchdog_settings_match_the_daemon() -> None:
    """The daemon pings at WATCHDOG_USEC/2 and withholds pings above a quarter of it."""
    from gateway.sdnotify import Watchdog

    svc = parse_unit((SYSTEMD_DIR / "edge-gateway.service").read_text())["Service"]
    seconds = float(svc["WatchdogSec"][0].removesuffix("s"))
    wd = Watchdog(environ={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": str(int(seconds * 1e6))})
    assert wd.interval == seconds / 2
    assert wd.lag_threshold <= seconds / 4


def _sysusers(root: Path) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD_DIR / "sysusers.d/edge-gateway.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_sysusers_creates_user_in_dialout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _sysusers(root)
    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().splitlines()
    }
    user = passwd["edge-gateway"]
    assert int(user[2]) < 1000  # a system user
    assert user[5] == "/var/lib/edge-gateway" and user[6] == "/usr/sbin/nologin"
    assert "edge-gateway" in groups["dialout"][3].split(",")
    _sysusers(root)  # idempotent
    lines = (root / "etc/passwd").read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("edge-gateway:")] == [":".join(user)]


def test_tmpfiles_creates_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _sysusers(root)
    proc = subprocess.run(
        [
            "systemd-tmpfiles",
            "--create",
            f"--root={root}",
            str(SYSTEMD_DIR / "tmpfiles.d/edge-gateway.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    uid = next(
        int(ln.split(":")[2])
        for ln in (root / "etc/passwd").read_text().splitlines()
        if ln.startswith("edge-gateway:")
    )
    expect = {
        "etc/edge-gateway": (0o750, 0),
        "etc/edge-gateway/credentials": (0o700, 0),
        "var/lib/edge-gateway": (0o750, uid),
        "var/log/edge-gateway": (0o750, uid),
    }
    for rel, (mode, owner) in expect.items():
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid) == (mode, owner), rel
