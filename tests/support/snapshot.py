"""Record a mounted tree and compare two records.

snapshot(root) walks root without following symlinks (os.scandir + os.lstat)
and records per path (relative, "." for root): type, permission bits,
owner, mtime, size and link count (non-directories), a SHA-256 of the content
(regular files, read through the mount), the link target, the device number,
and the xattrs (name -> value, listxattr/getxattr with follow_symlinks=False).
Hard links are recorded as groups of paths that share st_ino among
non-directories, so that two mounts with different inode numbers compare.

It also records what only makes sense inside one mount and is checked by
invariant_problems(): readdir's d_ino against lstat's st_ino, st_dev against
the root's, inode numbers shared by unrelated objects, and "phantoms" (names
readdir lists but lookup does not find). The kernel overlay lists whiteouts
of a directory that exists in one layer only (it passes such a directory's
readdir straight through); fsd must never show a marker, so compare() ignores
phantoms and invariant_problems() reports them.

compare(expected, got) returns readable difference lines; [] means equal.
access_as(root, uid, gid, paths) records what an unprivileged user may do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field, fields

_KINDS = {
    stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: str  # permission bits, octal
    uid: int
    gid: int
    size: int | None = None  # non-directories
    nlink: int | None = None  # non-directories
    sha256: str | None = None  # regular files; "error: ..." when reading failed
    target: str | None = None  # symlinks
    rdev: str | None = None  # devices, "major:minor"
    mtime_ns: int | None = None
    xattrs: tuple = ()  # ((name, value-repr), ...) sorted; or (("error", "..."),)


@dataclass
class Snapshot:
    root: str
    entries: dict[str, Entry] = field(default_factory=dict)
    ino: dict[str, int] = field(default_factory=dict)  # path -> st_ino
    dev: dict[str, int] = field(default_factory=dict)  # path -> st_dev
    d_ino: dict[str, int] = field(default_factory=dict)  # path -> d_ino from readdir
    d_kind: dict[str, str] = field(default_factory=dict)  # path -> dir/symlink/file/other by d_type
    dir_nlink: dict[str, int] = field(default_factory=dict)  # directories' st_nlink (not compared)
    phantoms: list[str] = field(default_factory=list)  # listed by readdir, lstat ENOENT
    errors: list[str] = field(default_factory=list)  # readdir/lstat failures other than that

    def hardlink_groups(self) -> list[tuple[str, ...]]:
        by_ino: dict[int, list[str]] = {}
        for path, e in self.entries.items():
            if e.kind != "dir":
                by_ino.setdefault(self.ino[path], []).append(path)
        return sorted(tuple(sorted(g)) for g in by_ino.values() if len(g) > 1)

    def names(self) -> set[str]:
        return set(self.entries)


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def _hash(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        return f"error: {_errname(e)}"
    return h.hexdigest()


def _xattrs(path: str) -> tuple:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP,):
            return ()
        return (("error", f"listxattr {_errname(e)}"),)
    out = []
    for n in sorted(names):
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
            out.append((n, v if len(v) <= 64 else f"{len(v)} bytes sha256 {hashlib.sha256(v).hexdigest()[:16]}"))
        except OSError as e:
            out.append((n, f"error: getxattr {_errname(e)}"))
    return tuple(out)


def _entry(path: str, st: os.stat_result, contents: bool) -> Entry:
    fmt = stat.S_IFMT(st.st_mode)
    kind = _KINDS.get(fmt, f"type-{fmt:o}")
    e = dict(kind=kind, mode=f"{stat.S_IMODE(st.st_mode):04o}", uid=st.st_uid, gid=st.st_gid,
             mtime_ns=st.st_mtime_ns, xattrs=_xattrs(path))
    if kind != "dir":
        e["size"] = st.st_size
        e["nlink"] = st.st_nlink
    if kind == "file" and contents:
        e["sha256"] = _hash(path)
    elif kind == "symlink":
        try:
            e["target"] = os.readlink(path)
        except OSError as err:
            e["target"] = f"error: {_errname(err)}"
    elif kind in ("chardev", "blockdev"):
        e["rdev"] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return Entry(**e)


def _d_kind(e: os.DirEntry) -> str:
    """The type readdir's d_type says (DirEntry falls back to lstat for DT_UNKNOWN)."""
    if e.is_symlink():
        return "symlink"
    if e.is_dir(follow_symlinks=False):
        return "dir"
    if e.is_file(follow_symlinks=False):
        return "file"
    return "other"


def snapshot(root, contents: bool = True) -> Snapshot:
    """Walk root (a mount or plain dir) and record it; see module doc."""
    root = os.fspath(root)
    snap = Snapshot(root)
    st = os.lstat(root)
    snap.entries["."] = _entry(root, st, contents)
    snap.ino["."] = st.st_ino
    snap.dev["."] = st.st_dev
    snap.dir_nlink["."] = st.st_nlink
    _walk(snap, root, "", contents)
    return snap


def _walk(snap: Snapshot, root: str, rel: str, contents: bool):
    dirpath = os.path.join(root, rel) if rel else root
    try:
        with os.scandir(dirpath) as it:
            listed = [(e.name, e.inode(), _d_kind(e)) for e in it]
    except OSError as e:
        snap.errors.append(f"scandir {rel or '.'}: {_errname(e)}")
        return
    names = [n for n, _, _ in listed]
    if len(set(names)) != len(names):
        dups = sorted({n for n in names if names.count(n) > 1})
        snap.errors.append(f"readdir {rel or '.'} lists names more than once: {dups[:10]}")
    for name, d_ino, d_kind in sorted(set(listed)):
        child = f"{rel}/{name}" if rel else name
        path = os.path.join(root, child)
        try:
            st = os.lstat(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                snap.phantoms.append(child)
            else:
                snap.errors.append(f"lstat {child}: {_errname(e)}")
            continue
        snap.entries[child] = _entry(path, st, contents)
        snap.ino[child] = st.st_ino
        snap.dev[child] = st.st_dev
        snap.d_ino[child] = d_ino
        snap.d_kind[child] = d_kind
        if stat.S_ISDIR(st.st_mode):
            snap.dir_nlink[child] = st.st_nlink
            _walk(snap, root, child, contents)


def invariant_problems(snap: Snapshot, check_d_ino: bool = True) -> list[str]:
    """What is wrong inside one mount: phantoms, errors, d_ino, st_dev, shared inodes."""
    out = [f"readdir lists {p!r} but lstat says ENOENT" for p in snap.phantoms]
    out += snap.errors
    if check_d_ino:
        out += [f"{p}: readdir d_ino {d} != lstat st_ino {snap.ino[p]}"
                for p, d in sorted(snap.d_ino.items()) if d != snap.ino[p]]
    for p, dk in sorted(snap.d_kind.items()):
        kind = snap.entries[p].kind
        if dk != (kind if kind in ("dir", "symlink", "file") else "other"):
            out.append(f"{p}: readdir d_type says {dk}, lstat says {kind}")
    subdirs: dict[str, int] = {p: 0 for p in snap.dir_nlink}
    for p, e in snap.entries.items():
        if e.kind == "dir" and p != ".":
            parent = p.rpartition("/")[0] or "."
            subdirs[parent] = subdirs.get(parent, 0) + 1
    for p, n in sorted(snap.dir_nlink.items()):  # find(1) trusts nlink - 2 as the subdir count
        if n != 1 and n < 2 + subdirs.get(p, 0):
            out.append(f"{p}: directory st_nlink {n} < 2 + {subdirs[p]} subdirectories (and not 1)")
    root_dev = snap.dev["."]
    out += [f"{p}: st_dev {d} != mount root's {root_dev}" for p, d in sorted(snap.dev.items()) if d != root_dev]
    by_ino: dict[int, list[str]] = {}
    for p, ino in snap.ino.items():
        by_ino.setdefault(ino, []).append(p)
    for ino, paths in sorted(by_ino.items()):
        if len(paths) > 1:
            kinds = {snap.entries[p].kind for p in paths}
            if "dir" in kinds or len(kinds) > 1:
                out.append(f"st_ino {ino} shared by unrelated objects: {sorted(paths)[:6]}")
            else:
                same = {(e.size, e.sha256, e.target, e.mode, e.uid)
                        for e in (snap.entries[p] for p in paths)}
                if len(same) > 1:
                    out.append(f"st_ino {ino} shared by paths with different content: {sorted(paths)[:6]}")
    return out


def compare(expected: Snapshot, got: Snapshot, expected_name: str = "expected",
            got_name: str = "got", limit: int = 60) -> list[str]:
    """Differences between two snapshots (phantoms ignored); [] if equal."""
    out = []
    exp_names, got_names = expected.names(), got.names()
    for p in sorted(exp_names - got_names):
        out.append(f"only in {expected_name}: {p!r} ({expected.entries[p].kind})")
    for p in sorted(got_names - exp_names):
        out.append(f"only in {got_name}: {p!r} ({got.entries[p].kind})")
    for p in sorted(exp_names & got_names):
        a, b = expected.entries[p], got.entries[p]
        if a != b:
            diffs = [f"{f.name} {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
                     for f in fields(Entry) if getattr(a, f.name) != getattr(b, f.name)]
            out.append(f"{p!r}: " + "; ".join(diffs) + f"  ({expected_name} != {got_name})")
    ga, gb = set(expected.hardlink_groups()), set(got.hardlink_groups())
    for g in sorted(ga - gb):
        out.append(f"hard-link group only in {expected_name}: {list(g)}")
    for g in sorted(gb - ga):
        out.append(f"hard-link group only in {got_name}: {list(g)}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more differences"]
    return out


def access_as(root, uid: int, gid: int, paths) -> dict[str, tuple[str, ...]]:
    """What an unprivileged user can do with each path under root (a mount):
    path -> errno names (or "ok") for lstat, and for directories opendir+readdir,
    for regular files open(O_RDONLY)+read, and faccessat(R_OK, W_OK, X_OK).

    Runs in a forked child that opens root first and then drops to uid/gid, so
    the directories above root (pytest's tmp dirs are 0700) do not matter."""
    paths = sorted(paths)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = {p: _access_one(dfd, p) for p in paths}
            with os.fdopen(wfd, "w") as f:
                json.dump(out, f)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"access_as child failed (status {status})"
    return {k: tuple(v) for k, v in json.loads(data).items()}


def _try(fn) -> str:
    try:
        fn()
    except OSError as e:
        return _errname(e)
    return "ok"


def _access_one(dfd: int, rel: str) -> list[str]:
    rel = "." if rel == "." else rel
    res = []
    try:
        st = os.stat(rel, dir_fd=dfd, follow_symlinks=False)
        res.append("ok")
    except OSError as e:
        return [_errname(e)]

    def readdir():
        fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
        try:
            os.listdir(fd)
        finally:
            os.close(fd)

    def read():
        fd = os.open(rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)

    if stat.S_ISDIR(st.st_mode):
        res.append(_try(readdir))
    elif stat.S_ISREG(st.st_mode):
        res.append(_try(read))
    if not stat.S_ISLNK(st.st_mode):
        for mode in (os.R_OK, os.W_OK, os.X_OK):
            res.append("ok" if os.access(rel, mode, dir_fd=dfd, follow_symlinks=False) else "denied")
    return res
