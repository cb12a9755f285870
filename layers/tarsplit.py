"""The tar-split of a layer: every byte of its tar stream except file contents,
so that the exact tar, and with it the diffID, can be rebuilt from the layer dir.

A store keeps layers extracted, not as tars.  To `save` or `export` a layer so
that it imports back to the same ChainID, the tar must come back byte for
byte: the headers, padding and end blocks are recorded while the tar streams
in (`SplitRecorder`) or is written (`archive.TarWriter`); file contents are
referenced by path and read back from the layer dir (`replay`).  What
containers/storage keeps in its `*.tar-split.gz` files, in our own format.

File format (gzip-compressed)::

    MAGIC
    b"R" u32 n, n bytes           raw tar bytes
    b"F" u64 size, u16 n, n bytes `size` bytes of the file at that path (relative
                                  to the diff dir, "/"-separated, surrogateescape)
    b"C" u64 xxh3                 checksum of the last F's contents
    b"E"                          end

Replaying checks every file's length and checksum: a corrupt layer is named
with the file that changed (`LayerCorrupt`), never silently exported.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from typing import BinaryIO, Iterator

import xxhash

from .digest import Digest
from .errors import LayerCorrupt, LayersError
from .fsutil import open_beneath

MAGIC = b"STRATA-TAR-SPLIT 1\n"
_CHUNK = 1 << 20
_FLUSH = 4 << 20       # pending raw bytes flushed beyond this...
_KEEP = 1 << 20        # ...keeping this much (tarfile reads ahead a few kB)


def checksum() -> "xxhash.xxh3_64":
    """The per-file checksum kept in a split (fast; the diffID covers identity)."""
    return xxhash.xxh3_64()


class SplitPaths:
    """The paths a split refers to, fed entry by entry in tar order.  A split
    refers to files by path, so a later entry that replaces one (or a
    directory holding one) makes it unusable: `ok` turns false."""

    def __init__(self) -> None:
        self.ok = True
        self._files: set[tuple[str, ...]] = set()
        self._dirs: set[tuple[str, ...]] = set()

    def entry(self, key: tuple[str, ...], is_dir: bool) -> None:
        """An entry at `key` (its path components) is applied."""
        if key in self._files or (key in self._dirs and not is_dir):
            self.ok = False

    def referenced(self, key: tuple[str, ...]) -> None:
        """The split refers to the file at `key` for its contents."""
        self._files.add(key)
        for i in range(1, len(key)):
            self._dirs.add(key[:i])


class SplitWriter:
    """Writes one split file; `close()` makes it durable, `abandon()` drops it."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "wb")
        # no name nor time in the gzip header: the same tar gives the same
        # split, so a seekable blob carrying it is deterministic too
        self._gz = gzip.GzipFile(filename="", fileobj=self._f, mode="wb", compresslevel=3,
                                 mtime=0)
        self._gz.write(MAGIC)
        self._raw = bytearray()

    def raw(self, data: bytes) -> None:
        self._raw += data
        if len(self._raw) >= 1 << 16:
            self._flush_raw()

    def _flush_raw(self) -> None:
        if self._raw:
            self._gz.write(b"R" + struct.pack(">I", len(self._raw)))
            self._gz.write(self._raw)
            self._raw = bytearray()

    def file(self, relpath: str, size: int) -> None:
        self._flush_raw()
        name = relpath.encode("utf-8", "surrogateescape")
        self._gz.write(b"F" + struct.pack(">QH", size, len(name)) + name)

    def file_checksum(self, value: int) -> None:
        self._flush_raw()
        self._gz.write(b"C" + struct.pack(">Q", value))

    def close(self) -> None:
        self._flush_raw()
        self._gz.write(b"E")
        self._gz.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abandon(self) -> None:
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SplitRecorder:
    """The reader a tar parser reads a layer's tar stream through.

    Every byte passes to the split as raw bytes, but for the data regions the
    extractor announces (`data_begins`) before reading them and closes with
    `data_done`.  Positions are offsets in the tar stream, as tarfile's
    `TarInfo.offset_data`.
    """

    def __init__(self, raw: BinaryIO, writer: SplitWriter | None):
        self._raw = raw
        self._w = writer
        self.pos = 0                   # stream bytes delivered so far
        self._pending = bytearray()    # raw bytes not yet written, from _pending_at
        self._pending_at = 0
        self._skip_end = 0             # bytes before this belong to a file's data

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data and self._w is not None:
            self._take(data)
        self.pos += len(data)
        return data

    def _take(self, data: bytes) -> None:
        start = self.pos
        if self._skip_end > start:
            cut = min(len(data), self._skip_end - start)
            data, start = data[cut:], start + cut
            if not data:
                return
        if not self._pending:
            self._pending_at = start
        self._pending += data
        if len(self._pending) > _FLUSH:
            n = len(self._pending) - _KEEP
            self._w.raw(bytes(self._pending[:n]))
            del self._pending[:n]
            self._pending_at += n

    def data_begins(self, offset: int, size: int, relpath: str) -> None:
        """Bytes [offset, offset+size) are the contents of `relpath`."""
        if self._w is None:
            return
        if self._pending and offset < self._pending_at:
            raise AssertionError("tar-split: data region before recorded bytes")
        if self._pending:
            head = offset - self._pending_at
            self._w.raw(bytes(self._pending[:head]))
            end = offset + size
            tail_from = max(0, end - self._pending_at)
            rest = self._pending[tail_from:]
            self._pending = bytearray(rest)
            self._pending_at = max(end, self._pending_at)
        self._w.file(relpath, size)
        self._skip_end = offset + size

    def data_done(self, value: int) -> None:
        if self._w is not None:
            self._w.file_checksum(value)

    def drain(self) -> None:
        """Read to the end of the stream (trailing padding belongs to it)."""
        while self.read(_CHUNK):
            pass

    def finish(self) -> None:
        if self._w is not None and self._pending:
            self._w.raw(bytes(self._pending))
            self._pending = bytearray()


def replay(split_path: str, diff_dir: str, where: str) -> Iterator[bytes]:
    """The layer's tar stream, chunk by chunk, rebuilt from its split and its
    diff dir.  LayerCorrupt(where, path, reason) when a file lost bytes or its
    checksum differs, or the split itself is damaged."""
    dirfd = os.open(diff_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with gzip.open(split_path, "rb") as gz:
            yield from _frames(gz, dirfd, where)
    except (EOFError, struct.error, gzip.BadGzipFile, zlib.error) as e:
        raise LayerCorrupt(where, os.path.basename(split_path),
                           f"damaged tar-split ({e})") from None
    finally:
        os.close(dirfd)


def rebuilt_digest(split_path: str, diff_dir: str, where: str) -> Digest:
    """The sha256 of the tar `replay` rebuilds: the layer's diffID when its
    dir is intact (LayerCorrupt as `replay`)."""
    h = hashlib.sha256()
    for data in replay(split_path, diff_dir, where):
        h.update(data)
    return Digest(h.hexdigest())


def _exact(gz, n: int) -> bytes:
    data = gz.read(n)
    if len(data) != n:
        raise EOFError("unexpected end of tar-split")
    return data


def frames(gz: BinaryIO) -> Iterator[tuple[bytes, object]]:
    """The frames of an open (decompressed) split, in order: (b"R", raw
    bytes), (b"F", (relpath, size)), (b"C", xxh3 of the last F's contents).
    EOFError (also struct.error) when the split is damaged."""
    if gz.read(len(MAGIC)) != MAGIC:
        raise EOFError("not a tar-split")
    while True:
        kind = _exact(gz, 1)
        if kind == b"R":
            (n,) = struct.unpack(">I", _exact(gz, 4))
            yield kind, _exact(gz, n)
        elif kind == b"F":
            size, n = struct.unpack(">QH", _exact(gz, 10))
            yield kind, (_exact(gz, n).decode("utf-8", "surrogateescape"), size)
        elif kind == b"C":
            yield kind, struct.unpack(">Q", _exact(gz, 8))[0]
        elif kind == b"E":
            return
        else:
            raise EOFError(f"unknown tar-split frame {kind!r}")


def _frames(gz, dirfd: int, where: str) -> Iterator[bytes]:
    last: tuple[str, int] | None = None
    for kind, value in frames(gz):
        if kind == b"R":
            yield value
        elif kind == b"F":
            relpath, size = value
            h = checksum()
            yield from _file_bytes(dirfd, relpath, size, h, where)
            last = (relpath, h.intdigest())
        elif last is not None and last[1] != value:
            raise LayerCorrupt(where, last[0], "contents differ from the layer's tar")


def _file_bytes(dirfd: int, relpath: str, size: int, h, where: str) -> Iterator[bytes]:
    try:
        fd = open_beneath(dirfd, relpath)
    except (OSError, LayersError) as e:
        raise LayerCorrupt(where, relpath, f"cannot open ({e})") from None
    try:
        left = size
        offset = 0
        while left:
            data = os.pread(fd, min(_CHUNK, left), offset)
            if not data:
                raise LayerCorrupt(where, relpath, f"shorter than its {size} bytes")
            h.update(data)
            offset += len(data)
            left -= len(data)
            yield data
        if os.pread(fd, 1, offset):
            raise LayerCorrupt(where, relpath, f"longer than its {size} bytes")
    finally:
        os.close(fd)
