"""A structural check of MATLAB v5 files before scipy reads them.

scipy.io.loadmat trusts the sizes written in a file: a damaged data tag makes its
C reader run past the buffer and crash the process (seen with one flipped byte).
This walk checks every numeric, character and cell array against its declared
shape first, so such a file raises DataError instead. Struct, object and sparse
arrays are only bounds-checked; the released data files hold none.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from drcl_fast.errors import DataError

MI_MATRIX, MI_COMPRESSED = 14, 15
# mi data types and their item sizes
ITEM_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
NUMERIC_CLASSES = set(range(6, 16))
CHAR_CLASS, CELL_CLASS = 4, 1
COMPLEX_FLAG = 0x0800


class _Elements:
    """Tagged data elements of one byte buffer, read in order."""

    def __init__(self, buf: bytes, endian: str, where: str) -> None:
        self.buf, self.endian, self.where, self.pos = buf, endian, where, 0

    def next(self) -> tuple[int, bytes]:
        if self.pos + 8 > len(self.buf):
            raise DataError(f"{self.where}: an array ends early (truncated or damaged file)")
        kind, size = struct.unpack_from(self.endian + "II", self.buf, self.pos)
        if kind >> 16:  # small data element: size and type share the first word, data in the second
            kind, size, start, step = kind & 0xFFFF, kind >> 16, self.pos + 4, 8
        else:
            start, step = self.pos + 8, 8 + size + (-size % 8)
        if size > len(self.buf) - start:
            raise DataError(f"{self.where}: an array declares {size} bytes where {len(self.buf) - start} remain")
        self.pos += step
        return kind, self.buf[start:start + size]


def check_mat5(path: Path) -> None:
    """Raise DataError if a MATLAB v5 file's arrays do not match their declared sizes."""
    where = f"cannot read {path}"
    with open(path, "rb") as fh:
        header = fh.read(128)
        if len(header) < 128:
            raise DataError(f"{where}: shorter than a MATLAB header")
        endian = "<" if header[126:128] == b"IM" else ">" if header[126:128] == b"MI" else None
        if endian is None:
            return  # not v5 (v4 files have no such marker): scipy reads those in pure Python
        while tag := fh.read(8):
            if len(tag) < 8:
                raise DataError(f"{where}: the file ends inside an array tag (truncated?)")
            kind, size = struct.unpack(endian + "II", tag)
            body = fh.read(size)
            if len(body) < size:
                raise DataError(f"{where}: the file ends inside an array (truncated?)")
            if kind == MI_COMPRESSED:  # compressed elements carry no padding
                kind, body = _Elements(_inflate(body, where), endian, where).next()
            else:
                fh.seek(-size % 8, 1)
            if kind != MI_MATRIX:
                raise DataError(f"{where}: unexpected top-level element type {kind}")
            _check_matrix(body, endian, where)


def _inflate(body: bytes, where: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body)
    except zlib.error as err:
        raise DataError(f"{where}: a compressed array is damaged ({err})") from None
    if not inflater.eof:
        raise DataError(f"{where}: a compressed array is truncated")
    return data


def _check_matrix(body: bytes, endian: str, where: str) -> None:
    elements = _Elements(body, endian, where)
    kind, flags = elements.next()
    if kind != 6 or len(flags) < 8:
        raise DataError(f"{where}: an array has damaged flags")
    word = struct.unpack_from(endian + "I", flags)[0]
    array_class = word & 0xFF
    _, dims_raw = elements.next()
    if len(dims_raw) % 4 or not dims_raw:
        raise DataError(f"{where}: an array has damaged dimensions")
    dims = struct.unpack(endian + f"{len(dims_raw) // 4}i", dims_raw)
    if min(dims) < 0:
        raise DataError(f"{where}: an array has negative dimensions {dims}")
    count = math.prod(dims)
    elements.next()  # the name
    if array_class in NUMERIC_CLASSES or array_class == CHAR_CLASS:
        for _ in range(2 if word & COMPLEX_FLAG else 1):
            kind, data = elements.next()
            utf8_text = array_class == CHAR_CLASS and kind == 16  # variable width: no size to check
            if kind not in ITEM_SIZE or not utf8_text and len(data) != count * ITEM_SIZE[kind]:
                raise DataError(f"{where}: an array of shape {dims} holds {len(data)} bytes of type {kind}")
    elif array_class == CELL_CLASS:
        for _ in range(count):
            kind, cell = elements.next()
            if kind != MI_MATRIX:
                raise DataError(f"{where}: a cell array holds a damaged element")
            _check_matrix(cell, endian, where)
