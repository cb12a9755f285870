"""Mutating operations on a merged tree, run the same way on several mounts.

An operation is a plain tuple `(name, *args)` whose paths are relative to the
mount root, so one seeded sequence can be replayed on fsd and on the kernel
overlay. apply(root, op) runs it and returns a comparable result: the errno
name on failure, else "ok" plus a read-back of everything the operation
touched (type, mode, owner, size, link count, content hash, link target,
xattrs, the parent's listing), taken through the mount right after the call,
so that a stale kernel cache shows up as a difference too.

OpGenerator(seed) picks the next operation from a View of the current tree
(walk()). With kernel_safe=True it avoids the two places where fsd does better
than the kernel overlay on purpose (those have targeted tests instead):
renaming a directory that has lower parts (kernel: EXDEV) and copying up a
lower file with several hard links (the kernel with index=off breaks them),
also by unlinking or renaming over one of its names (fsd copies it up first).

Safety: the stacks hold absolute symlinks (to "/", /etc/hostname ...). No
operation follows a symlink: opens use O_NOFOLLOW, attribute changes the
*at(AT_SYMLINK_NOFOLLOW) calls, and a path whose ancestor is a symlink is not
touched at all (the result says so, and then differs if only one mount has a
symlink there).

Also here: ctypes renameat2/utimensat/fchmodat, the daemon-process helpers the
crash tests need (SIGKILL, detach a dead mount, /proc/PID/io), and the stress
worker of the concurrency test (`python -m support.upper_ops stress ...`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# -- libc ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(ret: int, path) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fspath(path))


def renameat2(src, dst, flags: int = 0) -> None:
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags)), src)


def utimensat(path, atime_ns, mtime_ns, follow: bool = False) -> None:
    """atime_ns/mtime_ns: nanoseconds, or UTIME_NOW / UTIME_OMIT."""
    def ts(v):
        if v in (UTIME_NOW, UTIME_OMIT):
            return _Timespec(0, v)
        return _Timespec(v // 1_000_000_000, v % 1_000_000_000)
    times = (_Timespec * 2)(ts(atime_ns), ts(mtime_ns))
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0 if follow else AT_SYMLINK_NOFOLLOW), path)


def lchmod(path, mode: int) -> None:
    """chmod without following a symlink (EOPNOTSUPP on one), as glibc does it."""
    _check(_libc.fchmodat(AT_FDCWD, os.fsencode(path), ctypes.c_uint(mode), AT_SYMLINK_NOFOLLOW), path)


def punch_hole(fd: int, offset: int, length: int) -> None:
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    _check(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length), f"fd {fd}")


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def results_of(*thunks) -> list:
    """Several calls in order; each one's result ("ok" for None, the errno name
    on failure)."""
    out = []
    for t in thunks:
        try:
            v = t()
            out.append("ok" if v is None else v)
        except OSError as e:
            out.append(errname(e))
    return out


def errno_of(fn, *args, **kw) -> str:
    """The errno name fn raises, or 'ok'."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return errname(e)
    return "ok"


# -- reading back ---------------------------------------------------------------------

_KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket"}


def kind_of(st: os.stat_result) -> str:
    return _KINDS.get(stat.S_IFMT(st.st_mode), "other")


def file_hash(path) -> str:
    """sha256 of a regular file's content (opened O_NOFOLLOW|O_NONBLOCK)."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return "error: " + errname(e)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    except OSError as e:
        return "error: " + errname(e)
    finally:
        os.close(fd)
    return h.hexdigest()[:24]


def xattrs_of(path) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return (("listxattr", errname(e)),)
    out = []
    for n in sorted(names):
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
            out.append((n, hashlib.sha256(v).hexdigest()[:12]))
        except OSError as e:
            out.append((n, "error: " + errname(e)))
    return tuple(out)


def describe(root, rel: str) -> tuple:
    """What a path is, through the mount: a tuple comparable across mounts."""
    path = os.path.join(root, rel) if rel else os.fspath(root)
    try:
        st = os.lstat(path)
    except OSError as e:
        return (rel, errname(e))
    kind = kind_of(st)
    out = [rel, kind, f"{stat.S_IMODE(st.st_mode):o}", st.st_uid, st.st_gid]
    if kind != "dir":
        out += [st.st_size, st.st_nlink]
    if kind == "file":
        out.append(file_hash(path))
    elif kind == "symlink":
        out.append(os.readlink(path))
    elif kind in ("chardev", "blockdev"):
        out.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    out.append(xattrs_of(path))
    return tuple(out)


def listing(root, rel: str) -> tuple:
    """Sorted names of a directory that lstat finds (the kernel overlay lists
    whiteouts of a directory that lives in one layer only; those are dropped)."""
    path = os.path.join(root, rel) if rel else os.fspath(root)
    try:
        names = os.listdir(path)
    except OSError as e:
        return ("listdir", errname(e))
    return tuple(sorted(n for n in names if os.path.lexists(os.path.join(path, n))))


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def times_settled(snap, t0_ns: int, t1_ns: int | None = None):
    """A copy of a support.snapshot Snapshot in which every mtime that falls in
    [t0_ns, t1_ns] (when the operations ran) reads -1: two mounts cannot agree
    on those to the nanosecond. Times set explicitly (utimens to 2001..2033) and
    times kept from the lowers still compare exactly."""
    t1_ns = t1_ns if t1_ns is not None else time.time_ns() + 10**9
    out = dataclasses.replace(snap, entries=dict(snap.entries))
    for p, e in snap.entries.items():
        if e.mtime_ns is not None and t0_ns <= e.mtime_ns <= t1_ns:
            out.entries[p] = dataclasses.replace(e, mtime_ns=-1)
    return out


def dir_times_dropped(snap):
    """A copy of a Snapshot without directory mtimes, to check everything else
    first (a directory-mtime difference is then reported on its own)."""
    out = dataclasses.replace(snap, entries=dict(snap.entries))
    for p, e in snap.entries.items():
        if e.kind == "dir":
            out.entries[p] = dataclasses.replace(e, mtime_ns=None)
    return out


# -- the view a generator picks from -------------------------------------------------------

@dataclass(frozen=True)
class Info:
    kind: str
    nlink: int
    in_upper: bool  # the object (not only a whiteout) exists in the upper layer


def walk(root, upper=None) -> dict[str, Info]:
    """Every path of a merged tree ("" is the root), without following symlinks.
    upper: the mount's upperdir, to tell upper objects from lower ones."""
    root = os.fspath(root)
    out: dict[str, Info] = {}

    def in_upper(rel: str) -> bool:
        if upper is None or not rel:
            return False
        try:
            st = os.lstat(os.path.join(upper, rel))
        except OSError:
            return False
        return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)

    def rec(rel: str):
        path = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return
        for name in names:
            child = join(rel, name)
            try:
                st = os.lstat(os.path.join(root, child))
            except OSError:
                continue  # a whiteout the kernel lists
            out[child] = Info(kind_of(st), st.st_nlink, in_upper(child))
            if stat.S_ISDIR(st.st_mode):
                rec(child)

    out[""] = Info("dir", 1, True)
    rec("")
    return out


# -- applying one operation ------------------------------------------------------------------

class _Unsafe(Exception):
    pass


def _safe(root: str, rel: str) -> str:
    """root/rel, after checking no ancestor of rel is a symlink (would lead out
    of the mount). A missing ancestor is fine: the call then fails ENOENT."""
    parts = rel.split("/")[:-1]
    cur = root
    for p in parts:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except OSError:
            break
        if stat.S_ISLNK(st.st_mode):
            raise _Unsafe(rel)
        if not stat.S_ISDIR(st.st_mode):
            break
    return os.path.join(root, rel) if rel else root


def _regular_or_absent(path: str) -> str | None:
    """None if path is a regular file or absent; else its kind (not to be opened)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(st.st_mode) else kind_of(st)


def _open_write(path: str, flags: int, data: bytes, offset: int | None = None, mode: int = 0o644):
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    try:
        if data:
            if offset is None:
                os.write(fd, data)
            else:
                os.pwrite(fd, data, offset)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def apply(root, op: tuple) -> tuple:
    """Run op on the mount at root; see module doc for the result."""
    root = os.fspath(root)
    name, *args = op
    try:
        return _APPLY[name](root, *args)
    except _Unsafe as e:
        return ("unsafe path", str(e))


def _result(root: str, touched: list[str], call) -> tuple:
    try:
        ret = call()
    except OSError as e:
        return ("err", errname(e))
    back = [describe(root, r) for r in touched]
    parents = sorted({parent_of(r) for r in touched})
    back += [("listing", p, listing(root, p)) for p in parents]
    return ("ok", ret, *back)


def _op_create(root, rel, mode, data):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: _open_write(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, data, mode=mode))


def _op_write(root, rel, offset, data):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    return _result(root, [rel], lambda: _open_write(p, os.O_WRONLY, data, offset))


def _op_append(root, rel, data):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    return _result(root, [rel], lambda: _open_write(p, os.O_WRONLY | os.O_APPEND, data))


def _op_open_trunc(root, rel, data):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    return _result(root, [rel], lambda: _open_write(p, os.O_WRONLY | os.O_TRUNC, data))


def _op_truncate(root, rel, size):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not truncated", k)
    return _result(root, [rel], lambda: os.truncate(p, size))


def _op_unlink(root, rel):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.unlink(p))


def _op_rmdir(root, rel):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.rmdir(p))


def _op_mkdir(root, rel, mode):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.mkdir(p, mode))


def _op_mkfifo(root, rel, mode):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.mkfifo(p, mode))


def _op_mknod(root, rel, kind, major, minor):
    p = _safe(root, rel)
    fmt = {"fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK, "chr": stat.S_IFCHR}[kind]
    return _result(root, [rel], lambda: os.mknod(p, fmt | 0o644, os.makedev(major, minor)))


def _punch(path: str, offset: int, length: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        punch_hole(fd, offset, length)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _op_punch(root, rel, offset, length):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    return _result(root, [rel], lambda: _punch(p, offset, length))


def _sync_write(path: str, data: bytes, datasync: bool) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        os.write(fd, data)
        (os.fdatasync if datasync else os.fsync)(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _op_fsync(root, rel, data, datasync):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    return _result(root, [rel], lambda: _sync_write(p, data, datasync))


def _op_symlink(root, rel, target):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.symlink(target, p))


def _op_link(root, src, dst):
    s, d = _safe(root, src), _safe(root, dst)
    return _result(root, [src, dst], lambda: os.link(s, d, follow_symlinks=False))


def _op_rename(root, src, dst, flags):
    s, d = _safe(root, src), _safe(root, dst)
    return _result(root, [src, dst], lambda: renameat2(s, d, flags))


def _op_chmod(root, rel, mode):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: lchmod(p, mode))


def _op_chown(root, rel, uid, gid):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.chown(p, uid, gid, follow_symlinks=False))


@dataclass(frozen=True)
class Soft:
    """A part of a result whose difference is reported but does not stop a
    sequence (see run_sequence): atime, which reads of the real objects move."""
    value: object


def hard_part(result):
    """result without its Soft parts."""
    if isinstance(result, Soft):
        return "soft"
    if isinstance(result, tuple):
        return tuple(hard_part(x) for x in result)
    return result


def _op_utime(root, rel, atime, mtime, plain=False):
    """atime/mtime: ns, "now" or "omit"; plain: os.utime(path, None) for now/now.
    The read-back gives exact times where they were set, "recent" for now,
    "kept" for an omitted one (a Soft part for atime)."""
    p = _safe(root, rel)
    conv = {"now": UTIME_NOW, "omit": UTIME_OMIT}
    try:
        before = os.lstat(p)
    except OSError:
        before = None
    try:
        if atime == "now" and mtime == "now" and plain:
            os.utime(p, None, follow_symlinks=False)
        elif not isinstance(atime, str) and not isinstance(mtime, str):
            os.utime(p, ns=(atime, mtime), follow_symlinks=False)
        else:
            utimensat(p, conv.get(atime, atime), conv.get(mtime, mtime))
    except OSError as e:
        return ("err", errname(e))
    st = os.lstat(p)
    now = time.time_ns()

    def show(want, got_ns, before_ns):
        if want == "now":
            return "recent" if abs(now - got_ns) < 30 * 10**9 else f"not recent: {got_ns}"
        if want == "omit":
            return "kept" if got_ns == before_ns else f"changed {before_ns} -> {got_ns}"
        return got_ns
    a = show(atime, st.st_atime_ns, before.st_atime_ns)
    return ("ok", Soft(a) if atime == "omit" else a, show(mtime, st.st_mtime_ns, before.st_mtime_ns),
            describe(root, rel))


def _op_setxattr(root, rel, xname, value):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.setxattr(p, xname, value, follow_symlinks=False))


def _op_removexattr(root, rel, xname):
    p = _safe(root, rel)
    return _result(root, [rel], lambda: os.removexattr(p, xname, follow_symlinks=False))


def _op_read(root, rel):
    p = _safe(root, rel)
    if k := _regular_or_absent(p):
        return ("not opened", k)
    h = file_hash(p)
    return ("err", h[7:]) if h.startswith("error") else ("ok", h)


def _op_stat(root, rel):
    _safe(root, rel)
    return ("ok", describe(root, rel))


def _op_listdir(root, rel):
    _safe(root, rel)
    return ("ok", listing(root, rel))


_APPLY = {
    "create": _op_create, "write": _op_write, "append": _op_append, "open_trunc": _op_open_trunc,
    "truncate": _op_truncate, "unlink": _op_unlink, "rmdir": _op_rmdir, "mkdir": _op_mkdir,
    "mkfifo": _op_mkfifo, "mknod": _op_mknod, "punch": _op_punch, "fsync": _op_fsync, "symlink": _op_symlink,
    "link": _op_link, "rename": _op_rename,
    "chmod": _op_chmod, "chown": _op_chown, "utime": _op_utime, "setxattr": _op_setxattr,
    "removexattr": _op_removexattr, "read": _op_read, "stat": _op_stat, "listdir": _op_listdir,
}


def show_op(op: tuple) -> str:
    def short(a):
        if isinstance(a, bytes) and len(a) > 16:
            return f"<{len(a)} bytes>"
        return repr(a)
    return f"{op[0]}(" + ", ".join(short(a) for a in op[1:]) + ")"


# -- the random sequence -----------------------------------------------------------------

_WEIGHTS = {
    "create": 8, "write": 6, "append": 5, "truncate": 4, "open_trunc": 4, "unlink": 7, "rmdir": 4,
    "mkdir": 7, "mkfifo": 2, "mknod": 2, "punch": 3, "fsync": 2, "symlink": 3, "link": 5, "rename": 10,
    "chmod": 4, "chown": 3,
    "utime": 4, "setxattr": 4, "removexattr": 3, "read": 4, "stat": 3, "listdir": 3,
}
_MODES = (0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000, 0o444)
_OWNERS = ((0, 0), (1000, 1000), (12345, 54321), (0, 100), (65534, 65534))
_XNAMES = ("user.comment", "user.mime_type", "user.app.a", "user.t1", "user.t2")


@dataclass
class OpGenerator:
    """Seeded choice of operations; see module doc. Call next(view) for an op
    and observe(op, result) with its (agreed) result."""

    seed: int
    kernel_safe: bool = True
    rng: random.Random = field(init=False)
    pure_dirs: set[str] = field(default_factory=set)  # dirs without lower parts (made here)
    deleted: list[str] = field(default_factory=list)  # names removed; reused to create over whiteouts
    xattrs_set: list[tuple[str, str]] = field(default_factory=list)  # (path, name) set by setxattr
    count: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed * 7919 + 17)

    # -- choosing paths
    def _pick(self, items):
        return self.rng.choice(sorted(items)) if items else None

    def _new_name(self, view) -> str:
        rng = self.rng
        if self.deleted and rng.random() < 0.35:
            return rng.choice(self.deleted[-12:])
        parent = self._pick([r for r, i in view.items() if i.kind == "dir" and r.count("/") < 5]) or ""
        self.count += 1
        stem = rng.choice(("n", "new", "sp ace ", "ü", ".dot", "x"))
        return join(parent, f"{stem}{self.count}")

    def _any(self, view, kinds=None, mutable=True) -> str:
        """An existing path (sometimes a missing one, for the errno)."""
        if self.rng.random() < 0.05:
            return self._new_name(view)
        cands = [r for r, i in view.items() if r and (kinds is None or i.kind in kinds)]
        if mutable and self.kernel_safe:
            cands = [r for r in cands if not self._protected(view[r])]
        return self._pick(cands) or self._new_name(view)

    @staticmethod
    def _protected(info: Info) -> bool:
        """A lower file with several links: copy-up differs on purpose."""
        return info.kind == "file" and info.nlink > 1 and not info.in_upper

    def _data(self, lo=1, hi=5000) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    # -- the next operation
    def next(self, view: dict[str, Info]) -> tuple:
        rng = self.rng
        name = rng.choices(list(_WEIGHTS), list(_WEIGHTS.values()))[0]
        files = ("file",)
        if name == "create":
            return ("create", self._new_name(view) if rng.random() < 0.85 else self._any(view),
                    rng.choice((0o644, 0o600, 0o755)), self._data(0))
        if name == "write":
            return ("write", self._any(view, files), rng.choice((0, 1, 100, 4096, 10_000)), self._data())
        if name == "append":
            return ("append", self._any(view, files), self._data())
        if name == "open_trunc":
            return ("open_trunc", self._any(view, files), self._data(0, 3000))
        if name == "truncate":
            return ("truncate", self._any(view, files), rng.choice((0, 1, 777, 5000, 70_000)))
        if name == "unlink":
            # a lower hard link is copied up before one of its names goes (its
            # link count then is that of the kernel with index=on): protected
            return ("unlink", self._any(view, None if rng.random() < 0.2 else ("file", "symlink", "fifo", "chardev")))
        if name == "rmdir":
            dirs = [r for r, i in view.items() if r and i.kind == "dir"]
            empty = [r for r in dirs if not any(k.startswith(r + "/") for k in view)]
            pool = empty if empty and rng.random() < 0.7 else dirs
            return ("rmdir", self._pick(pool) or self._new_name(view))
        if name == "mkdir":
            return ("mkdir", self._new_name(view) if rng.random() < 0.9 else self._any(view),
                    rng.choice((0o755, 0o700, 0o2775, 0o1777)))
        if name == "mkfifo":
            return ("mkfifo", self._new_name(view), 0o644)
        if name == "mknod":  # 0/0 is a whiteout: the kernel overlay refuses to make one (EPERM)
            kind, major, minor = rng.choice((("sock", 0, 0), ("chr", 1, 3), ("chr", 1, 5), ("chr", 0, 0),
                                             ("fifo", 0, 0)))
            return ("mknod", self._new_name(view), kind, major, minor)
        if name == "punch":
            return ("punch", self._any(view, files), rng.choice((0, 100, 4096, 8192)),
                    rng.choice((1, 4096, 10_000, 1 << 20)))
        if name == "fsync":
            return ("fsync", self._any(view, files), self._data(0, 2000), rng.random() < 0.5)
        if name == "symlink":
            return ("symlink", self._new_name(view), rng.choice(("target", "../up", "/abs/x", self._any(view))))
        if name == "link":
            src = self._any(view, ("file", "symlink", "fifo") if rng.random() < 0.9 else None)
            return ("link", src, self._new_name(view) if rng.random() < 0.85 else self._any(view))
        if name == "rename":
            return self._rename(view)
        if name == "chmod":
            return ("chmod", self._any(view), rng.choice(_MODES))
        if name == "chown":
            return ("chown", self._any(view), *rng.choice(_OWNERS))
        if name == "utime":
            t = lambda: rng.randint(10**9, 2 * 10**9) * 10**9 + rng.randint(0, 10**9 - 1)  # noqa: E731
            a, m = rng.choice(((t(), t()), ("now", "now"), ("omit", t()), (t(), "omit"), ("now", "omit"),
                               ("omit", "now")))
            return ("utime", self._any(view), a, m, rng.random() < 0.5)
        if name == "setxattr":
            return ("setxattr", self._any(view), rng.choice(_XNAMES), self._data(0, 200))
        if name == "removexattr":
            if self.xattrs_set and rng.random() < 0.6:
                return ("removexattr", *rng.choice(self.xattrs_set[-10:]))
            return ("removexattr", self._any(view), rng.choice(_XNAMES + ("user.comment",) * 3))
        if name == "read":
            return ("read", self._any(view, files, mutable=False))
        if name == "stat":
            return ("stat", self._any(view, mutable=False))
        return ("listdir", self._pick([r for r, i in view.items() if i.kind == "dir"]))

    def _rename(self, view) -> tuple:
        rng = self.rng
        flags = rng.choices((0, RENAME_NOREPLACE, RENAME_EXCHANGE), (6, 2, 2))[0]
        if self.kernel_safe:
            movable_dirs = [d for d in self.pure_dirs if d in view]
        else:
            movable_dirs = [r for r, i in view.items() if r and i.kind == "dir"]
        if movable_dirs and rng.random() < 0.3:
            src = self._pick(movable_dirs)
        else:
            src = self._any(view, ("file", "symlink", "fifo", "chardev"))
        if flags == RENAME_EXCHANGE or rng.random() < 0.3:
            dst = self._any(view)  # not a protected file: renamed over, it is copied up first
        else:
            dst = self._new_name(view)
        if flags == RENAME_EXCHANGE and self.kernel_safe and view.get(dst) and self._protected(view[dst]):
            flags = 0  # exchange copies the destination up too
        return ("rename", src, dst, flags)

    # -- learning from what happened
    def observe(self, op: tuple, result: tuple) -> None:
        if not result or result[0] != "ok":
            return
        name = op[0]
        if name == "mkdir":
            self.pure_dirs.add(op[1])
        elif name == "setxattr":
            self.xattrs_set.append((op[1], op[2]))
        elif name in ("unlink", "rmdir"):
            self.deleted.append(op[1])
            self._drop_below(op[1])
        elif name == "rename":
            src, dst, flags = op[1:]
            if src == dst:
                return
            if flags == RENAME_EXCHANGE:
                a = self._take_below(src)
                b = self._take_below(dst)
                self.pure_dirs |= {dst + r[len(src):] for r in a} | {src + r[len(dst):] for r in b}
            else:
                moved = self._take_below(src)
                self._drop_below(dst)
                self.pure_dirs |= {dst + r[len(src):] for r in moved}
                self.deleted.append(src)

    def _take_below(self, rel: str) -> set[str]:
        got = {d for d in self.pure_dirs if d == rel or d.startswith(rel + "/")}
        self.pure_dirs -= got
        return got

    def _drop_below(self, rel: str) -> None:
        self._take_below(rel)


def run_sequence(gen: OpGenerator, roots: dict[str, Path], view_of, count: int, log=None, soft=None):
    """Run count ops from gen on every root (name -> mount); view_of() gives the
    tree to pick from. Returns the list of (index, op, {name: result}) where the
    results differ (the caller decides), stopping at the first one. Results
    that differ only in Soft parts go to the list soft (if given) and do not stop."""
    for i in range(count):
        op = gen.next(view_of())
        results = {name: apply(root, op) for name, root in roots.items()}
        if log is not None:
            log.append((i, op, results))
        values = list(results.values())
        if any(v != values[0] for v in values[1:]):
            hard = [hard_part(v) for v in values]
            if soft is None or any(h != hard[0] for h in hard[1:]):
                return [(i, op, results)]
            soft.append((i, op, results))
        gen.observe(op, values[0])
    return []


# -- daemon processes, for the crash tests -------------------------------------------------

def daemon_pids(m) -> list[int]:
    """The fsd processes serving an FsdMount (not a fusermount3 helper)."""
    out = []
    for pid in m.pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if not comm.startswith("fusermount"):
            out.append(pid)
    return out


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io of a whole process (all its threads): rchar, wchar, ..."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def kill_and_detach(m, timeout: float = 10.0) -> None:
    """SIGKILL fsd's daemon (a crash), then lazily unmount the dead mount."""
    from . import mounts
    pids = daemon_pids(m)
    assert pids, f"no daemon process for {m.mnt}"
    for p in pids:
        os.kill(p, signal.SIGKILL)
    left = mounts.wait_exited(pids, timeout)
    assert not left, f"daemon {left} survived SIGKILL"
    r = subprocess.run(["fusermount3", "-uz", str(m.mnt)], capture_output=True, text=True)
    if mounts.is_mounted(m.mnt):
        subprocess.run(["umount", "-l", str(m.mnt)], capture_output=True, text=True)
    assert not mounts.is_mounted(m.mnt), f"dead mount {m.mnt} not detached: {r.stderr}"
    m.wait_gone(timeout)


def wait_until(cond, timeout: float, interval: float = 0.001):
    """Poll cond() until it returns a true value (returned) or timeout (None)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return None


def tree_files(root) -> dict[str, int]:
    """rel -> size of every regular file below root, on a real directory."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(p, root)] = st.st_size
    return out


def pattern(size: int, tag: bytes = b"") -> bytes:
    """Deterministic, incompressible-looking bytes (cheap to make)."""
    seed = hashlib.sha256(tag + str(size).encode()).digest()
    block = hashlib.sha512(seed).digest() * 64  # 4 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


def write_big(path, size: int, tag: bytes = b"big") -> str:
    """Write size bytes of varying content in 1 MiB steps; return its sha256."""
    h = hashlib.sha256()
    base = pattern(1 << 20, tag)
    with open(path, "wb") as f:
        done, i = 0, 0
        while done < size:
            chunk = (i.to_bytes(8, "little") + base[8:])[: size - done]
            f.write(chunk)
            h.update(chunk)
            done += len(chunk)
            i += 1
    return h.hexdigest()


# -- the concurrency stress worker ---------------------------------------------------------

# errnos a kernel overlay gives when processes race on one tree
RACE_ERRNOS = {"ENOENT", "EEXIST", "ENOTEMPTY", "ENOTDIR", "EISDIR"}


def stress(root: str, seed: int, seconds: float, dirs: int, files: int) -> dict:
    """Random writes, renames and deletions in root/d<i>/ for `seconds`; returns
    {"ops": n, "errors": {"op errno": count}, "unexpected": [descriptions]}."""
    rng = random.Random(seed)
    errors: dict[str, int] = {}
    unexpected: list[str] = []
    n = 0

    def f():
        return os.path.join(root, f"d{rng.randrange(dirs)}", f"f{rng.randrange(files)}")

    def d():
        return os.path.join(root, f"d{rng.randrange(dirs)}")

    def sub():
        return os.path.join(d(), f"s{rng.randrange(3)}")

    def wr(path, flags):
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, b"w%d-%d;" % (seed, n) * rng.randint(1, 300))
            if rng.random() < 0.1:
                os.fsync(fd)
        finally:
            os.close(fd)

    def rd(path):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            while os.read(fd, 1 << 16):
                pass
            os.fstat(fd)
        finally:
            os.close(fd)

    def listdir(path):
        for name in os.listdir(path):
            try:
                os.lstat(os.path.join(path, name))
            except FileNotFoundError:
                pass

    ops = [
        ("append", 10, lambda: wr(f(), os.O_WRONLY | os.O_APPEND)),
        ("write", 8, lambda: wr(f(), os.O_WRONLY)),
        ("create", 8, lambda: wr(f(), os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
        ("trunc", 4, lambda: wr(f(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)),
        ("read", 6, lambda: rd(f())),
        ("stat", 6, lambda: os.lstat(f())),
        ("chmod", 3, lambda: os.chmod(f(), rng.choice((0o644, 0o600)))),
        ("setxattr", 2, lambda: os.setxattr(f(), "user.s", b"%d" % n)),
        ("rename", 10, lambda: os.rename(f(), f())),
        ("rename_noreplace", 3, lambda: renameat2(f(), f(), RENAME_NOREPLACE)),
        ("rename_exchange", 3, lambda: renameat2(f(), f(), RENAME_EXCHANGE)),
        ("link", 3, lambda: os.link(f(), f(), follow_symlinks=False)),
        ("unlink", 8, lambda: os.unlink(f())),
        ("mkdir", 3, lambda: os.mkdir(sub())),
        ("rmdir", 3, lambda: os.rmdir(sub())),
        ("listdir", 4, lambda: listdir(d())),
        ("rename_dir", 1, lambda: os.rename(d(), d())),
    ]
    names = [o[0] for o in ops]
    weights = [o[1] for o in ops]
    fns = {o[0]: o[2] for o in ops}
    allowed = {name: set(RACE_ERRNOS) for name in names}
    allowed["rename_exchange"] |= {"EXDEV"}  # a merged directory in an exchange, as from the kernel
    allowed["rename_dir"] |= {"EINVAL"}  # d(i) into itself never happens, but a race may make one
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = rng.choices(names, weights)[0]
        n += 1
        try:
            fns[name]()
        except OSError as e:
            key = f"{name} {errname(e)}"
            errors[key] = errors.get(key, 0) + 1
            if errname(e) not in allowed[name]:
                unexpected.append(f"{key}: {e}")
        except Exception as e:  # noqa: BLE001 - report, don't die
            unexpected.append(f"{name}: {type(e).__name__}: {e}")
    return {"ops": n, "errors": errors, "unexpected": unexpected[:50]}


if __name__ == "__main__":
    if sys.argv[1] == "stress":
        root, seed, seconds, dirs, files = sys.argv[2:7]
        print(json.dumps(stress(root, int(seed), float(seconds), int(dirs), int(files))))
