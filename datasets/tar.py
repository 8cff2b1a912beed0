"""Shard tars: a plain ustar writer and a parser that hands out members without copying them.

``tarfile`` builds an object per member and copies each payload: it took 80% of a 64² shard's
read time and most of a producer's tar cost. Shards only need regular files with short names, so
headers are written and parsed here directly; the parser falls back to ``tarfile`` for archives
from other tools (GNU long names, base-256 sizes).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence

__all__ = ["TarStream", "tar_files", "tar_records"]

Buffer = bytes | bytearray | memoryview


def _header(name: str, size: int) -> bytes:
    """A 512-byte ustar header of a regular file (mode 0644, owner 0, mtime 0)."""
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name must be at most 100 bytes; got {len(raw)}: {name!r}")
    block = bytearray(512)
    block[0 : len(raw)] = raw
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8  # the checksum counts its own field as spaces
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


class TarStream:
    """Append regular files to a writable binary file object; ``close`` writes the end blocks.

    Payloads go to ``f.write`` as given (buffers are not joined), so a producer's arrays reach
    the file, and its hashing wrapper, without a copy.
    """

    def __init__(self, f) -> None:
        self.f = f
        self.closed = False

    def add(self, name: str, parts: Sequence[Buffer]) -> None:
        """Write one member whose content is ``parts`` concatenated."""
        size = sum(memoryview(p).nbytes for p in parts)
        self.f.write(_header(name, size))
        for part in parts:
            self.f.write(part)
        if size % 512:
            self.f.write(bytes(512 - size % 512))

    def close(self) -> None:
        if not self.closed:
            self.f.write(bytes(1024))
            self.closed = True


class _Unsupported(Exception):
    """A tar feature the fast parser leaves to :mod:`tarfile` (base-256 sizes, GNU long names)."""


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        raise _Unsupported("base-256 number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def fast_tar_files(data: bytes) -> Iterator[tuple[str, memoryview]]:
    """``(name, content)`` of the regular files of a ustar/pax tar in memory; contents are views of ``data``."""
    view = memoryview(data)
    off, end_of_data, pax = 0, len(data), {}
    while off + 512 <= end_of_data:
        header = data[off : off + 512]
        if not header.strip(b"\0"):
            return  # end-of-archive blocks
        stored, unsigned = _octal(header[148:156]), sum(header[:148]) + 256 + sum(header[156:])
        if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in header):  # signed bytes
            raise tarfile.HeaderError(f"bad header checksum at byte {off}")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        start = off + 512
        if start + size > end_of_data:
            raise tarfile.ReadError(f"truncated member at byte {off}")
        off = start + (size + 511) // 512 * 512
        if kind == b"x":  # pax header of the next member: "<len> <key>=<value>\n" records
            body, pax = data[start : start + size], {}
            while body:
                length = int(body.split(b" ", 1)[0])
                if length <= 0:
                    raise tarfile.HeaderError(f"bad pax record at byte {off}")
                key, _, value = body[: length - 1].split(b" ", 1)[1].partition(b"=")
                pax[key.decode()] = value.decode()
                body = body[length:]
            continue
        if kind in (b"g", b"5"):
            pax = {} if kind == b"5" else pax
            continue
        if kind not in (b"0", b"\0"):
            raise _Unsupported(f"member type {kind!r}")
        name = header[:100].split(b"\0", 1)[0].decode()
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix (GNU keeps times here)
            name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
        name, pax = pax.get("path", name), {}
        yield name, view[start : start + size]
    if data[off:].strip(b"\0"):
        raise tarfile.ReadError(f"truncated header at byte {off}")


def tar_files(data: bytes) -> list[tuple[str, Buffer]]:
    """Every regular file of a tar in memory, in order; raises ``tarfile.TarError`` on damage."""
    try:
        return list(fast_tar_files(data))
    except _Unsupported:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def tar_records(data: bytes) -> Iterator[tuple[str, dict[str, Buffer]]]:
    """``(key, {field: content})`` of consecutive members sharing a key (WebDataset grouping: the
    key is the base name up to its first dot, the field the rest)."""
    key, record = None, {}
    for path, content in tar_files(data):
        name_key, _, name = path.rpartition("/")[2].partition(".")
        if record and name_key != key:
            yield key, record
            record = {}
        key = name_key
        record[name] = content
    if record:
        yield key, record
