"""Layer tars in and out: stream a layer into a directory while hashing it.

`extract_layer(blob, dest, options)` reads a plain, gzip or zstd tar (detected
from its first bytes), writes its entries under the empty directory `dest`
and returns the sha256 of the compressed bytes and of the tar stream (the
diffID).  Outcomes:

- success: `ExtractResult`; `dest` holds the layer, synced to disk.
- `UnsafeArchive(entry, reason)`: an entry we refuse (`..`, a write through
  a symlink or non-directory, a hard link leaving the layer or pointing to
  nothing, a device node when neither privileged nor `override_stat`, an
  absurd size or count).  `dest` holds partial content: the caller owns and
  removes it.
- `BadArchive(source, reason)`: truncated tar, corrupt gzip/zstd, bad header.

A leading `/` is dropped (`/etc/x` is the layer's `etc/x`, as docker and GNU
tar read it; a hard link's target alike).  Every file-system call is relative
to a directory fd opened with `O_NOFOLLOW`, so no entry can reach outside
`dest`.  Whiteouts are kept as OCI `.wh.` files (`layout.FORM_OCI`, read by
fsd and vfs) or converted to the kernel's markers (`layout.FORM_OVERLAY`).
Unprivileged with `override_stat`, a device node is an empty file carrying
its type, numbers, owner and mode in that xattr (`_add_device_file`).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from . import layout
from .digest import Digest, HashingReader
from .errors import BadArchive, UnsafeArchive
from .fsutil import clone_file, crash_point, sync_tree
from .tarsplit import SplitPaths, SplitRecorder, SplitWriter, checksum

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HEADER = 16 << 20   # pax / GNU long-name headers are read into memory


@dataclass(frozen=True)
class ExtractOptions:
    form: str = layout.FORM_OCI
    privileged: bool = False       # may chown, mknod devices, set trusted.* xattrs
    override_stat: bool = False    # keep owner/mode in user.containers.override_stat
    force_mask: int | None = None  # mode put on disk when override_stat is used
    ignore_chown_errors: bool = False
    max_entries: int = 4_000_000
    max_entry_size: int = 1 << 40  # 1 TiB


@dataclass(frozen=True)
class ExtractResult:
    blob_digest: Digest
    blob_size: int
    diff_id: Digest
    tar_size: int
    compression: str | None        # "gzip", "zstd" or None
    entries: int
    split: bool = False            # a tar-split was recorded (see tarsplit.py)
    device_files: int = 0          # device nodes kept as override_stat files (rootless)


def detect_compression(head: bytes) -> str | None:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


class _Prefixed:
    """A reader that returns `head` first, then the rest of `raw`."""

    def __init__(self, head: bytes, raw):
        self._head = head
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                rest = self._raw.read(-1 if n < 0 else n - len(head))
                return head + rest
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._raw.read(n)


class SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized pax/GNU long headers before tarfile reads them into memory."""

    def _proc_gnulong(self, tf):
        self._check_header_size()
        return super()._proc_gnulong(tf)

    def _proc_pax(self, tf):
        self._check_header_size()
        return super()._proc_pax(tf)

    def _check_header_size(self):
        if self.size > _MAX_HEADER:
            raise UnsafeArchive(self.name, f"extended header of {self.size} bytes")


class _Zstd:
    """`zstd -dc` fed from a thread; reads give the decompressed stream."""

    def __init__(self, source, where: str):
        exe = shutil.which("zstd")
        if exe is None:
            raise BadArchive(where, "zstd-compressed, and no zstd program is installed")
        self._where = where
        self._proc = subprocess.Popen([exe, "-dc", "-q"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._error: BaseException | None = None
        self._pump = threading.Thread(target=self._feed, args=(source,), daemon=True)
        self._pump.start()

    def _feed(self, source) -> None:
        try:
            while True:
                data = source.read(_CHUNK)
                if not data:
                    break
                self._proc.stdin.write(data)
        except BrokenPipeError:
            pass
        except BaseException as e:  # surfaced by close()
            self._error = e
        finally:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass

    def read(self, n: int = -1) -> bytes:
        return self._proc.stdout.read(n)

    def close(self, check: bool) -> None:
        """Stop the child; with `check`, a decompression failure → BadArchive."""
        if not check:
            self._proc.kill()
        self._proc.stdout.close()
        self._pump.join()
        err = self._proc.stderr.read().decode(errors="replace").strip()
        self._proc.stderr.close()
        rc = self._proc.wait()
        if self._error is not None:
            raise self._error
        if check and rc != 0:
            line = err.splitlines()[-1] if err else f"exit {rc}"
            raise BadArchive(self._where, f"zstd: {line}")


def extract_layer(blob: BinaryIO, dest: str, options: ExtractOptions,
                  where: str = "layer",
                  on_progress: Callable[[int], None] | None = None,
                  split_path: str | None = None) -> ExtractResult:
    """Stream the layer tar `blob` into the empty dir `dest`.  See module doc.

    With `split_path`, the tar-split is written there (`ExtractResult.split`);
    a tar that replaces one of its own files by a later entry cannot be
    rebuilt from the dir, and gets none (the file is removed).
    """
    blob_reader = HashingReader(blob, on_progress)
    head = blob_reader.read(6)
    compression = detect_compression(head)
    raw = _Prefixed(head, blob_reader)
    zstd = None
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "zstd":
        zstd = _Zstd(raw, where)
        stream = zstd
    else:
        stream = raw
    # Uncompressed, the blob is the tar: one hash serves as digest and diffID.
    tar_reader = blob_reader if compression is None else HashingReader(stream)
    split = SplitWriter(split_path) if split_path else None
    recorder = SplitRecorder(stream if compression is None else tar_reader, split)
    ok = False
    try:
        try:
            with _Extractor(dest, options, recorder) as ex:
                tf = tarfile.open(fileobj=recorder, mode="r|", tarinfo=SafeTarInfo,
                                  errorlevel=2)
                for member in tf:
                    ex.add(member, tf)
                    if ex.count == 2:
                        crash_point("extracting")
                ex.finish()
            recorder.drain()   # the diffID covers the tar's trailing padding
            recorder.finish()
            if zstd is None and tar_reader is not blob_reader:
                blob_reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            if zstd is not None:   # a zstd failure explains the tar error
                z, zstd = zstd, None
                z.close(check=True)
            raise BadArchive(where, _tar_error(e)) from None
        ok = True
    finally:
        if zstd is not None:
            zstd.close(check=ok)
        if split is not None and not (ok and ex.split_paths.ok):
            split.abandon()
            split = None
    if split is not None:
        split.close()
    sync_tree(dest)
    return ExtractResult(blob_digest=blob_reader.digest(), blob_size=blob_reader.count,
                         diff_id=tar_reader.digest(), tar_size=tar_reader.count,
                         compression=compression, entries=ex.count,
                         split=split is not None, device_files=ex.device_files)


def read_members(tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of the tar `tf`, opened seekable ("r:") and not read
    yet: what `tf.getmembers()` gives, a third of its time.  A plain
    header (ustar, octal numbers, a type of the eight basic ones, no pax
    global header in force) is read here field by field as tarfile reads it;
    any other (pax, GNU long names, sparse, base-256 numbers, a bad
    checksum, the end) by tarfile itself (`tf.next()`), from that header
    on, so every outcome and error is tarfile's.  (A placeholder tree reads
    its tar's 7,000 headers twice, at the pull and in the fetcher: tarfile's
    generic parsing took 100 ms of each.)  `tf.members` is left as tarfile
    has it: use the list returned."""
    out: list[tarfile.TarInfo] = []
    first = tf.next()
    if first is None:
        return out
    out.append(first)
    fileobj, make = tf.fileobj, tf.tarinfo
    encoding, errors = tf.encoding, tf.errors
    while True:
        offset = tf.offset
        m = None
        if not tf.pax_headers:
            here = fileobj.tell()
            fileobj.seek(offset)
            m = _plain_header(fileobj.read(tarfile.BLOCKSIZE), make, encoding, errors)
            if m is None:
                fileobj.seek(here)      # as tarfile left it: its checks start from there
        if m is None:
            m = tf.next()
            if m is None:
                return out
        else:
            m.offset, m.offset_data = offset, offset + tarfile.BLOCKSIZE
            tf.offset = m.offset_data
            if m.type in _PLAIN_FILE_TYPES:
                tf.offset += -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        out.append(m)


_PLAIN_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_PLAIN_TYPES = frozenset(_PLAIN_FILE_TYPES + (
    tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
    tarfile.FIFOTYPE))
# name mode uid gid size mtime chksum type linkname magic version uname gname
# devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s")
_NUMBER_STARTS = (100, 108, 116, 124, 136, 148, 329, 337)


def _plain_header(buf: bytes, make, encoding: str, errors: str) -> tarfile.TarInfo | None:
    """The member a plain header (`read_members`) describes, as tarfile's
    `TarInfo.frombuf` makes it (offsets not set); None for any other block
    (tarfile's to read)."""
    if len(buf) != tarfile.BLOCKSIZE or buf[156:157] not in _PLAIN_TYPES:
        return None
    for i in _NUMBER_STARTS:
        if buf[i] & 0x80:
            return None                         # base-256
    (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _, _, uname, gname,
     devmajor, devminor, prefix) = _HEADER.unpack_from(buf)
    try:
        # tarfile: the ASCII up to the first NUL, stripped, octal; a field
        # that is anything else (or all blanks) is left to tarfile
        (mode, uid, gid, size, mtime, chksum, devmajor, devminor) = [
            int(f.split(b"\0", 1)[0] or b"0", 8)
            for f in (mode, uid, gid, size, mtime, chksum, devmajor, devminor)]
    except ValueError:
        return None
    if chksum != 256 + sum(buf) - sum(buf[148:156]):     # unsigned; signed: tarfile
        return None
    m = make()
    m.name = name.split(b"\0", 1)[0].decode(encoding, errors)
    m.mode, m.uid, m.gid, m.size, m.mtime, m.chksum = mode, uid, gid, size, mtime, chksum
    m.devmajor, m.devminor = devmajor, devminor
    m.type = kind
    m.linkname = linkname.split(b"\0", 1)[0].decode(encoding, errors)
    m.uname = uname.split(b"\0", 1)[0].decode(encoding, errors)
    m.gname = gname.split(b"\0", 1)[0].decode(encoding, errors)
    prefix = prefix.split(b"\0", 1)[0].decode(encoding, errors)
    if kind == tarfile.AREGTYPE and m.name.endswith("/"):
        m.type = tarfile.DIRTYPE                # old V7 tar's directory
    if m.type == tarfile.DIRTYPE:
        m.name = m.name.rstrip("/")
    if prefix:
        m.name = prefix + "/" + m.name
        if m.type == tarfile.DIRTYPE:
            m.name = m.name.rstrip("/")
    return m


def extract_placeholders(tf: tarfile.TarFile, members: list[tarfile.TarInfo], dest: str,
                         options: ExtractOptions, lazy: Callable[[tarfile.TarInfo], bool],
                         where: str = "layer") -> int:
    """Apply the layer tar `tf` (opened seekable), whose `members` are read,
    to the empty dir `dest` as `extract_layer` would, but for the regular
    files `lazy` picks: each is a sparse file of its size carrying
    `layout.LAZY_XATTR`, its data never read (so the tar may hold anything
    there).  The count of entries; UnsafeArchive and BadArchive as
    `extract_layer`."""
    try:
        with _Extractor(dest, options, lazy=lazy) as ex:
            for member in members:
                ex.add(member, tf)
            ex.finish()
    except (tarfile.TarError, EOFError) as e:
        raise BadArchive(where, _tar_error(e)) from None
    sync_tree(dest)
    return ex.count


def _tar_error(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, EOFError) or "unexpected end" in text:
        return "truncated archive (unexpected end of data)"
    if isinstance(e, (zlib.error, gzip.BadGzipFile)) or text.startswith("zlib error"):
        return f"corrupt gzip data ({text.removeprefix('zlib error: ')})"
    return f"invalid tar ({text})"


def clean_name(name: str) -> list[str]:
    """An archive name → its components, relative to the archive's root: a
    leading `/` is dropped (`/etc/x` is `etc/x`, as docker and GNU tar take
    it); `..` anywhere is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, "path contains '..'")
    for p in parts:
        # a character is at most 4 bytes encoded (1 for a surrogate escape):
        # only a longer component can be over the limit
        if len(p) > 63 and len(os.fsencode(p)) > 255:
            raise UnsafeArchive(name, "name component longer than 255 bytes")
    return parts


def data_in_split(m: tarfile.TarInfo, parts: list[str]) -> bool:
    """Whether a tar-split refers to the file extraction makes of member `m`
    (named `parts`, see `clean_name`) for its data, instead of keeping the
    data's raw bytes: yes for a regular file with content, but not for a
    sparse one (its tar data is not the file's bytes), a marker or the
    layer root (no file of the layer holds their data)."""
    return bool(m.isreg() and m.size and m.sparse is None and parts
                and not parts[-1].startswith(layout.WHITEOUT_PREFIX))


class _Extractor:
    """Applies tar members one by one under `dest` (see the module doc)."""

    def __init__(self, dest: str, options: ExtractOptions,
                 recorder: SplitRecorder | None = None,
                 lazy: Callable[[tarfile.TarInfo], bool] | None = None):
        self.options = options
        self.lazy = lazy           # which regular files become placeholders
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.dirs: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self.dir_times: list[tuple[tuple[str, ...], int]] = []
        self.count = 0
        self.device_files = 0      # device nodes kept as files (`_add_device_file`)
        self.recorder = recorder
        self.split_paths = SplitPaths()

    def __enter__(self) -> "_Extractor":
        return self

    def __exit__(self, *exc) -> None:
        self._drop_dir_cache()
        os.close(self.root_fd)

    # -- directory fds -------------------------------------------------------

    def _drop_dir_cache(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _dir_fd(self, parts: tuple[str, ...], entry: str) -> int:
        """fd of the directory `parts`, creating missing ones (mode 0755);
        a symlink or non-directory on the way → UnsafeArchive."""
        if not parts:
            return self.root_fd
        fd = self.dirs.get(parts)
        if fd is not None:
            self.dirs.move_to_end(parts)
            return fd
        parent = self._dir_fd(parts[:-1], entry)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            if self.options.override_stat:
                # a parent the tar implies: root's, as a privileged extraction
                # makes it, not the unprivileged user's
                os.setxattr(fd, layout.OVERRIDE_STAT_XATTR,
                            layout.format_override_stat(0, 0, 0o755, "dir"))
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeArchive(entry, f"'{'/'.join(parts)}' is a symlink or "
                                           "not a directory") from None
            raise
        self.dirs[parts] = fd
        if len(self.dirs) > 64:
            _, old = self.dirs.popitem(last=False)
            os.close(old)
        return fd

    def _remove(self, parent: int, name: str) -> None:
        """Remove what is at parent/name (a tree for a directory)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._drop_dir_cache()
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    # -- members -------------------------------------------------------------

    def add(self, m: tarfile.TarInfo, tf: tarfile.TarFile | None = None,
            src_fd: int | None = None) -> None:
        """Apply one entry.  A regular file's data comes from the tar `tf`, or,
        when building a layer from a tree (`src_fd`), is cloned from that fd."""
        self.count += 1
        if self.count > self.options.max_entries:
            raise UnsafeArchive(m.name, f"more than {self.options.max_entries} entries")
        parts = clean_name(m.name)
        if m.size > self.options.max_entry_size or m.size < 0:
            raise UnsafeArchive(m.name, f"absurd size {m.size}")
        if not parts:               # "./": the layer root itself
            if m.isdir():
                set_meta(self.options, self.root_fd, None, m, is_dir=True)
                self.dir_times.append(((), int(m.mtime)))
            return
        key = tuple(parts)
        self.split_paths.entry(key, m.isdir())
        name = parts[-1]
        if name.startswith(layout.WHITEOUT_PREFIX):
            self._add_marker(m, parts)
            return
        parent = self._dir_fd(tuple(parts[:-1]), m.name)
        try:
            if m.isdir():
                self._add_dir(m, parent, name, tuple(parts))
            elif m.isreg():
                self._add_file(m, tf, src_fd, parent, name, key)
            elif m.issym():
                self._remove(parent, name)
                os.symlink(m.linkname, name, dir_fd=parent)
                set_meta(self.options, parent, name, m)
            elif m.islnk():
                self._add_hardlink(m, parent, name)
            elif m.ischr() or m.isblk() or m.isfifo():
                self._add_special(m, parent, name)
            else:
                raise UnsafeArchive(m.name, f"unsupported entry type {m.type!r}")
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            raise UnsafeArchive(m.name, os.strerror(e.errno or 0) or str(e)) from None

    def _add_marker(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        name = parts[-1]
        parent_parts = tuple(parts[:-1])
        if name == layout.OPAQUE_NAME:
            parent = self._dir_fd(parent_parts, m.name)
            if self.options.form == layout.FORM_OVERLAY:
                os.setxattr(parent, layout.KERNEL_OPAQUE_XATTR, b"y")
            else:
                self._write_empty(parent, name)
            return
        if name.startswith(layout.META_PREFIX):
            return  # aufs bookkeeping
        target = layout.whiteout_target(name)
        if target in (None, ".", ".."):
            raise UnsafeArchive(m.name, "whiteout of an invalid name")
        parent = self._dir_fd(parent_parts, m.name)
        if self.options.form == layout.FORM_OVERLAY:
            # A whiteout hides lower layers only; an entry of this layer wins.
            try:
                os.stat(target, dir_fd=parent, follow_symlinks=False)
                return
            except FileNotFoundError:
                pass
            os.mknod(target, stat.S_IFCHR | 0o000, 0, dir_fd=parent)
        else:
            self._write_empty(parent, name)

    def _write_empty(self, parent: int, name: str) -> None:
        self._remove(parent, name)
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent))

    def _add_dir(self, m: tarfile.TarInfo, parent: int, name: str,
                 parts: tuple[str, ...]) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, 0o700, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = self._dir_fd(parts, m.name)
        set_meta(self.options, fd, None, m, is_dir=True)
        self.dir_times.append((parts, int(m.mtime)))

    def _add_file(self, m: tarfile.TarInfo, tf: tarfile.TarFile | None,
                  src_fd: int | None, parent: int, name: str,
                  key: tuple[str, ...]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        except FileExistsError:     # an earlier entry's (rare: no stat for every file)
            self._remove(parent, name)
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        try:
            if src_fd is not None:
                clone_file(src_fd, fd)
            elif self.lazy is not None and m.size and self.lazy(m):
                # its content comes later (lazylayer.py): a hole of its size
                os.ftruncate(fd, m.size)
                os.setxattr(fd, layout.LAZY_XATTR, b"")
            elif m.size:                # an empty file of a tree comes without source
                self._copy_data(m, tf, fd, key)
            set_meta(self.options, fd, None, m)
        finally:
            os.close(fd)

    def _copy_data(self, m: tarfile.TarInfo, tf: tarfile.TarFile, fd: int,
                   key: tuple[str, ...]) -> None:
        """The member's data from the tar into `fd`; its bytes are left out of
        the split, which refers to this file instead (`data_in_split`)."""
        recorder = self.recorder if data_in_split(m, list(key)) else None
        if recorder is not None:
            recorder.data_begins(m.offset_data, m.size, "/".join(key))
            self.split_paths.referenced(key)
        h = checksum()
        src = tf.extractfile(m)
        remaining = m.size
        while remaining > 0:
            data = src.read(min(_CHUNK, remaining))
            if not data:
                raise BadArchive(m.name, "truncated archive (unexpected end of data)")
            h.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            remaining -= len(data)
        if recorder is not None:
            recorder.data_done(h.intdigest())

    def _add_hardlink(self, m: tarfile.TarInfo, parent: int, name: str) -> None:
        try:
            tparts = clean_name(m.linkname)
        except UnsafeArchive:
            raise UnsafeArchive(m.name, f"hard link to {m.linkname!r} leaves the layer") \
                from None
        if not tparts:
            raise UnsafeArchive(m.name, "hard link to the layer root")
        tparent = self._dir_fd(tuple(tparts[:-1]), m.name)
        try:
            tst = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(m.name, f"hard link to missing {m.linkname!r}") from None
        if stat.S_ISDIR(tst.st_mode):
            raise UnsafeArchive(m.name, f"hard link to directory {m.linkname!r}")
        if tparts == clean_name(m.name):
            return
        self._remove(parent, name)
        os.link(tparts[-1], name, src_dir_fd=tparent, dst_dir_fd=parent,
                follow_symlinks=False)

    def _add_special(self, m: tarfile.TarInfo, parent: int, name: str) -> None:
        if m.isfifo():
            kind, dev = stat.S_IFIFO, 0
        else:
            if not self.options.privileged:
                if not self.options.override_stat:
                    raise UnsafeArchive(m.name, "device node not allowed when not root")
                self._add_device_file(m, parent, name)
                return
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
        self._remove(parent, name)
        os.mknod(name, kind | (m.mode & 0o777), dev, dir_fd=parent)
        set_meta(self.options, parent, name, m)

    def _add_device_file(self, m: tarfile.TarInfo, parent: int, name: str) -> None:
        """A device node where devices cannot be made (rootless): an empty file
        whose override_stat xattr keeps type, major/minor, owner and mode, as
        fuse-overlayfs and containers/storage keep one; fsd's
        `xattr_permissions=2` shows it as the device, and the changeset of the
        layer gives the device entry back."""
        self._remove(parent, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            set_meta(self.options, fd, None, m)
        finally:
            os.close(fd)
        self.device_files += 1

    def finish(self) -> None:
        """Directory mtimes last: adding entries changed them."""
        for parts, mtime in reversed(self.dir_times):
            try:
                fd = self._dir_fd(parts, "/".join(parts))
            except (UnsafeArchive, OSError):
                continue  # replaced by a later entry
            os.utime(fd, ns=(mtime * 1_000_000_000,) * 2)


def set_meta(opts: ExtractOptions, fd: int, name: str | None, m: tarfile.TarInfo,
             is_dir: bool = False) -> None:
    """Owner, mode, xattrs and (but for dirs) mtime of an entry.

    `name is None`: `fd` is the entry itself (a regular file or directory,
    or the file standing for a device); otherwise the entry is `name` in
    directory `fd` (symlink, fifo, device).  A lazy file's fill sets them
    again (lazylayer.py).
    """
    mode = m.mode & 0o7777
    on_disk = mode
    if opts.override_stat and name is None:
        if opts.force_mask is not None:
            on_disk = opts.force_mask
        on_disk |= 0o700 if is_dir else 0o600
        os.setxattr(fd, layout.OVERRIDE_STAT_XATTR, layout.format_override_stat(
            m.uid, m.gid, mode, "dir" if is_dir else _override_kind(m)))
    elif opts.privileged:
        try:
            if name is None:
                os.fchown(fd, m.uid, m.gid)
            else:
                os.chown(name, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
        except OSError:
            if not opts.ignore_chown_errors:
                raise
    for key, value in (m.pax_headers or {}).items():
        if key.startswith("SCHILY.xattr."):
            _set_xattr(opts, fd, name, m, key[len("SCHILY.xattr."):], value)
    if name is None:
        os.fchmod(fd, on_disk)   # after chown, which clears setuid bits
        if not is_dir:
            os.utime(fd, ns=(int(m.mtime * 1e9),) * 2)
    else:
        if not m.issym():
            os.chmod(name, on_disk, dir_fd=fd)
        os.utime(name, ns=(int(m.mtime * 1e9),) * 2, dir_fd=fd,
                 follow_symlinks=False)


def _set_xattr(opts: ExtractOptions, fd: int, name: str | None, m: tarfile.TarInfo,
               key: str, value: str) -> None:
    if layout.is_private_xattr(key):
        return  # would forge overlay markers, owners or a lazy file
    if not opts.privileged and not key.startswith("user."):
        return
    raw = value.encode("utf-8", "surrogateescape")
    try:
        if name is None:
            os.setxattr(fd, key, raw)
        elif not m.issym():
            os.setxattr(f"/proc/self/fd/{fd}/{name}", key, raw, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


def _override_kind(m: tarfile.TarInfo) -> str:
    """The type field of override_stat for a member kept as a regular file."""
    if m.ischr() or m.isblk():
        return f"{'char' if m.ischr() else 'block'}-{m.devmajor}-{m.devminor}"
    return "file"


# -- tars out ------------------------------------------------------------------------


class TarWriter:
    """Writes a tar stream entry by entry into `out` (None: nowhere), hashing
    it — its sha256 is the diffID of the layer it describes — and recording
    its tar-split when given one.

    Entries are PAX headers as `TarInfo.tobuf` makes them; a regular file's
    data is read from `src_fd`, exactly `size` bytes (BadArchive if the file
    changed size underneath).  `close()` writes the two end blocks and returns
    (diffID, tar bytes).
    """

    def __init__(self, out: BinaryIO | None = None, split: SplitWriter | None = None):
        self._out = out
        self._split = split
        self._hash = hashlib.sha256()
        self.size = 0

    def _emit(self, data: bytes, raw: bool = True) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._out is not None:
            self._out.write(data)
        if raw and self._split is not None:
            self._split.raw(data)

    def add(self, ti: tarfile.TarInfo, src_fd: int | None = None) -> None:
        self._emit(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if not (ti.isreg() and ti.size):
            return
        if self._split is not None:
            self._split.file("/".join(clean_name(ti.name)), ti.size)
        h = checksum()
        offset = 0
        while offset < ti.size:
            data = os.pread(src_fd, min(_CHUNK, ti.size - offset), offset)
            if not data:
                raise BadArchive(ti.name, f"file shrank below {ti.size} bytes while "
                                          "being written")
            h.update(data)
            self._emit(data, raw=False)
            offset += len(data)
        if self._split is not None:
            self._split.file_checksum(h.intdigest())
        self._emit(b"\0" * ((-ti.size) % tarfile.BLOCKSIZE))

    def close(self) -> tuple[Digest, int]:
        self._emit(b"\0" * (2 * tarfile.BLOCKSIZE))
        return Digest(self._hash.hexdigest()), self.size


def write_tar(entries: Iterable[tuple[tarfile.TarInfo, str | None]], out: BinaryIO | None,
              split: SplitWriter | None = None) -> tuple[Digest, int]:
    """Write `entries` (see `tarentries.py`) as one tar; (sha256, bytes)."""
    writer = TarWriter(out, split)
    for ti, src in entries:
        if src is None:
            writer.add(ti)
            continue
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            writer.add(ti, fd)
        finally:
            os.close(fd)
    return writer.close()


def build_layer(entries: Iterable[tuple[tarfile.TarInfo, str | None]], dest: str,
                options: ExtractOptions, split_path: str) -> ExtractResult:
    """A layer dir in the empty `dest` and its tar-split from `entries`, in one
    pass: each entry goes into the tar stream (hashed: the diffID; the tar
    itself is not kept) and is applied to `dest` as extraction would, a file's
    data cloned from its source (reflink where the filesystem can) instead of
    copied out of the tar.  The layer dir is what extracting that tar gives."""
    split = SplitWriter(split_path)
    writer = TarWriter(None, split)
    ok = False
    try:
        with _Extractor(dest, options) as ex:
            for ti, src in entries:
                if src is None:
                    writer.add(ti)
                    ex.add(ti)
                else:
                    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        writer.add(ti, fd)
                        if os.fstat(fd).st_size != ti.size:
                            raise BadArchive(ti.name, "file changed size while being "
                                                      "written")
                        ex.add(ti, src_fd=fd)
                    finally:
                        os.close(fd)
                if ex.count == 2:
                    crash_point("building")
            ex.finish()
        diff_id, size = writer.close()
        ok = True
    finally:
        if not ok:
            split.abandon()
    split.close()
    sync_tree(dest)
    return ExtractResult(blob_digest=diff_id, blob_size=size, diff_id=diff_id,
                         tar_size=size, compression=None, entries=ex.count, split=True)
