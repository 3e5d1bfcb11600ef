"""Reading dictd databases (`NAME.index` + `NAME.dict` or `NAME.dict.dz`), as Debian's dict-*
packages install them under /usr/share/dictd.

The index maps each headword to a byte offset and length, written in dictd's base64 numbers. A
`.dict.dz` file is a gzip stream in dictzip's chunked layout: its header lists the compressed size
of every fixed-size chunk, so one definition is read by inflating only the chunks that hold it.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_VALUE = {c: i for i, c in enumerate(B64)}
DEFAULT_DIRS = ("/usr/share/dictd",)


def b64_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + B64_VALUE[c]
    return n


def find_database(name: str, dirs=None) -> Path | None:
    """The index path of database `name` in the configured directories (LAMDA_DICTD_DIRS, a
    colon-separated list, or /usr/share/dictd), or None."""
    dirs = dirs or os.environ.get("LAMDA_DICTD_DIRS", ":".join(DEFAULT_DIRS)).split(":")
    for d in dirs:
        p = Path(d) / f"{name}.index"
        if p.is_file():
            return p
    return None


class DictzipFile:
    """Random access to a .dict.dz (dictzip) or plain .dict file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.f = open(self.path, "rb")
        self.chunks: list[tuple[int, int]] | None = None  # (file offset, compressed size)
        if self.path.suffix == ".dz":
            self._read_header()

    def _read_header(self) -> None:
        head = self.f.read(10)
        if head[:2] != b"\x1f\x8b" or not head[3] & 4:  # gzip magic, FEXTRA
            raise ValueError(f"{self.path}: not a dictzip file")
        (xlen,) = struct.unpack("<H", self.f.read(2))
        extra, pos = self.f.read(xlen), 0
        chunk_len, sizes = None, []
        while pos + 4 <= len(extra):
            sub_id, sub_len = extra[pos:pos + 2], struct.unpack("<H", extra[pos + 2:pos + 4])[0]
            data = extra[pos + 4:pos + 4 + sub_len]
            if sub_id == b"RA":
                _ver, chunk_len, count = struct.unpack("<HHH", data[:6])
                sizes = list(struct.unpack(f"<{count}H", data[6:6 + 2 * count]))
            pos += 4 + sub_len
        if chunk_len is None:
            raise ValueError(f"{self.path}: gzip file without dictzip chunk table")
        flags, offset = head[3], 12 + xlen
        self.f.seek(offset)
        for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
            if flags & flag:
                while self.f.read(1) not in (b"\x00", b""):
                    offset += 1
                offset += 1
        if flags & 2:  # FHCRC
            offset += 2
        self.chunk_len, self.chunks = chunk_len, []
        for size in sizes:
            self.chunks.append((offset, size))
            offset += size

    def read(self, start: int, length: int) -> bytes:
        """`length` bytes of the text at `start`. Safe to call from several threads (positioned
        reads); recently decompressed chunks are cached."""
        if self.chunks is None:
            return os.pread(self.f.fileno(), length, start)
        first, last = start // self.chunk_len, (start + length - 1) // self.chunk_len
        out = b"".join(self._chunk(i) for i in range(first, min(last, len(self.chunks) - 1) + 1))
        skip = start - first * self.chunk_len
        return out[skip:skip + length]

    @functools.lru_cache(maxsize=64)
    def _chunk(self, i: int) -> bytes:
        offset, size = self.chunks[i]
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(os.pread(self.f.fileno(), size, offset))

    def close(self) -> None:
        self.f.close()


class DictDatabase:
    """One dictd database: headword lookup (case-insensitive) and iteration over entries."""

    def __init__(self, index_path: str | os.PathLike):
        self.index_path = Path(index_path)
        self.name = self.index_path.name[:-len(".index")]
        data = self.index_path.with_suffix(".dict.dz")
        if not data.exists():
            data = self.index_path.with_suffix(".dict")
        self.data = DictzipFile(data)
        self.index: dict[str, list[tuple[int, int]]] = {}
        with open(self.index_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
                    continue
                self.index.setdefault(parts[0].lower(), []).append((b64_number(parts[1]),
                                                                    b64_number(parts[2])))

    def lookup(self, word: str) -> list[str]:
        """Every definition of `word` (text as stored, headline included)."""
        return [self.data.read(o, n).decode("utf-8", errors="replace")
                for o, n in self.index.get(word.strip().lower(), [])]

    def entries(self) -> Iterator[tuple[str, str]]:
        """(headword, definition) of every entry."""
        for word, spans in self.index.items():
            for o, n in spans:
                yield word, self.data.read(o, n).decode("utf-8", errors="replace")
