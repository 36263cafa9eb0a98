"""The header of a safetensors file, read and checked without torch and without trusting it.

A safetensors file starts with an 8-byte little-endian header length, then that many
bytes of JSON naming each tensor's dtype, shape and byte range. A cut or corrupted
file, or a pickle saved under a ``.safetensors`` name, must give one clear error
naming the file — not a MemoryError from an absurd header length or a library's
generic message — so every length and offset is checked against the file's size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the safetensors library's own limit on the JSON header
MAX_HEADER_BYTES = 100_000_000
#: bytes per element of each safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class TensorFileError(ValueError):
    """What is wrong with a file that should be safetensors (the caller names the checkpoint)."""


def looks_like_pickle(start: bytes) -> str | None:
    """"a torch zip archive" / "a pickle" when ``start`` (a file's first bytes) is one, else None."""
    if start.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save's format)"
    if len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5:
        return "a pickle"
    return None


def read_header(path: Path) -> dict[str, Any]:
    """The checked header of safetensors file ``path`` (``__metadata__`` included).

    Raises TensorFileError saying what is wrong; OSError when the file cannot be read.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise TensorFileError(f"{size} bytes, too short for a safetensors file")
        length = int.from_bytes(start, "little")
        if length > min(size - 8, MAX_HEADER_BYTES) or length < 2:
            kind = looks_like_pickle(start)
            if kind:
                raise TensorFileError(f"not a safetensors file: it is {kind}")
            raise TensorFileError(f"not a safetensors file: its header length {length} does not fit "
                                  f"the file's {size} bytes (cut or corrupted)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"corrupted safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise TensorFileError("corrupted safetensors header (not a JSON object)")
    _check_tensors(header, data_bytes=size - 8 - length)
    return header


def tensor_entries(header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The header's tensors (without ``__metadata__``)."""
    return {name: meta for name, meta in header.items() if name != "__metadata__"}


def _check_tensors(header: dict[str, Any], data_bytes: int) -> None:
    """Each tensor's byte range fits its dtype and shape, and the ranges cover the data exactly."""
    end = 0
    used = 0
    for name, meta in tensor_entries(header).items():
        try:
            dtype, shape, (begin, stop) = meta["dtype"], meta["shape"], meta["data_offsets"]
            count = 1
            for dim in shape:
                if not isinstance(dim, int) or dim < 0:
                    raise ValueError
                count *= dim
            valid = isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid or dtype not in DTYPE_BYTES:
            raise TensorFileError(f"corrupted safetensors header: bad entry for tensor {name!r}")
        if stop - begin != count * DTYPE_BYTES[dtype]:
            raise TensorFileError(f"corrupted safetensors header: tensor {name!r} ({dtype}, shape {shape}) "
                                  f"has {stop - begin} bytes")
        end = max(end, stop)
        used += stop - begin
    if end != data_bytes or used != data_bytes:
        raise TensorFileError(f"the header describes {end} bytes of tensor data, the file holds {data_bytes} "
                              "(cut or corrupted)")
