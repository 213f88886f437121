"""Realistic personal data for privacy tests, and a leak detector over many encodings.

The residents below are invented; their ID numbers carry valid check digits (computed here
independently of the product code), their mobiles use real carrier prefixes, and their face
"images" are JPEG-framed random bytes. ``records()`` builds the kind of records drivers
produce; ``find_leaks()`` searches any output bytes (a JSON payload, an SQLite file) for
each secret in every encoding a careless serialiser could produce.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass

from gateway.record import Record

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check(first17: str) -> str:
    """GB 11643 check character (ISO 7064 MOD 11-2), written independently for tests."""
    s = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return "10X98765432"[s % 11]


def make_id(region: str, birth: str, seq: str) -> str:
    first17 = region + birth + seq
    assert len(first17) == 17, first17
    return first17 + id_check(first17)


def jpeg_bytes(seed: int, size: int = 2048) -> bytes:
    rnd = random.Random(seed)
    body = bytes(rnd.getrandbits(8) for _ in range(size))
    return (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + body + b"\xff\xd9"
    )


@dataclass(frozen=True)
class Resident:
    name: str
    id_number: str
    mobile: str
    room: str
    card_no: str
    person_id: str
    plate: str
    face: bytes


def _residents() -> list[Resident]:
    raw = [
        ("张伟", "510107", "19850312", "123", "13812345678", "3-2-1201", "A1B2C3D4", "川A12345"),
        ("王芳", "510104", "19920718", "456", "15908231234", "5-1-0302", "0099887766", "川AD12345"),
        (
            "李娜",
            "110105",
            "19491231",
            "002",
            "18612349876",
            "12栋3单元1502室",
            "E7788-0031",
            "京N·8K2L9",
        ),
        (
            "刘洋",
            "440305",
            "20010101",
            "301",
            "17723456789",
            "7-4-2201",
            "CARD-553201",
            "粤B-D12345",
        ),
    ]
    out = []
    for i, (name, region, birth, seq, mobile, room, card, plate) in enumerate(raw):
        out.append(
            Resident(
                name=name,
                id_number=make_id(region, birth, seq),
                mobile=mobile,
                room=room,
                card_no=card,
                person_id=f"P{region}{i:04d}",
                plate=plate,
                face=jpeg_bytes(i),
            )
        )
    return out


RESIDENTS: list[Resident] = _residents()

# at least one ID number ends in the check character X
assert any(r.id_number.endswith("X") for r in RESIDENTS), [r.id_number for r in RESIDENTS]


def records(gw: str = "cd-wh-jifu-gw01", ts: float = 1_700_000_000.0) -> list[Record]:
    """A day in the community, as drivers would report it (before the privacy policy)."""
    out: list[Record] = []
    for i, r in enumerate(RESIDENTS):
        t = ts + i * 7.0
        face_b64 = base64.b64encode(r.face).decode()
        out.append(
            Record(
                gw=gw,
                dev=f"b{i + 1}-door-01",
                cls="access_control",
                pt="access_granted",
                kind="event",
                v="face" if i % 2 else "card",
                ts=t,
                sev="info",
                attrs={
                    "person_id": r.person_id,
                    "card_no": r.card_no,
                    "name": r.name,
                    "id_number": r.id_number,
                    "phone": r.mobile,
                    "room": r.room,
                    "face_image": face_b64,
                    "snapshot": "data:image/jpeg;base64," + face_b64,
                    "method": "face" if i % 2 else "card",
                    "door": "east gate",
                },
            )
        )
        # a vendor that nests the person and puts the face as raw bytes and as a feature vector
        out.append(
            Record(
                gw=gw,
                dev=f"b{i + 1}-door-01",
                cls="access_control",
                pt="access_denied",
                kind="event",
                v="expired",
                ts=t + 1,
                sev="minor",
                attrs={
                    "person": {
                        "name": r.name,
                        "id_number": r.id_number,
                        "face": r.face,
                        "features": [((j * 37 + i) % 100) / 100 for j in range(128)],
                    },
                    "memo": f"visitor reg. ID {r.id_number}, tel +86 {r.mobile[:3]} "
                    f"{r.mobile[3:7]} {r.mobile[7:]}",
                },
            )
        )
        out.append(
            Record(
                gw=gw,
                dev=f"p{i + 1}",
                cls="parking_space",
                pt="vehicle_entry",
                kind="event",
                v=r.plate,
                ts=t + 2,
                sev="info",
                attrs={
                    "plate_no": r.plate,
                    "owner_name": r.name,
                    "owner_phone": r.mobile,
                    "image": face_b64,
                },
            )
        )
        out.append(
            Record(
                gw=gw,
                dev=f"fall-{i + 1}",
                cls="fall_detector",
                pt="fall",
                kind="event",
                v=True,
                ts=t + 3,
                sev="critical",
                attrs={
                    "room": r.room,
                    "resident": r.name,
                    "contact": r.mobile,
                    "note": f"elderly resident {r.id_number} fell in the bathroom",
                },
            )
        )
        out.append(
            Record(
                gw=gw,
                dev=f"pillar-{i + 1}",
                cls="alarm_pillar",
                pt="button",
                kind="event",
                v=True,
                ts=t + 4,
                sev="critical",
                attrs={
                    "caller_mobile": int(r.mobile),
                    "face_pic": r.face.hex(),
                    "snapshot_uri": f"http://10.0.0.{i + 9}/snap/{r.card_no}.jpg",
                },
            )
        )
    # non-personal records must pass unchanged
    out.append(
        Record(
            gw=gw,
            dev="b3-smoke-0201",
            cls="smoke_detector",
            pt="smoke_density",
            kind="telemetry",
            v=1.25,
            u="%/m",
            ts=ts + 60,
        )
    )
    out.append(
        Record(
            gw=gw,
            dev="m-0101",
            cls="electricity_meter",
            pt="meter_time",
            kind="state",
            v="2024-05-01T08:00:00+08:00",
            ts=ts + 61,
        )
    )
    return out


def secrets() -> dict[str, str | bytes]:
    """Every raw personal datum of ``RESIDENTS`` that must never leave, by label."""
    out: dict[str, str | bytes] = {}
    for i, r in enumerate(RESIDENTS):
        out[f"name{i}"] = r.name
        out[f"id{i}"] = r.id_number
        out[f"id{i}-birth"] = r.id_number[6:14]
        out[f"mobile{i}"] = r.mobile
        out[f"mobile{i}-mid"] = r.mobile[3:7] + r.mobile[7:]
        out[f"room{i}"] = r.room
        out[f"card{i}"] = r.card_no
        out[f"person{i}"] = r.person_id
        plate = r.plate.replace("·", "").replace("-", "")
        out[f"plate{i}"] = r.plate
        out[f"plate{i}-body"] = plate[1:-1]  # the part that identifies the car
        out[f"face{i}"] = r.face
    return out


def encodings(value: str | bytes) -> dict[str, bytes]:
    """``value`` as a leak could appear in output bytes."""
    if isinstance(value, bytes):
        return {  # windows from the middle of the blob, aligned as a whole-blob encoding
            "raw": value[100:164],
            "base64": base64.b64encode(value)[100:164],
            "base64url": base64.urlsafe_b64encode(value)[100:164],
            "hex": value.hex().encode()[200:328],
            "json-list": json.dumps(list(value[100:116]))[1:-1].encode(),
        }
    out = {
        "utf-8": value.encode("utf-8"),
        "utf-16-le": value.encode("utf-16-le"),
        "gb18030": value.encode("gb18030"),
        "json-ascii": json.dumps(value, ensure_ascii=True)[1:-1].encode(),
    }
    b = value.encode("utf-8")
    if len(b) >= 6:  # base64 of very short strings gives too-short, collision-prone needles
        out["base64"] = base64.b64encode(b).rstrip(b"=")
        out["base64url"] = base64.urlsafe_b64encode(b).rstrip(b"=")
    return out


def find_leaks(blob: bytes, secret_map: dict[str, str | bytes] | None = None) -> list[str]:
    """Labels ``<secret>/<encoding>`` of every secret found in ``blob``."""
    found = []
    for label, value in (secret_map or secrets()).items():
        for enc, needle in encodings(value).items():
            if needle and needle in blob:
                found.append(f"{label}/{enc}")
    return found
