"""Simulated vendor devices speaking simple framed protocols.

``access_panel`` (AC-200 style door controller)::

    AA 55 LEN ADDR CMD PAYLOAD(LEN) XOR8(from LEN to the last payload byte) 0D
    01 -> 81 [door bits: 0 open, 1 locked]
    unsolicited: 21 card granted [card BCD x4, door], 22 card denied [card BCD x4, door],
                 23 door forced [door]; the master acknowledges with A0

``alarm_pillar`` (P5 style one-button pillar)::

    7E ADDR CMD LEN PAYLOAD(LEN) CRC16/MODBUS(from ADDR, low byte first)
    10 -> 90 [bits: 0 call active, 1 tamper]
    unsolicited: 30 button [button number], 31 tamper [0/1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hwsim.serial.frames import INVALID, NEED_MORE
from hwsim.serial.meter import SimDevice


def _crc_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


@dataclass
class FramedRequest:
    address: int
    command: int
    payload: bytes
    raw: bytes


class FramedDevice(SimDevice):
    protocol = "framed"
    model = ""

    def __init__(self, address: str, quirks: dict[str, Any] | None = None,
                 values: dict[str, Any] | None = None, seed: int = 0,
                 script: list[dict[str, Any]] | None = None) -> None:
        super().__init__(address, quirks, seed)
        self.addr = int(address)
        self.values: dict[str, Any] = {}
        self.script = list(script or [])
        self.acks = 0
        self.sent_events = 0
        self._init_values()
        self.values.update(values or {})

    def _init_values(self) -> None:
        pass

    @staticmethod
    def parse(buf: bytes) -> tuple[str | FramedRequest, int]:
        raise NotImplementedError

    def frame(self, command: int, payload: bytes) -> bytes:
        raise NotImplementedError

    def event_frame(self, event: str, fields: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def handle(self, req: FramedRequest) -> bytes | None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"protocol": "framed", "model": self.model, "address": self.addr,
                "values": dict(self.values), "quirks": self.quirks.as_dict(),
                "requests": self.requests, "acks": self.acks, "events": self.sent_events}


class AccessPanel(FramedDevice):
    model = "access_panel"

    def _init_values(self) -> None:
        self.values.update({"door_open": False, "locked": True})

    @staticmethod
    def parse(buf: bytes) -> tuple[str | FramedRequest, int]:
        if len(buf) < 3:
            return (NEED_MORE if buf[:2] in (b"", b"\xaa", b"\xaa\x55") else INVALID), 0
        if buf[:2] != b"\xaa\x55":
            return INVALID, 0
        n = buf[2] + 7
        if len(buf) < n:
            return NEED_MORE, 0
        x = 0
        for b in buf[2 : n - 2]:
            x ^= b
        if buf[n - 1] != 0x0D or buf[n - 2] != x:
            return INVALID, 0
        return FramedRequest(buf[3], buf[4], bytes(buf[5 : n - 2]), bytes(buf[:n])), n

    def frame(self, command: int, payload: bytes) -> bytes:
        body = bytes([len(payload), self.addr, command]) + payload
        x = 0
        for b in body:
            x ^= b
        return b"\xaa\x55" + body + bytes([x, 0x0D])

    def handle(self, req: FramedRequest) -> bytes | None:
        if req.address != self.addr:
            return None
        self.requests += 1
        if req.command == 0x01:
            bits = (1 if self.values["door_open"] else 0) | (2 if self.values["locked"] else 0)
            return self.frame(0x81, bytes([bits]))
        if req.command == 0xA0:
            self.acks += 1
        return None

    def event_frame(self, event: str, fields: dict[str, Any]) -> bytes:
        door = int(fields.get("door", 1))
        if event in ("card_granted", "card_denied"):
            card = str(fields.get("card", "00000000")).rjust(8, "0")
            cmd = 0x21 if event == "card_granted" else 0x22
            return self.frame(cmd, bytes.fromhex(card) + bytes([door]))
        if event == "door_forced":
            return self.frame(0x23, bytes([door]))
        raise ValueError(f"access_panel has no event {event!r} (card_granted, card_denied, door_forced)")


class AlarmPillar(FramedDevice):
    model = "alarm_pillar"

    def _init_values(self) -> None:
        self.values.update({"call_active": False, "tamper": False})

    @staticmethod
    def parse(buf: bytes) -> tuple[str | FramedRequest, int]:
        if not buf:
            return NEED_MORE, 0
        if buf[0] != 0x7E:
            return INVALID, 0
        if len(buf) < 4:
            return NEED_MORE, 0
        n = buf[3] + 6
        if len(buf) < n:
            return NEED_MORE, 0
        crc = _crc_modbus(bytes(buf[1 : n - 2]))
        if buf[n - 2] != crc & 0xFF or buf[n - 1] != crc >> 8:
            return INVALID, 0
        return FramedRequest(buf[1], buf[2], bytes(buf[4 : n - 2]), bytes(buf[:n])), n

    def frame(self, command: int, payload: bytes) -> bytes:
        body = bytes([self.addr, command, len(payload)]) + payload
        crc = _crc_modbus(body)
        return b"\x7e" + body + bytes([crc & 0xFF, crc >> 8])

    def handle(self, req: FramedRequest) -> bytes | None:
        if req.address != self.addr:
            return None
        self.requests += 1
        if req.command == 0x10:
            bits = (1 if self.values["call_active"] else 0) | (2 if self.values["tamper"] else 0)
            return self.frame(0x90, bytes([bits]))
        return None

    def event_frame(self, event: str, fields: dict[str, Any]) -> bytes:
        if event == "button":
            return self.frame(0x30, bytes([int(fields.get("button", 1))]))
        if event == "tamper":
            self.values["tamper"] = bool(fields.get("active", True))
            return self.frame(0x31, bytes([1 if self.values["tamper"] else 0]))
        raise ValueError(f"alarm_pillar has no event {event!r} (button, tamper)")


FRAMED_MODELS: dict[str, type[FramedDevice]] = {"access_panel": AccessPanel, "alarm_pillar": AlarmPillar}
