"""The seekable layer blob (eStargz with one difference): writer and reader.

A seekable blob is a gzip file like any layer's: every gzip reader (Go's,
zlib's, `gzip -dc`, Python's) decompresses it to the plain layer tar, byte for
byte, so its diffID and ChainID are the plain layer's.  It is cut into gzip
members so that one file's content can be fetched by HTTP range and inflated
alone, and it ends with a table of contents (TOC) saying where each file's
content lies:

- Member boundaries: each regular file's content starts a new member, and a
  file bigger than the chunk size (`CHUNK`, 4 MiB) starts a new member every
  chunk.  The tar headers and padding before a file ride at the end of the
  previous member, as stargz-snapshotter's writer puts them.
- The TOC is the spec's JSON, `{"version": 1, "entries": [...]}`, one entry
  per tar entry in tar order (fields: name, type, size, modtime, linkName,
  mode, uid, gid, userName, groupName, devMajor, devMinor, xattrs, digest,
  offset, chunkOffset, chunkSize, chunkDigest; Go's omitempty), a regular
  file's second and later chunks as `chunk` entries after it.  Names are
  the store's (`archive.clean_name` joined by `/`; the layer root is `""`),
  non-UTF-8 bytes as surrogateescape.  Our own top-level fields:
  `strata.tarSplitDigest` and `strata.carrierOffset` (the blob offset of the
  first carrier member, where the last chunk's member ends).
- The 51-byte footer is stargz-snapshotter's: an empty gzip member whose
  FEXTRA subfield `SG` holds `%016x` of the TOC's offset and `STARGZ`.

The one deliberate difference from the eStargz spec: the TOC is not a
`stargz.index.json` entry of the tar, which would add bytes to the tar and
change its diffID.  It rides, gzip-compressed, in the FEXTRA field of empty
gzip members (subfield `ST`, ≤ 65531 bytes each, as many as needed) between
the tar's last member and the footer; the footer points at the first of them.
The layer's tar-split (`tarsplit.py`'s format, its gzip bytes) follows in the
same kind of members (subfield `SP`); the TOC pins it by digest, so the TOC
digest (the manifest's `containerd.io/snapshot/stargz/toc.digest`
annotation: sha256 of the uncompressed TOC JSON) covers everything needed to
rebuild the exact tar from fetched contents.  No prefetch landmark file is
written into the tar, for the same reason.

Writer: `write_seekable(tar, out)`.  Reader: `parse_footer(tail)` →
carrier offset; `parse_toc_region(region, toc_digest)` → `Toc`;
`Toc.chunks(entry)` → `Chunk`s; `read_chunk(compressed, chunk)` → the
chunk's bytes, checked against its digest.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import datetime
import hashlib
import json
import os
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from .archive import clean_name, data_in_split
from .digest import Digest
from .errors import BadSeekableLayer, DigestMismatch, LayersError
from .tarsplit import SplitPaths, SplitRecorder, SplitWriter, checksum

CHUNK = 4 << 20
FOOTER_SIZE = 51
MAX_TOC = 256 << 20            # inflated TOC JSON (about a million entries)
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
TOC_VERSION = 1

_TOC_FIELD = b"ST"             # carrier subfield: a piece of the gzipped TOC JSON
_SPLIT_FIELD = b"SP"           # carrier subfield: a piece of the tar-split
_FOOTER_FIELD = b"SG"
_MAX_PIECE = 0xFFFF - 4        # XLEN ≤ 65535, minus the subfield's own header
# The header of an empty gzip member with FEXTRA, as Go's gzip writes it (no
# time, XFL 0, OS unknown); after the extra field, Go's deflate of nothing
# (one empty stored block) and a zero CRC and size: 51 bytes for the footer.
_EMPTY_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
_EMPTY_BODY = b"\x01\x00\x00\xff\xff" + b"\x00" * 8
_TYPES = ("dir", "reg", "symlink", "hardlink", "char", "block", "fifo")
_READ = 1 << 20
_EMPTY_DIGEST = Digest.of_bytes(b"")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


# -- the carrier members and the footer -------------------------------------------

def _empty_member(subfield: bytes, data: bytes) -> bytes:
    extra = subfield + struct.pack("<H", len(data)) + data
    return _EMPTY_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_BODY


def footer(toc_offset: int) -> bytes:
    """The 51-byte footer pointing at `toc_offset`."""
    return _empty_member(_FOOTER_FIELD, b"%016xSTARGZ" % toc_offset)


def parse_footer(tail: bytes) -> int:
    """The TOC carrier offset from a blob's last `FOOTER_SIZE` bytes (`tail`
    may be longer: its end is used).  ValueError when they are not a footer,
    i.e. the blob is not seekable."""
    f = bytes(tail[-FOOTER_SIZE:])
    if len(f) != FOOTER_SIZE or f[:4] != _EMPTY_HEADER[:4] \
            or f[10:16] != b"\x1a\x00" + _FOOTER_FIELD + b"\x16\x00" \
            or f[32:38] != b"STARGZ" or f[38:] != _EMPTY_BODY:
        raise ValueError("no eStargz footer at the end of the blob")
    try:
        return int(f[16:32].decode("ascii"), 16)
    except ValueError:
        raise ValueError("eStargz footer with a bad TOC offset") from None


def _carriers(subfield: bytes, data: bytes) -> bytes:
    return b"".join(_empty_member(subfield, data[i:i + _MAX_PIECE])
                    for i in range(0, len(data), _MAX_PIECE))


def _carried(region: bytes) -> dict[bytes, bytes]:
    """The subfields' data of the empty members making up `region`, joined
    per subfield id in order.  BadSeekableLayer when it holds anything else."""
    out: dict[bytes, bytes] = {}
    pos = 0
    view = memoryview(region)
    while pos < len(region):
        head = bytes(view[pos:pos + 12])
        if len(head) < 12 or head[:4] != _EMPTY_HEADER[:4]:
            raise BadSeekableLayer("TOC", f"no carrier member at offset {pos} of the TOC")
        (xlen,) = struct.unpack("<H", head[10:12])
        extra = bytes(view[pos + 12:pos + 12 + xlen])
        body = bytes(view[pos + 12 + xlen:pos + 12 + xlen + len(_EMPTY_BODY)])
        if len(extra) != xlen or body != _EMPTY_BODY:
            raise BadSeekableLayer("TOC", f"damaged carrier member at offset {pos} of the TOC")
        while extra:
            (n,) = struct.unpack("<H", extra[2:4]) if len(extra) >= 4 else (-1,)
            if n < 0 or len(extra) < 4 + n:
                raise BadSeekableLayer("TOC", f"damaged extra field at offset {pos} of the TOC")
            out[extra[:2]] = out.get(extra[:2], b"") + extra[4:4 + n]
            extra = extra[4 + n:]
        pos += 12 + xlen + len(_EMPTY_BODY)
    return out


# -- the TOC ----------------------------------------------------------------------

@dataclass
class TocEntry:
    """One tar entry as the TOC describes it (the extracted file's metadata).
    Not frozen, though never changed: a TOC makes one per entry, and a frozen
    dataclass's __init__ took a third of a 7,000-entry TOC's reading."""
    name: str                    # the store's relative path; "" is the layer root
    type: str                    # dir reg symlink hardlink char block fifo
    size: int = 0                # of a regular file's content
    mtime_ns: int = 0
    link_name: str = ""          # symlink target; hard link target (a TOC name)
    mode: int = 0                # the tar header's mode field
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: Digest | None = None  # sha256 of a regular file's whole content


@dataclass(frozen=True)
class Chunk:
    """Bytes [offset_in_file, offset_in_file + size) of file `name`: the
    first `size` bytes inflated from the gzip member at blob offset
    `blob_start`, which ends at `blob_end`."""
    offset_in_file: int
    size: int
    blob_start: int
    blob_end: int
    digest: Digest
    name: str = ""


@dataclass(frozen=True)
class Toc:
    digest: Digest                  # sha256 of the TOC JSON
    entries: dict[str, TocEntry]    # by name, in tar order of first appearance
                                    # (a later duplicate's fields win: a directory
                                    # listed twice keeps its place before its files)
    tar_split: bytes                # the layer's tar-split file (gzip bytes)
    carrier_offset: int             # where the TOC's carrier members start
    _chunks: dict[str, list[Chunk]] = field(default_factory=dict, repr=False)

    def chunks(self, entry: TocEntry) -> list[Chunk]:
        """The chunks of a regular file, in file order (none when empty; gaps
        between them are holes of a sparse file)."""
        return list(self._chunks.get(entry.name, ()))


def _format_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    t = _EPOCH + datetime.timedelta(seconds=sec)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def _parse_time(text: str) -> int:
    """RFC 3339 (as Go writes it, in UTC) → ns since the epoch.  (fromisoformat
    of the usual form, not strptime: a TOC has an entry per file, and strptime
    took a quarter of a second per 7,000 of them.)"""
    base, _, frac = text.removesuffix("Z").partition(".")
    if len(base) == 19 and base[10] == "T" and base[13] == base[16] == ":":
        t = datetime.datetime.fromisoformat(base)
    else:                       # any other form, as strptime reads it
        t = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S")
    t = t.replace(tzinfo=datetime.timezone.utc)
    delta = t - _EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000_000
            + int((frac + "000000000")[:9] if frac else 0))


def _toc_json(e: TocEntry, first: Chunk | None) -> dict:
    doc: dict = {"name": e.name, "type": e.type}
    fields = (("size", e.size), ("modtime", _format_time(e.mtime_ns)),
              ("linkName", e.link_name), ("mode", e.mode), ("uid", e.uid), ("gid", e.gid),
              ("userName", e.user_name), ("groupName", e.group_name),
              ("devMajor", e.dev_major), ("devMinor", e.dev_minor),
              ("xattrs", {k: base64.b64encode(v).decode() for k, v in e.xattrs.items()}),
              ("digest", str(e.digest) if e.digest else ""))
    doc.update((k, v) for k, v in fields if v)
    if first is not None:
        doc.update(_chunk_json(first))
    return doc


def _chunk_json(c: Chunk) -> dict:
    doc = {"offset": c.blob_start, "chunkOffset": c.offset_in_file, "chunkSize": c.size,
           "chunkDigest": str(c.digest)}
    if not c.offset_in_file:
        del doc["chunkOffset"]
    return doc


def parse_toc_region(region: bytes, toc_digest: Digest) -> Toc:
    """The TOC from bytes [carrier offset, blob size − FOOTER_SIZE) of a
    seekable blob.  DigestMismatch when the TOC JSON is not the one
    `toc_digest` names, or the tar-split not the one the TOC names;
    BadSeekableLayer when the region or the TOC is malformed."""
    carried = _carried(region)
    inflate = zlib.decompressobj(31)
    try:
        toc_json = inflate.decompress(carried.get(_TOC_FIELD, b""), MAX_TOC + 1)
    except zlib.error as e:
        raise BadSeekableLayer("TOC", f"cannot inflate ({e})") from None
    if len(toc_json) > MAX_TOC:     # before its digest can be checked: a bomb
        raise BadSeekableLayer("TOC", f"larger than {MAX_TOC} bytes")
    if not inflate.eof or inflate.unused_data:
        raise BadSeekableLayer("TOC", "truncated or followed by other data")
    got = Digest.of_bytes(toc_json)
    if got != toc_digest:
        raise DigestMismatch("TOC", str(toc_digest), str(got))
    try:
        doc = json.loads(toc_json)
        if doc.get("version") != TOC_VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        split_digest = Digest.parse(doc["strata.tarSplitDigest"])
        carrier_offset = _int(doc["strata.carrierOffset"])
        entries, chunks = _entries(doc["entries"], carrier_offset)
    except BadSeekableLayer:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadSeekableLayer("TOC", f"malformed ({type(e).__name__}: {e})") from None
    except LayersError as e:  # BadReference, UnsafeArchive from a digest or name
        raise BadSeekableLayer("TOC", f"malformed ({e})") from None
    tar_split = carried.get(_SPLIT_FIELD, b"")
    got = Digest.of_bytes(tar_split)
    if got != split_digest:
        raise DigestMismatch("tar-split", str(split_digest), str(got))
    return Toc(toc_digest, entries, tar_split, carrier_offset, chunks)


def _int(v) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"not a count: {v!r}")
    return v


def _entries(raw: list, carrier_offset: int) -> tuple[dict[str, TocEntry],
                                                      dict[str, list[Chunk]]]:
    entries: dict[str, TocEntry] = {}
    pending: dict[str, list[tuple[int, int, int, Digest]]] = {}
    times: dict[str, int] = {}      # the files of a package share their mtime
    for d in raw:
        name, kind = d["name"], d["type"]
        if not isinstance(name, str) or "/".join(clean_name(name)) != name:
            raise ValueError(f"bad name {name!r}")
        if kind == "chunk":
            if name not in pending or not pending[name]:
                raise ValueError(f"chunk of {name!r} before its file")
        elif kind not in _TYPES:
            raise ValueError(f"unknown type {kind!r} of {name!r}")
        else:
            link = d.get("linkName", "")
            modtime = d.get("modtime", "") or "1970-01-01T00:00:00Z"
            mtime = times.get(modtime)
            if mtime is None:
                mtime = times[modtime] = _parse_time(modtime)
            entries[name] = TocEntry(
                name, kind, _int(d.get("size", 0)), mtime,
                str(link), _int(d.get("mode", 0)), _int(d.get("uid", 0)),
                _int(d.get("gid", 0)), str(d.get("userName", "")),
                str(d.get("groupName", "")), _int(d.get("devMajor", 0)),
                _int(d.get("devMinor", 0)),
                {str(k): base64.b64decode(v, validate=True)
                 for k, v in d.get("xattrs", {}).items()},
                Digest.parse(d["digest"]) if kind == "reg" else None)
            pending[name] = []
            if kind != "reg" or "chunkDigest" not in d:
                continue
        size = entries[name].size
        off = _int(d.get("chunkOffset", 0))
        n = _int(d.get("chunkSize", 0)) or size - off
        pending[name].append((off, n, _int(d["offset"]), Digest.parse(d["chunkDigest"])))
    chunks: dict[str, list[Chunk]] = {}
    starts = sorted({0, carrier_offset} | {c[2] for cs in pending.values() for c in cs})
    for name, raw_chunks in pending.items():
        if name not in entries or entries[name].type != "reg":
            continue
        end_in_file = 0
        out = []
        for off, n, start, digest in raw_chunks:
            if off < end_in_file or n <= 0 or off + n > entries[name].size \
                    or start >= carrier_offset:
                raise ValueError(f"bad chunk [{off}, {off + n}) of {name!r}")
            end_in_file = off + n
            out.append(Chunk(off, n, start, starts[bisect.bisect_right(starts, start)],
                             digest, name))
        chunks[name] = out
    return entries, chunks


def read_chunk(compressed: bytes, chunk: Chunk) -> bytes:
    """The chunk's bytes, inflated from `compressed` (the blob from
    `chunk.blob_start`, through `chunk.blob_end` or beyond) and checked
    against the chunk's digest: DigestMismatch (naming the file and the
    range) when they differ or cannot be inflated."""
    what = f"{chunk.name or 'file'} bytes [{chunk.offset_in_file}, " \
           f"{chunk.offset_in_file + chunk.size})"
    try:
        data = zlib.decompressobj(31).decompress(compressed, chunk.size)
    except zlib.error as e:
        raise DigestMismatch(what, str(chunk.digest), f"undecodable gzip ({e})") from None
    got = Digest.of_bytes(data)
    if got != chunk.digest:
        raise DigestMismatch(what, str(chunk.digest), str(got))
    return data


# -- the writer ---------------------------------------------------------------------

@dataclass(frozen=True)
class Written:
    digest: Digest       # of the blob
    size: int
    toc_digest: Digest   # the annotation
    diff_id: Digest      # sha256 of the tar it decompresses to
    tar_size: int


@dataclass
class _File:
    """A regular file with content: where its bytes are in the tar."""
    entry: TocEntry
    index: int                    # of its entry in the TOC
    data_start: int               # tar offset of its data
    segments: list[tuple[int, int]]   # (offset in file, bytes), packed in the tar
    in_split: bool                    # the tar-split refers to the file for them


class _MemberWriter:
    """Compresses the tar into `out`, one gzip member per `cut()`; hashes
    both sides."""

    def __init__(self, out: BinaryIO, level: int):
        self._out = out
        self._level = level
        self._comp = None
        self._blob = hashlib.sha256()
        self._tar = hashlib.sha256()
        self.size = 0
        self.tar_size = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._blob.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        if self._comp is None:
            self._comp = zlib.compressobj(self._level, zlib.DEFLATED, 31)
        self._tar.update(data)
        self.tar_size += len(data)
        self._emit(self._comp.compress(data))

    def cut(self) -> int:
        """End the current member; the blob offset where the next starts."""
        if self._comp is not None:
            self._emit(self._comp.flush())
            self._comp = None
        return self.size

    def raw(self, data: bytes) -> None:
        self.cut()
        self._emit(data)

    def digests(self) -> tuple[Digest, Digest]:
        return Digest(self._blob.hexdigest()), Digest(self._tar.hexdigest())


def write_seekable(tar: BinaryIO, out: BinaryIO, level: int = 6, chunk_size: int = CHUNK,
                   scratch: str | None = None) -> Written:
    """Write the tar in the seekable file `tar` into `out` as a seekable
    blob (module doc).  The same tar always gives the same blob.
    UnsafeArchive for a name the store would refuse; BadSeekableLayer for a
    tar the store could not rebuild from its files (one that replaces a
    file of its own by a later entry) or an entry kind it cannot hold."""
    entries, files = _plan(tar)
    fd, split_path = tempfile.mkstemp(prefix="estargz-split-", dir=scratch)
    os.close(fd)
    split = SplitWriter(split_path)
    try:
        members = _MemberWriter(out, level)
        chunk_docs, digests = _compress(tar, members, files, chunk_size, SplitRecorder(tar, split))
        split.close()
        with open(split_path, "rb") as f:
            tar_split = f.read()
    finally:
        split.abandon()
    carrier_offset = members.cut()
    docs = []
    for i, e in enumerate(entries):
        if i in digests:
            e = dataclasses.replace(e, digest=digests[i])
        chunks = chunk_docs.get(i, [])
        docs.append(_toc_json(e, chunks[0] if chunks else None))
        docs.extend({"name": e.name, "type": "chunk", **_chunk_json(c)} for c in chunks[1:])
    toc = {"version": TOC_VERSION, "entries": docs,
           "strata.tarSplitDigest": str(Digest.of_bytes(tar_split)),
           "strata.carrierOffset": carrier_offset}
    toc_json = json.dumps(toc, separators=(",", ":")).encode()
    if len(toc_json) > MAX_TOC:
        raise BadSeekableLayer("tar", f"its TOC would be larger than {MAX_TOC} bytes")
    packed = zlib.compressobj(9, zlib.DEFLATED, 31)
    members.raw(_carriers(_TOC_FIELD, packed.compress(toc_json) + packed.flush()))
    members.raw(_carriers(_SPLIT_FIELD, tar_split))
    members.raw(footer(carrier_offset))
    digest, diff_id = members.digests()
    return Written(digest, members.size, Digest.of_bytes(toc_json), diff_id,
                   members.tar_size)


def _plan(tar: BinaryIO) -> tuple[list[TocEntry], list[_File]]:
    """First pass: the TOC entries and where file contents lie."""
    entries: list[TocEntry] = []
    files: list[_File] = []
    paths = SplitPaths()
    tar.seek(0)
    tf = tarfile.open(fileobj=tar, mode="r:", encoding="utf-8", errors="surrogateescape")
    for m in tf:
        parts = clean_name(m.name)
        name = "/".join(parts)
        paths.entry(tuple(parts), m.isdir())
        kind = _kind(m)
        entry = TocEntry(
            name, kind, m.size if kind == "reg" else 0, int(m.mtime * 1e9),
            "/".join(clean_name(m.linkname)) if kind == "hardlink" else m.linkname,
            m.mode, m.uid, m.gid, m.uname, m.gname,
            m.devmajor if kind in ("char", "block") else 0,
            m.devminor if kind in ("char", "block") else 0,
            {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
             for k, v in (m.pax_headers or {}).items() if k.startswith("SCHILY.xattr.")},
            _EMPTY_DIGEST if kind == "reg" else None)
        entries.append(entry)
        if kind == "reg" and m.size:
            segments = [(o, n) for o, n in m.sparse if n] if m.sparse is not None \
                else [(0, m.size)]
            in_split = data_in_split(m, parts)
            files.append(_File(entry, len(entries) - 1, m.offset_data, segments, in_split))
            if in_split:
                paths.referenced(tuple(parts))
    if not paths.ok:
        raise BadSeekableLayer("tar", "a later entry replaces a file of its own; the "
                                      "tar cannot be rebuilt from its files")
    return entries, files


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "reg"
    for test, kind in ((m.isdir, "dir"), (m.issym, "symlink"), (m.islnk, "hardlink"),
                       (m.ischr, "char"), (m.isblk, "block"), (m.isfifo, "fifo")):
        if test():
            return kind
    raise BadSeekableLayer("tar", f"entry {m.name!r} of unsupported type {m.type!r}")


def _compress(tar: BinaryIO, members: _MemberWriter, files: list[_File], chunk_size: int,
              recorder: SplitRecorder) -> tuple[dict[int, list[Chunk]], dict[int, Digest]]:
    """Second pass: every byte of the tar into `members`, cut where chunks
    start, through `recorder` for the tar-split (as extraction records it);
    the chunks and the content digest of each file, by entry index."""
    tar.seek(0)
    out: dict[int, list[Chunk]] = {}
    digests: dict[int, Digest] = {}

    def copy(n: int) -> bytes:
        kept = []
        while n > 0:
            data = recorder.read(min(_READ, n))
            if not data:
                raise BadSeekableLayer("tar", "shorter than its headers say")
            members.write(data)
            kept.append(data)
            n -= len(data)
        return b"".join(kept)

    for f in files:
        copy(f.data_start - recorder.pos)
        if f.in_split:
            recorder.data_begins(f.data_start, f.entry.size, f.entry.name)
        whole, check = hashlib.sha256(), checksum()
        chunks = []
        done = 0                        # bytes of the file hashed, holes included
        for seg_off, seg_len in f.segments:
            _zeros(whole, seg_off - done)
            for off in range(seg_off, seg_off + seg_len, chunk_size):
                n = min(chunk_size, seg_off + seg_len - off)
                start = members.cut()
                data = copy(n)
                whole.update(data)
                check.update(data)
                chunks.append(Chunk(off, n, start, 0, Digest.of_bytes(data), f.entry.name))
            done = seg_off + seg_len
        _zeros(whole, f.entry.size - done)
        if f.in_split:
            recorder.data_done(check.intdigest())
        out[f.index] = chunks
        digests[f.index] = Digest(whole.hexdigest())
    while copy_rest := recorder.read(_READ):
        members.write(copy_rest)
    recorder.finish()
    return out, digests


def _zeros(h, n: int) -> None:
    block = bytes(min(n, _READ))
    while n > 0:
        h.update(block[:n])
        n -= len(block)
