"""One layer directory, opened once; every access to its contents goes through here.

All calls are relative to the layer's directory fd and never follow a symlink in
the last component, so nothing a user names through the mount can reach outside
the layer.  Paths are `bytes` relative to the layer root (b"" is the root).
Paths too long for one syscall are resolved a chunk of components at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys

__all__ = ["Layer", "Named", "Opened", "UPPER", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "RENAME_WHITEOUT",
           "reopen", "set_times"]

UPPER = -1  # the index of the upper layer (lowers count from 0, top first)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

S_IFDIR, S_IFREG, S_IFLNK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_LONG = 3000  # past this many bytes a relative path is walked in pieces
# what a filesystem or an unprivileged daemon answers for xattrs it keeps none of or hides
_NO_XATTRS = (errno.ENOTSUP, errno.EPERM, errno.EACCES)
_NO_XATTR = (errno.ENODATA, *_NO_XATTRS)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
_Times = _Timespec * 2
_OMIT = _Timespec(0, (1 << 30) - 2)  # UTIME_OMIT
_AT_SYMLINK_NOFOLLOW = 0x100


def renameat2(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int = 0) -> None:
    if _libc.renameat2(src_fd, src, dst_fd, dst, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def set_times(fd: int, name: bytes | None, ns: tuple[int | None, int | None]) -> None:
    """utimensat(2) of name relative to dirfd fd (not following a symlink), or
    futimens(3) of the object open on fd when name is None: (atime, mtime) in
    ns, a time given as None left as it is (UTIME_OMIT, which os.utime cannot
    say)."""
    atime, mtime = ns
    times = _Times(_OMIT if atime is None else _Timespec(atime // 1_000_000_000, atime % 1_000_000_000),
                   _OMIT if mtime is None else _Timespec(mtime // 1_000_000_000, mtime % 1_000_000_000))
    if (_libc.futimens(fd, times) if name is None else _libc.utimensat(fd, name, times, _AT_SYMLINK_NOFOLLOW)):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), name)


def _open(path: bytes, flags: int, mode: int = 0o600, dir_fd: int | None = None) -> int:
    """os.open; O_NOATIME (fsd's own reads must not change what users see) is
    dropped where the kernel refuses it to a daemon that does not own the file."""
    try:
        return os.open(path, flags, mode, dir_fd=dir_fd)
    except PermissionError:
        if not flags & os.O_NOATIME:
            raise
        return os.open(path, flags & ~os.O_NOATIME, mode, dir_fd=dir_fd)


def reopen(fd: int, flags: int) -> int:
    """A new descriptor of the object that fd is open on, through /proc, which
    reaches it when it has no name left.  Without a caller's O_NOFOLLOW, which
    would refuse the /proc link itself (ELOOP) though it names the object, not
    a path."""
    return _open(b"/proc/self/fd/%d" % fd, (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)


class Layer:
    """A layer root: `index` is its place in the stack (-1 for the upper)."""

    def __init__(self, path: str, index: int):
        self.path = path
        self.index = index
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dev = os.fstat(self.fd).st_dev

    def close(self) -> None:
        os.close(self.fd)

    def __repr__(self) -> str:
        return f"Layer({self.index}, {self.path!r})"

    @contextlib.contextmanager
    def at(self, rel: bytes):
        """Yield (dirfd, name) naming `rel`; name is b"." for the root."""
        if len(rel) < _LONG:
            yield self.fd, rel or b"."
            return
        parts = rel.split(b"/")
        fd = os.dup(self.fd)
        try:
            start = 0
            while start < len(parts) - 1:
                end, size = start, 0
                while end < len(parts) - 1 and size + len(parts[end]) + 1 < _LONG:
                    size += len(parts[end]) + 1
                    end += 1
                end = max(end, start + 1)
                nfd = os.open(b"/".join(parts[start:end]), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
                start = end
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def proc_path(self, dirfd: int, name: bytes) -> bytes:
        """A /proc path for xattr calls, which take no dirfd."""
        return b"/proc/self/fd/%d/%s" % (dirfd, name)

    # --- reading -----------------------------------------------------------------

    def lstat(self, rel: bytes) -> os.stat_result:
        if len(rel) < _LONG:  # `at` without its context manager: the common case, every request
            return os.lstat(rel or b".", dir_fd=self.fd)
        with self.at(rel) as (fd, name):
            return os.lstat(name, dir_fd=fd)

    def try_lstat(self, rel: bytes) -> os.stat_result | None:
        try:
            return self.lstat(rel)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def scandir(self, rel: bytes) -> list[tuple[bytes, int, int]]:
        """(name, d_type as S_IFMT, st_rdev or 0 for char devices) of every entry."""
        dfd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        try:
            return _entries(dfd)
        finally:
            os.close(dfd)

    def scandir_is_dir(self, rel: bytes) -> list[tuple[bytes, bool]]:
        """(name, whether a directory) of every entry: what removing a tree
        needs, from d_type alone (scandir lstats each device for its rdev, and
        a removed directory of whiteouts holds one per name)."""
        dfd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        try:
            with os.scandir(dfd) as it:
                return [(entry.name.encode(_FS_ENCODING, _FS_ERRORS), entry.is_dir(follow_symlinks=False))
                        for entry in it]
        finally:
            os.close(dfd)

    def scandir_and_xattrs(self, rel: bytes) -> tuple[list[tuple[bytes, int, int]], list[bytes]]:
        """scandir, and the directory's xattr names, read through the descriptor
        of the listing (listxattr would walk the path again, through /proc)."""
        dfd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME)
        try:
            return _entries(dfd), Opened(dfd).listxattr()
        finally:
            os.close(dfd)

    def read_dir(self, rel: bytes) -> bool:
        """A read of directory rel as a user's readdir is one: a getdents without
        O_NOATIME, so that the filesystem updates the atime by its own rules
        (relatime ...).  Whether the atime changed."""
        dfd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            before = os.fstat(dfd).st_atime_ns
            with os.scandir(dfd) as it:
                next(it, None)
            return os.fstat(dfd).st_atime_ns != before
        finally:
            os.close(dfd)

    def readlink(self, rel: bytes) -> bytes:
        with self.at(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def open(self, rel: bytes, flags: int, mode: int = 0o600) -> int:
        """openat, never following a symlink (see _open for O_NOATIME)."""
        if len(rel) < _LONG:  # as in lstat
            return _open(rel or b".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, self.fd)
        with self.at(rel) as (fd, name):
            return _open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, fd)

    def getxattr(self, rel: bytes, attr: bytes) -> bytes:
        if len(rel) < _LONG:  # as in lstat
            return os.getxattr(self.proc_path(self.fd, rel or b"."), attr, follow_symlinks=False)
        with self.at(rel) as (fd, name):
            return os.getxattr(self.proc_path(fd, name), attr, follow_symlinks=False)

    def try_getxattr(self, rel: bytes, attr: bytes) -> bytes | None:
        try:
            return self.getxattr(rel, attr)
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                return None
            raise

    def listxattr(self, rel: bytes, strict: bool = False) -> list[bytes]:
        """strict: a filesystem's refusal (ENOTSUP...) raised, not taken for no names."""
        with self.at(rel) as (fd, name):
            try:
                names = os.listxattr(self.proc_path(fd, name), follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _NO_XATTRS and not strict:
                    return []
                raise
        return [os.fsencode(n) for n in names]

    # --- writing (the upper and the work area only) --------------------------

    def setxattr(self, rel: bytes, attr: bytes, value: bytes, flags: int = 0) -> None:
        with self.at(rel) as (fd, name):
            os.setxattr(self.proc_path(fd, name), attr, value, flags, follow_symlinks=False)

    def removexattr(self, rel: bytes, attr: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.removexattr(self.proc_path(fd, name), attr, follow_symlinks=False)

    def mkdir(self, rel: bytes, mode: int) -> None:
        with self.at(rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def mknod(self, rel: bytes, mode: int, rdev: int = 0) -> None:
        with self.at(rel) as (fd, name):
            os.mknod(name, mode, rdev, dir_fd=fd)

    def symlink(self, target: bytes, rel: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def unlink(self, rel: bytes) -> None:
        if len(rel) < _LONG:  # `at` without its context manager: every whiteout of a removed directory
            os.unlink(rel, dir_fd=self.fd)
            return
        with self.at(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def rmdir(self, rel: bytes) -> None:
        with self.at(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def chown(self, rel: bytes, uid: int, gid: int) -> None:
        with self.at(rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def chmod(self, rel: bytes, mode: int) -> None:
        with self.at(rel) as (fd, name):
            os.chmod(name, mode, dir_fd=fd)

    def utime(self, rel: bytes, ns: tuple[int | None, int | None]) -> None:
        """Set (atime, mtime) in ns; one given as None stays as it is."""
        with self.at(rel) as (fd, name):
            if None in ns:
                set_times(fd, name, ns)
            else:
                os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def link(self, src_rel: bytes, dst: "Layer", dst_rel: bytes) -> None:
        if len(src_rel) < _LONG and len(dst_rel) < _LONG:  # `at` without its context managers: every whiteout
            os.link(src_rel or b".", dst_rel or b".", src_dir_fd=self.fd, dst_dir_fd=dst.fd, follow_symlinks=False)
            return
        with self.at(src_rel) as (sfd, sname), dst.at(dst_rel) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)

    def link_fd(self, fd: int, dst_rel: bytes) -> None:
        """linkat of the open file fd (made with O_TMPFILE, or it must still have a
        link) to dst_rel; through /proc, which needs no CAP_DAC_READ_SEARCH."""
        with self.at(dst_rel) as (dfd, dname):
            os.link(b"/proc/self/fd/%d" % fd, dname, dst_dir_fd=dfd, follow_symlinks=True)

    def rename(self, src_rel: bytes, dst: "Layer", dst_rel: bytes, flags: int = 0) -> None:
        """renameat2 from this layer to `dst` (same filesystem)."""
        with self.at(src_rel) as (sfd, sname), dst.at(dst_rel) as (dfd, dname):
            if flags:
                renameat2(sfd, sname, dfd, dname, flags)
            else:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)


    def walk(self, rel: bytes):
        """lstat of rel and of everything below it."""
        pending = [rel]
        while pending:
            path = pending.pop()
            st = self.lstat(path)
            yield st
            if stat.S_ISDIR(st.st_mode):
                pending.extend(path + b"/" + name for name, _, _ in self.scandir(path))


def _entries(dfd: int) -> list[tuple[bytes, int, int]]:
    """Layer.scandir of the directory open on dfd."""
    out = []
    append = out.append
    with os.scandir(dfd) as it:
        for entry in it:  # names come as str from a descriptor: os.fsencode's encoding, inlined
            raw = entry.name.encode(_FS_ENCODING, _FS_ERRORS)
            if entry.is_dir(follow_symlinks=False):
                append((raw, S_IFDIR, 0))
            elif entry.is_file(follow_symlinks=False):
                append((raw, S_IFREG, 0))
            elif entry.is_symlink():
                append((raw, S_IFLNK, 0))
            else:
                st = os.lstat(raw, dir_fd=dfd)
                append((raw, st.st_mode & 0o170000, st.st_rdev))
    return out


class Named:
    """One object of a layer, by its path: the calls of `Layer` that read or
    change a single object (copy_up.py builds copies through these, or through
    an `Opened` one)."""

    __slots__ = ("layer", "rel")

    def __init__(self, layer: Layer, rel: bytes):
        self.layer = layer
        self.rel = rel

    def lstat(self) -> os.stat_result:
        return self.layer.lstat(self.rel)

    def listxattr(self) -> list[bytes]:
        return self.layer.listxattr(self.rel)

    def try_getxattr(self, attr: bytes) -> bytes | None:
        return self.layer.try_getxattr(self.rel, attr)

    def setxattr(self, attr: bytes, value: bytes) -> None:
        self.layer.setxattr(self.rel, attr, value)

    def chown(self, uid: int, gid: int) -> None:
        self.layer.chown(self.rel, uid, gid)

    def chmod(self, mode: int) -> None:
        self.layer.chmod(self.rel, mode)

    def utime(self, ns: tuple[int, int]) -> None:
        self.layer.utime(self.rel, ns)


class Opened:
    """One object through a descriptor open on it (not O_PATH): the calls of
    `Named`, with no path to walk (a path xattr call goes through /proc)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def lstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def listxattr(self) -> list[bytes]:
        try:
            return [os.fsencode(n) for n in os.listxattr(self.fd)]
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                return []
            raise

    def try_getxattr(self, attr: bytes) -> bytes | None:
        try:
            return os.getxattr(self.fd, attr)
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                return None
            raise

    def setxattr(self, attr: bytes, value: bytes) -> None:
        os.setxattr(self.fd, attr, value)

    def chown(self, uid: int, gid: int) -> None:
        os.fchown(self.fd, uid, gid)

    def chmod(self, mode: int) -> None:
        os.fchmod(self.fd, mode)

    def utime(self, ns: tuple[int, int]) -> None:
        os.utime(self.fd, ns=ns)
