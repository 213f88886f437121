"""ONVIF driver tests: make the repository root importable so ``tests.support`` resolves
when these tests run on their own."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
