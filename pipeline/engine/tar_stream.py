"""A ustar stream of regular files that share one owner, mode and time: tarfile's bytes, fewer steps.

`tarfile` builds each member's 512-byte header field by field in Python
(about 55 us a member, a shard's three members per sample: 0.6 s of CPU
per 4,000-sample shard, on the run's tail after the last download).  Every
member of a shard has the same header but for its name, size and checksum,
so `FixedHeaderTar` asks tarfile for one header and copies it, setting those
three fields as tarfile sets them (`stn`, `itn`, `calc_chksums`).  A name
longer than the ustar name field, or a size past its 11 octal digits, goes
to tarfile's own header builder, so the bytes are always what
`tarfile.open(mode="w|", format=USTAR_FORMAT)` with `addfile` writes:
`tests/test_writers.py` holds them equal.
"""
from __future__ import annotations

import tarfile
from typing import BinaryIO

_NAME = slice(0, 100)
_SIZE = slice(124, 136)
_CHECKSUM = slice(148, 156)
_MAX_SIZE = 8**11  # ustar's size field: 11 octal digits and a NUL
_BLANK_CHECKSUM = b" " * 8  # what the checksum field holds while the checksum is summed
_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # tarfile's defaults on a UTF-8 system


class FixedHeaderTar:
    """Writes members to `handle` (an open binary file) as tarfile's "w|" USTAR stream does."""

    def __init__(self, handle: BinaryIO, mode: int = 0o444, mtime: int = 0):
        self._handle, self._mode, self._mtime = handle, mode, mtime
        template = bytearray(self._tarfile_header("x", 0))
        template[_CHECKSUM] = _BLANK_CHECKSUM
        self._template = bytes(template)
        self._offset = 0

    def add(self, name: str, data: bytes) -> None:
        self._write(self._header(name, len(data)))
        self._write(data)
        remainder = len(data) % tarfile.BLOCKSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))

    def close(self) -> None:
        """The end-of-archive blocks and the padding to a whole record; the handle stays open."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        remainder = self._offset % tarfile.RECORDSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))

    def _header(self, name: str, size: int) -> bytes:
        encoded = name.encode(_ENCODING, _ERRORS)
        if len(encoded) > _NAME.stop or size >= _MAX_SIZE:
            return self._tarfile_header(name, size)  # a split name, or tarfile's own error
        header = bytearray(self._template)
        header[_NAME] = encoded.ljust(_NAME.stop, tarfile.NUL)
        header[_SIZE] = b"%011o\0" % size
        header[_CHECKSUM] = b"%06o\0 " % sum(header)
        return bytes(header)

    def _tarfile_header(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self._mtime, self._mode
        return info.tobuf(tarfile.USTAR_FORMAT, _ENCODING, _ERRORS)

    def _write(self, data: bytes) -> None:
        self._handle.write(data)
        self._offset += len(data)
