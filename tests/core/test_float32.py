"""float32 values without binary noise (``gateway.plugin.float32_value``)."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway.plugin import float32_value

F32 = struct.Struct(">f")


def as_float32(x: float) -> float:
    return float(F32.unpack(F32.pack(x))[0])


def test_known_values() -> None:
    assert as_float32(0.12) == 0.11999999731779099
    assert float32_value(as_float32(0.12)) == 0.12
    assert float32_value(as_float32(22.5)) == 22.5
    assert float32_value(16777216.0) == 16777216.0  # 2**24, exact in float32
    assert float32_value(as_float32(3.4e38)) == 3.4e38


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_same_float32_and_at_most_nine_digits(x: float) -> None:
    y = float32_value(x)
    assert F32.pack(y) == F32.pack(x)  # never changes the value the device sent
    digits = len(f"{y:.9e}".split("e")[0].replace("-", "").replace(".", "").rstrip("0"))
    assert digits <= 9


@given(st.integers(-9_999_999, 9_999_999), st.integers(-20, 20))
def test_a_decimal_of_seven_digits_comes_back_exactly(mantissa: int, exp: int) -> None:
    d = float(f"{mantissa}e{exp}")
    if d != 0 and not 1.2e-38 < abs(d) < 3.4e38:
        return  # outside float32's normal range
    assert float32_value(as_float32(d)) == d
    assert math.isfinite(float32_value(as_float32(d)))
