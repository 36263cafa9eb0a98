"""Image files that are bad in ways a dataset download can be."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny, valid PNG whose header claims ``width`` x ``height``: Pillow refuses it at open
    (DecompressionBombError, which is not an OSError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path
