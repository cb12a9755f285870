"""A lazy layer: a layer whose file contents are still in a registry.

`layers pull --lazy` fetches only a seekable blob's table of contents
(`estargz.py`: the TOC, verified against its digest, carries every file's
chunks and the layer's tar-split).  This module turns that into a layer of
the store and completes it, whoever asks (the fetcher, fetcher.py, on a
request or in the background; a plain pull reusing local content):

- `LayerIndex(toc)`: the layer's tar as the tar-split gives it, with every
  file's content left out, its headers read as tarfile reads them
  (`archive.read_members`: so the tree is built from the very headers the
  diffID covers), and which chunks of the blob hold each regular file's
  content.
- `build_placeholders(index, dest, options, socket)`: the placeholder tree
  in `dest` (see `layout.py`): the headers applied as extraction applies
  them, each regular file with content a sparse file of its size carrying
  `LAZY_XATTR`, the root carrying it too (the fetcher socket's path).
- `fill(diff, index, paths, read_range, options)`: the content of those
  files: their chunks fetched by ranges (adjacent ones merged), each
  inflated and checked against its digest before a byte is written, written
  in place; then synced (one syncfs for many files), the file's metadata
  set again as extraction set it (a write clears set-id bits and
  `security.capability`; the mtime), and the xattr removed last
  (`_Written`).  A file still carrying the xattr is never complete: a crash
  anywhere leaves it to be filled again from its first chunk.
- `reuse(diff, index, local, options)`: the files whose content the store
  holds already (by the TOC's digests, `local_contents` of the contents
  indexes `write_contents` keeps beside each such layer) cloned from there,
  checked against the digest: a plain pull of a seekable layer fetches only
  the rest (`fill`), then finishes at once.
- `finish(diff, index, diff_id, split_path)`: once no file carries
  the xattr, the exact tar rebuilt from the tar-split and the files is
  hashed and checked against the diffID, the split kept at `split_path`,
  and the root's xattr removed: from then on the layer is an ordinary one.

`read_range(start, end)` returns the blob's bytes [start, end); a
LayersError it raises (a registry's failure) becomes `FetchFailed`, naming
the layer, the file and the range.

The fetcher is started, told to retry and stopped from here
(`start_fetcher`, `stop_fetcher`), by a pull, the mount of a container
with lazy layers, `als add`, and `reset`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import estargz, fsutil, layout, tarsplit
from .archive import (ExtractOptions, SafeTarInfo, clean_name, extract_placeholders,
                      read_members, set_meta)
from .digest import Digest
from .errors import BadArchive, DigestMismatch, DriverError, LayersError
from .records import Layer

# A range request spans at most this many blob bytes (merging adjacent chunks).
MAX_RANGE = 8 << 20
RANGES_IN_FLIGHT = 4       # a pull's range requests received at once: each pays a round trip
START_TIMEOUT = 15.0       # for a new fetcher to listen
RETRY_SIGNAL = signal.SIGUSR1   # to a running fetcher: retry the layers that failed


class FetchFailed(LayersError):
    """A chunk could not be had or failed its digest: nothing of its file was
    kept as complete."""

    def __init__(self, layer: str, path: str, start: int, end: int, reason: str):
        self.layer, self.path, self.start, self.end = layer, path, start, end
        self.reason = reason
        super().__init__(f"layer {layer}: {path}: bytes {start}-{end} of the blob: {reason}")


@dataclass(frozen=True)
class LazyFile:
    """A regular file whose content the TOC describes."""
    relpath: str                       # its first name in the tar
    member: tarfile.TarInfo            # its header: the metadata set again after a fill
    digest: Digest                     # sha256 of its content, as the TOC says
    chunks: tuple                      # estargz.Chunk, in file order; between
                                       # them (or without any) holes of a sparse file


class _Skeleton(io.RawIOBase):
    """The layer's tar rebuilt from its tar-split with every file's content
    read as zeros: a seekable stream for tarfile, which seeks over the data
    of each member it is not asked to read."""

    def __init__(self, split: bytes, where: str):
        self.starts: list[int] = []
        self.parts: list[bytes | int] = []      # raw bytes, or a content's length
        self.contents: dict[int, tuple[str, int]] = {}   # offset → (relpath, size)
        pos = 0
        try:
            # inflated at once (its raw parts are all kept anyway): read frame
            # by frame through GzipFile, 44,000 small reads took 30 ms
            for kind, value in tarsplit.frames(io.BytesIO(gzip.decompress(split))):
                if kind == b"R":
                    self.starts.append(pos)
                    self.parts.append(value)
                    pos += len(value)
                elif kind == b"F":
                    relpath, size = value
                    self.contents[pos] = (relpath, size)
                    self.starts.append(pos)
                    self.parts.append(size)
                    pos += size
        except (EOFError, OSError, ValueError, zlib.error, struct.error) as e:
            raise BadArchive(where, f"damaged tar-split in the TOC ({e})") from None
        self.size = pos
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        """What `readinto` gives, without its copies when the bytes lie in
        one raw part (every tar header does): tarfile reads each header
        alone."""
        if 0 <= size and self.pos < self.size:
            i = bisect.bisect_right(self.starts, self.pos) - 1
            part, at = self.parts[i], self.pos - self.starts[i]
            if not isinstance(part, int) and at + size <= len(part):
                self.pos += size
                return part[at:at + size]
        return super().read(size)

    def readinto(self, buf) -> int:
        if self.pos >= self.size:
            return 0
        i = bisect.bisect_right(self.starts, self.pos) - 1
        part, at = self.parts[i], self.pos - self.starts[i]
        if isinstance(part, int):
            n = min(len(buf), part - at)
            buf[:n] = bytes(n)
        else:
            n = min(len(buf), len(part) - at)
            buf[:n] = part[at:at + n]
        self.pos += n
        return n


class LayerIndex:
    """What a lazy layer is made of (module doc).  `files`: relpath → LazyFile
    for every regular file whose content the tar-split leaves out; `names`:
    each further name (hard link) of one of them → its first name."""

    def __init__(self, toc: "estargz.Toc", where: str):
        self.toc = toc
        self.where = where
        self.skeleton = _Skeleton(toc.tar_split, where)
        # TOC names are the store's relpaths already (estargz checks them)
        by_name = {name: entry for name, entry in toc.entries.items() if entry.type == "reg"}
        self.files: dict[str, LazyFile] = {}
        self.names: dict[str, str] = {}
        self._blob_order: list[str] | None = None      # `neighbours`, made when first asked
        self._blob_pos: dict[str, int] = {}
        try:
            self.tar = tarfile.open(fileobj=self.skeleton, mode="r:",
                                    tarinfo=SafeTarInfo, errorlevel=2)
            self.members = read_members(self.tar)
        except (tarfile.TarError, EOFError) as e:
            raise BadArchive(where, f"the TOC's tar-split is no tar ({e})") from None
        for m in self.members:
            relpath = "/".join(clean_name(m.name))
            if m.islnk():
                target = "/".join(clean_name(m.linkname))
                self.names[relpath] = self.names.get(target, target)
            elif self.is_lazy(m):
                entry = by_name.get(relpath)
                if entry is None or entry.size != m.size:
                    raise BadArchive(where, f"the TOC does not describe {relpath!r} "
                                            f"({m.size} bytes)")
                self.files[relpath] = LazyFile(relpath, m, entry.digest,
                                               tuple(toc.chunks(entry)))
                self.names.pop(relpath, None)      # a later entry of that name
        self.names = {k: v for k, v in self.names.items() if v in self.files}

    def is_lazy(self, m: tarfile.TarInfo) -> bool:
        """A member whose content the tar-split leaves out (a regular file
        with content; not a sparse one, whose data is in the split)."""
        found = self.skeleton.contents.get(m.offset_data)
        return m.isreg() and m.size > 0 and m.sparse is None and found is not None \
            and found[1] == m.size

    def file_of(self, relpath: str) -> LazyFile | None:
        """The lazy file `relpath` names (through a hard link too), or None."""
        relpath = "/".join(p for p in relpath.split("/") if p not in ("", "."))
        return self.files.get(self.names.get(relpath, relpath))

    @property
    def content_bytes(self) -> int:
        return sum(f.member.size for f in self.files.values())

    def neighbours(self, relpath: str, limit: int, usable: Callable[[str], bool]) -> list[str]:
        """The lazy files whose chunks lie right before and right after those
        of `relpath` in the blob, up to `limit` blob bytes on each side, each
        whole and `usable` (the walk stops at the first that is not, or that
        does not fit): fetched with it, they come in the same range request.
        (What a program opens next is often stored next to what it opened:
        the files of one directory, in tar order.)  Blob order, `relpath`
        not included."""
        if self._blob_order is None:            # (two threads may both make it: the same)
            order = sorted((p for p, f in self.files.items() if f.chunks),
                           key=lambda p: self.files[p].chunks[0].blob_start)
            self._blob_pos = {p: i for i, p in enumerate(order)}
            self._blob_order = order
        at = self._blob_pos.get(relpath)
        if at is None:
            return []
        order, files = self._blob_order, self.files
        after: list[str] = []
        end, left = files[relpath].chunks[-1].blob_end, limit
        for p in order[at + 1:]:
            cs = files[p].chunks
            span = cs[-1].blob_end - cs[0].blob_start
            if cs[0].blob_start != end or span > left or not usable(p):
                break
            after.append(p)
            end, left = cs[-1].blob_end, left - span
        before: list[str] = []
        start, left = files[relpath].chunks[0].blob_start, limit
        for p in reversed(order[:at]):
            cs = files[p].chunks
            span = cs[-1].blob_end - cs[0].blob_start
            if cs[-1].blob_end != start or span > left or not usable(p):
                break
            before.append(p)
            start, left = cs[0].blob_start, left - span
        return before[::-1] + after


def load_index(toc_path: str, toc_digest: Digest, where: str) -> LayerIndex:
    """The index of a layer from the TOC kept beside it (`layout.TOC`),
    checked against `toc_digest` (the record's)."""
    with open(toc_path, "rb") as f:
        return LayerIndex(estargz.parse_toc_region(f.read(), toc_digest), where)


def completeness(diff: str, index: LayerIndex) -> dict:
    """How much of a lazy layer is there: its files with content and their
    bytes, complete or in all."""
    waiting = set(incomplete_files(diff, index))
    done = [f for p, f in index.files.items() if p not in waiting]
    return {"files": len(index.files), "files_complete": len(done),
            "content_bytes": index.content_bytes,
            "content_complete": sum(f.member.size for f in done)}


def verify_complete(diff: str, index: LayerIndex) -> list[tuple[str, str]]:
    """(relpath, reason) of each complete file of the lazy layer whose
    content is not what its TOC says (size or digest); incomplete files are
    not looked at."""
    bad = []
    dirfd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for relpath, f in index.files.items():
            if is_incomplete(diff, relpath):
                continue
            fd = fsutil.open_beneath(dirfd, relpath)
            try:
                got, size = _digest_of(fd)
            finally:
                os.close(fd)
            if size != f.member.size:
                bad.append((relpath, f"{size} bytes, not {f.member.size}"))
            elif got != f.digest:
                bad.append((relpath, f"content hashes to {got}, not {f.digest}"))
    finally:
        os.close(dirfd)
    return bad


def _digest_of(fd: int) -> tuple[Digest, int]:
    h = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, 1 << 20, offset):
        h.update(data)
        offset += len(data)
    return Digest(h.hexdigest()), offset


def build_placeholders(index: LayerIndex, dest: str, options: ExtractOptions,
                       socket: str) -> int:
    """The placeholder tree of the layer in the empty dir `dest` (module doc);
    its root marked with `socket`, the fetcher's.  The count of entries."""
    count = extract_placeholders(index.tar, index.members, dest, options, index.is_lazy,
                                 index.where)
    if index.files:
        os.setxattr(dest, layout.LAZY_XATTR, os.fsencode(socket))
    fsutil.fsync_dir(dest)
    return count


def is_incomplete(diff: str, relpath: str) -> bool:
    """Whether `relpath` under `diff` is a regular file still waiting for its
    content (anything else never is; nothing is opened but a regular file)."""
    dirfd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pathfd = fsutil.open_beneath(dirfd, relpath, os.O_PATH)
    finally:
        os.close(dirfd)
    try:
        if not stat.S_ISREG(os.fstat(pathfd).st_mode):
            return False
        fd = os.open(f"/proc/self/fd/{pathfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pathfd)
    try:
        os.getxattr(fd, layout.LAZY_XATTR)
        return True
    except OSError as e:
        if e.errno == errno.ENODATA:
            return False
        raise
    finally:
        os.close(fd)


def incomplete_files(diff: str, index: LayerIndex) -> list[str]:
    """The lazy files of `index` still waiting for their content, tar order."""
    return [p for p in index.files if is_incomplete(diff, p)]


def ranges(chunks: Iterable, limit: int = MAX_RANGE) -> list[tuple[int, int, list]]:
    """(start, end, chunks) of the range requests that fetch `chunks`
    (sorted by blob offset): adjacent ones merged, up to `limit` bytes."""
    out: list[tuple[int, int, list]] = []
    for c in sorted(chunks, key=lambda c: c.blob_start):
        if out and out[-1][1] == c.blob_start and c.blob_end - out[-1][0] <= limit:
            start, _, group = out[-1]
            group.append(c)
            out[-1] = (start, c.blob_end, group)
        else:
            out.append((c.blob_start, c.blob_end, [c]))
    return out


def fill(diff: str, index: LayerIndex, relpaths: Iterable[str],
         read_range: Callable[[int, int], bytes], options: ExtractOptions,
         on_done: Callable[[str], None] | None = None,
         on_bytes: Callable[[int], None] | None = None, in_flight: int = 1) -> None:
    """Give the lazy files `relpaths` (first names, see `LayerIndex.file_of`)
    their content (module doc).  `on_done(relpath)` as each is complete;
    `on_bytes(n)` for the blob bytes received; up to `in_flight` range
    requests at once (a pull: RANGES_IN_FLIGHT; the fetcher's background
    keeps to one, leaving the link to requests).  FetchFailed names the
    file and range that failed; the files completed before stay complete."""
    owner: dict[int, LazyFile] = {}
    left: dict[str, int] = {}
    chunks = []
    holes = []                                 # files that are holes only
    for relpath in relpaths:
        f = index.files[relpath]
        if not is_incomplete(diff, relpath):
            if on_done:
                on_done(relpath)
            continue
        left[relpath] = len(f.chunks)
        if not f.chunks:
            holes.append(f)
        for c in f.chunks:
            owner[id(c)] = f
            chunks.append(c)
    open_files: dict[str, int] = {}
    dirfd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    written = _Written(diff, options, on_done)
    try:
        for f in holes:
            written.add(fsutil.open_beneath(dirfd, f.relpath, os.O_WRONLY), f)
        with contextlib.closing(_received(ranges(chunks), read_range, in_flight)) \
                as received_in_order:
            for (start, end, group), received in received_in_order:
                written.complete()
                try:
                    data = received.result()
                except LayersError as e:
                    raise FetchFailed(index.where, owner[id(group[0])].relpath, start, end,
                                      e.message) from None
                if len(data) != end - start:
                    raise FetchFailed(index.where, owner[id(group[0])].relpath, start, end,
                                      f"the registry sent {len(data)} bytes")
                if on_bytes:
                    on_bytes(len(data))
                for c in group:
                    f = owner[id(c)]
                    try:
                        content = estargz.read_chunk(data[c.blob_start - start:c.blob_end - start],
                                                     c)
                    except LayersError as e:
                        raise FetchFailed(index.where, f.relpath, c.blob_start, c.blob_end,
                                          e.message) from None
                    fd = open_files.get(f.relpath)
                    if fd is None:
                        fd = open_files[f.relpath] = fsutil.open_beneath(dirfd, f.relpath,
                                                                         os.O_WRONLY)
                    if content != bytes(len(content)):   # zeros: the hole stays
                        _write_all(fd, content, c.offset_in_file)
                    left[f.relpath] -= 1
                    if left[f.relpath] == 0:
                        written.add(open_files.pop(f.relpath), f)
        written.complete()
    finally:
        written.close()
        for fd in open_files.values():
            os.close(fd)
        os.close(dirfd)


def _received(spans: list[tuple[int, int, list]], read_range: Callable[[int, int], bytes],
              in_flight: int) -> Iterator[tuple[tuple[int, int, list], Future]]:
    """Each span with the future of its bytes, in order, up to `in_flight`
    of them being received at once: scattered files (a partial pull's) cost
    one round trip per range, and one after the other those round trips, not
    the link, set the pace.  A span not yet asked for when the caller stops
    (a failure) is never asked for."""
    if in_flight == 1 or len(spans) <= 1:      # one at a time: no thread
        for span in spans:
            received: Future = Future()
            try:
                received.set_result(read_range(span[0], span[1]))
            except BaseException as e:
                received.set_exception(e)
            yield span, received
        return
    pool = ThreadPoolExecutor(in_flight, thread_name_prefix="range")
    pending: collections.deque = collections.deque()
    waiting = iter(spans)
    try:
        for span in waiting:
            pending.append((span, pool.submit(read_range, span[0], span[1])))
            if len(pending) == in_flight:
                break
        while pending:
            span, received = pending.popleft()
            following = next(waiting, None)
            if following is not None:
                pending.append((following, pool.submit(read_range, following[0], following[1])))
            yield span, received
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _Written:
    """Files whose whole content is written, waiting to be completed: made
    durable together (one syncfs for many: a sync per small file would
    bound a layer's completion by the disk's sync rate), then each given the
    metadata extraction gave it (a write cleared set-id bits and file
    capabilities, and moved the mtime), then its mark removed — last, so
    that a crash before leaves a file filled again, never one served half.
    (The removal itself need not be durable: lost, it costs a refetch.)"""

    def __init__(self, diff: str, options: ExtractOptions,
                 on_done: Callable[[str], None] | None):
        self.diff, self.options, self.on_done = diff, options, on_done
        self.files: list[tuple[int, LazyFile]] = []

    def add(self, fd: int, f: LazyFile) -> None:
        self.files.append((fd, f))

    def complete(self) -> None:
        if not self.files:
            return
        if len(self.files) == 1:
            os.fdatasync(self.files[0][0])
        else:
            fsutil.sync_tree(self.diff)
        while self.files:
            fd, f = self.files[0]
            set_meta(self.options, fd, None, f.member)
            os.removexattr(fd, layout.LAZY_XATTR)
            self.files.pop(0)
            os.close(fd)
            if self.on_done:
                self.on_done(f.relpath)

    def close(self) -> None:
        """Close what a failure left uncompleted (still marked: filled again)."""
        for fd, _ in self.files:
            os.close(fd)
        self.files = []


def write_contents(index: LayerIndex, path: str) -> None:
    """The layer's contents index at `path` (`layout.CONTENTS`): each file
    content's digest → the file's first name, where a later pull finds
    content the store holds already (`local_contents`, `reuse`)."""
    doc = {str(f.digest): relpath for relpath, f in index.files.items()}
    fsutil.atomic_write(path, (json.dumps(doc, sort_keys=True) + "\n").encode())


def local_contents(layers: Iterable[tuple[str, str]]) -> dict[Digest, list[tuple[str, str]]]:
    """Content digest → (diff dir, relpath) of the files of the `layers`,
    given as (diff dir, contents index path); a missing or broken index is
    skipped (its layer offers nothing)."""
    found: dict[Digest, list[tuple[str, str]]] = {}
    for diff, path in layers:
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
            for digest, relpath in doc.items():
                found.setdefault(Digest.parse(digest), []).append((diff, str(relpath)))
        except (OSError, ValueError, AttributeError, LayersError):
            continue
    return found


def reuse(diff: str, index: LayerIndex, local: dict[Digest, list[tuple[str, str]]],
          options: ExtractOptions) -> list[str]:
    """Give each incomplete file of `index` whose content the store holds
    (`local`) that content: cloned (a reflink where the filesystem can),
    its digest checked on the way, then completed as a fetched file is.  The
    relpaths completed so."""
    done: list[str] = []
    wanted = [p for p, f in index.files.items() if f.digest in local]
    if not wanted:
        return done
    dirfd = os.open(diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    written = _Written(diff, options, done.append)
    try:
        for relpath in wanted:
            f = index.files[relpath]
            if not is_incomplete(diff, relpath):
                continue
            for src_diff, src_path in local.get(f.digest, ()):
                fd = _clone_verified(dirfd, f, src_diff, src_path)
                if fd is not None:
                    written.add(fd, f)
                    break
        written.complete()
    finally:
        written.close()
        os.close(dirfd)
    return done


def _clone_verified(dirfd: int, f: LazyFile, src_diff: str, src_path: str) -> int | None:
    """Clone src into the lazy file `f` when src is a complete regular file
    whose content hashes to `f.digest`: the open file, or None."""
    try:
        if is_incomplete(src_diff, src_path):
            return None
        srcdir = os.open(src_diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            src = fsutil.open_beneath(srcdir, src_path)
        finally:
            os.close(srcdir)
    except (OSError, LayersError):
        return None                    # gone meanwhile (a removed layer), or not a file
    try:
        got, size = _digest_of(src)
        if size != f.member.size or got != f.digest:
            return None
        fd = fsutil.open_beneath(dirfd, f.relpath, os.O_WRONLY)
        try:
            fsutil.clone_file(src, fd)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(src)


def finish(diff: str, index: LayerIndex, diff_id: Digest, split_path: str) -> None:
    """Turn the complete placeholder tree into an ordinary layer (module
    doc).  LayerCorrupt or DigestMismatch when the rebuilt tar is not the
    layer's; then nothing changes."""
    tmp = split_path + ".tmp"
    fsutil.atomic_write(tmp, index.toc.tar_split)
    try:
        got = tarsplit.rebuilt_digest(tmp, diff, index.where)
        if got != diff_id:
            raise DigestMismatch(f"layer {index.where} rebuilt from its chunks",
                                 str(diff_id), str(got))
        os.rename(tmp, split_path)
    finally:
        fsutil.remove_file(tmp)
    fsutil.fsync_dir(os.path.dirname(split_path))
    try:
        os.removexattr(diff, layout.LAZY_XATTR)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    fsutil.fsync_dir(diff)


def start_fetcher(paths: layout.StorePaths, root: str, runroot: str,
                  layers: Iterable[Layer | None], wait: bool = True) -> None:
    """When one of `layers` is lazy, start the store's fetcher (fetcher.py:
    `layers fetcher`), detached, unless it runs (then it is told to retry
    the layers that failed, when one of these did).  With `wait`, return
    once it listens, or once it has left (no lazy layer was left);
    DriverError when it does neither within START_TIMEOUT.  (A pull need not
    wait: only a mount needs the socket, and it waits.)"""
    lazy = [layer for layer in layers if layer is not None and layer.lazy is not None]
    if not lazy:
        return
    def spawn() -> subprocess.Popen:
        os.makedirs(paths.runroot, mode=0o700, exist_ok=True)
        # -P: `-m` would put the working directory first on sys.path, and a
        # `layers` directory there would be started instead of the store's
        argv = [sys.executable, "-P", "-m", "layers.cli", "--root", root, "--runroot", runroot,
                "fetcher"]
        with open(paths.fetcher_log, "ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)

    proc = None
    if not fsutil.flock_held(paths.fetcher_pid):
        proc = spawn()
    elif any(layer.lazy.error for layer in lazy):
        _tell_retry(paths, root)
    if not wait:
        return
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        held = fsutil.flock_held(paths.fetcher_pid)
        if held and os.path.exists(paths.fetcher_socket):
            return
        if not held and proc is None:
            proc = spawn()             # the one running left meanwhile
        elif not held and proc.poll() is not None:
            return                     # ours left: nothing lazy is left to serve
        time.sleep(0.02)
    raise DriverError("fuse", f"the fetcher of lazy layers did not start in "
                              f"{START_TIMEOUT:.0f}s (see {paths.fetcher_log})")


def _tell_retry(paths: layout.StorePaths, root: str) -> None:
    """RETRY_SIGNAL to the running fetcher (one that just left is no error)."""
    pid = _fetcher_pid(paths, root)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, RETRY_SIGNAL)


def stop_fetcher(paths: layout.StorePaths, root: str) -> None:
    """End the store's fetcher (`reset`: the store goes); its lazy layers'
    files it was writing stay marked."""
    pid = _fetcher_pid(paths, root)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _fetcher_pid(paths: layout.StorePaths, root: str) -> int | None:
    """The pid in the fetcher's flock'ed pid file, when that process is this
    store's fetcher (the file may still name the last one for a moment)."""
    if not fsutil.flock_held(paths.fetcher_pid):
        return None
    try:
        with open(paths.fetcher_pid) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if argv[-2:] == [b"fetcher", b""] and os.fsencode(root) in argv:
        return pid
    return None
