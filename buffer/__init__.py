"""SQLite store-and-forward buffer: nothing accepted is ever lost.

Public surface::

    from buffer import Buffer, Batch, BufferRefused, DownsampleConfig

See ``buffer/README.md`` for the durability contract and the file layout.
"""

from ._buffer import Buffer
from ._downsample import DownsampleConfig
from ._types import Batch, BufferRefused, BufferUnavailable

__all__ = ["Batch", "Buffer", "BufferRefused", "BufferUnavailable", "DownsampleConfig"]
