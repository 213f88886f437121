"""lxml, imported on first use, with one hardened parser (no entity expansion, no network).

The driver module is imported by every gateway (drivers are found through entry points),
so nothing here may import lxml at module level: a gateway without cameras does not pay
for it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxml import etree


class MalformedXML(ValueError):
    """The bytes are not well-formed XML (the message is lxml's)."""


@functools.cache
def _parser() -> etree.XMLParser:
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def parse(data: bytes) -> etree._Element:
    """Parse ``data`` with the hardened parser; :class:`MalformedXML` when it is not XML."""
    from lxml import etree

    try:
        return etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXML(str(exc)) from None


def tostring(el: etree._Element) -> bytes:
    from lxml import etree

    return bytes(etree.tostring(el))
