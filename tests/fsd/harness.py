"""In-process tests of fsd: its Operations driven directly, with no FUSE mount.

The `overlay` fixture builds one mount's objects with fsd's own constructor
(`fsd.mount.Mount(params)`, options parsed by `fsd.params.parse_options` as
for `fsd -o ...`) on layer directories under tmp_path, and drives the
`Operations` object it holds with the pyfuse3 handler signatures only, as the
kernel would: so the tests stay valid however fsd arranges its insides.

    top, bottom = overlay.lowers(2)         # empty lower dirs, top first
    write(bottom, "d/f", "data")             # (support.layergen helpers)
    fs = await overlay.mount("metacopy=on")  # more -o options, if any
    await fs.write("d/f", b"new")            # calls that read like POSIX ones
    with fails(errno.ENOENT): await fs.stat("gone")

What the kernel does around a request is done here too: a path is looked up
one component at a time (each reply counted as a lookup, `forget_all` gives
them back as the kernel does when it drops its caches), modes of new objects
are masked by the caller's umask unless fsd asks to do that itself
(enable_dont_mask), a negative lookup reply is ENOENT, a read answered
with a range of a file descriptor gets that range's data (`read_fh`).

pyfuse3's functions that need a live FUSE session are replaced for the test
by recording fakes (`Session`): invalidations (and notify_store) are recorded,
`readdir_reply` fills a `Token` (with a room limit, for the offset tests),
get_sup_groups answers what `as_user(..., groups=)` said.

`HeldWorkerJobs` holds fsd's worker-thread jobs until released, so that a test
orders concurrent requests with events instead of timing.

At teardown every mount is closed and the upper and work area are checked by
support/fsck.py; a warning or error logged by fsd fails the test unless the
test said it expects it (`overlay.expect_log(regex)`).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
import re
import stat
from collections import Counter
from pathlib import Path

import pyfuse3
import pytest
import trio

from fsd.mount import Mount
from fsd.params import parse_options
from support import fsck
from support.layergen import make_layers

ROOT = pyfuse3.ROOT_INODE


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Stands in for pyfuse3.RequestContext: who makes a request."""

    uid: int
    gid: int
    pid: int
    umask: int = 0o022
    kill_suidgid: bool = False  # the kernel's kill flags (FUSE_HANDLE_KILLPRIV_V2)
    kill_sgid: bool = False


@dataclasses.dataclass
class Fields:
    """Stands in for pyfuse3.SetattrFields: what a setattr changes."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


@dataclasses.dataclass
class Token:
    """A readdir buffer: the entries replied, and room for `room` of them
    (None: any number)."""

    room: int | None = None
    entries: list[tuple[bytes, pyfuse3.EntryAttributes, int]] = dataclasses.field(default_factory=list)


class Session:
    """Recording fakes for pyfuse3's functions that need a live session."""

    def __init__(self):
        self.invalidated_inodes: list[tuple[int, bool]] = []
        self.invalidated_entries: list[tuple[int, bytes]] = []
        self.stored: list[tuple[int, int, bytes]] = []
        self.groups: dict[int, frozenset[int]] = {}
        self.passthrough = False  # what the kernel answered at INIT
        self.refuse_backings = False  # backing_open fails EPERM (an unprivileged daemon)
        self.backings: dict[int, int] = {}  # backing ids registered -> their fd
        self.closed_backings: list[int] = []
        self.backing_opens = 0
        self._backing_ids = itertools.count(1)

    FAKED = ("invalidate_inode", "invalidate_entry", "invalidate_entry_async", "notify_store",
             "readdir_reply", "get_sup_groups", "passthrough_granted", "backing_open",
             "backing_close")

    def install(self, monkeypatch) -> None:
        for name in self.FAKED:
            monkeypatch.setattr(pyfuse3, name, getattr(self, name))

    def invalidate_inode(self, inode, attr_only=False):
        self.invalidated_inodes.append((inode, attr_only))

    def invalidate_entry(self, inode_p, name, deleted=0):
        self.invalidated_entries.append((inode_p, name))

    async def invalidate_entry_async(self, inode_p, name, deleted=0, ignore_enoent=False):
        self.invalidated_entries.append((inode_p, name))

    def notify_store(self, inode, offset, data):
        self.stored.append((inode, offset, bytes(data)))

    @staticmethod
    def readdir_reply(token: Token, name, attr, next_id) -> bool:
        if token.room is not None and len(token.entries) >= token.room:
            return False
        token.entries.append((name, attr, next_id))
        return True

    def get_sup_groups(self, pid: int) -> set[int]:
        return set(self.groups.get(pid, ()))

    def passthrough_granted(self) -> bool:
        return self.passthrough

    def backing_open(self, fd: int) -> int:
        self.backing_opens += 1
        if not self.passthrough or self.refuse_backings:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        backing_id = next(self._backing_ids)
        self.backings[backing_id] = fd
        return backing_id

    def backing_close(self, backing_id: int) -> None:
        del self.backings[backing_id]
        self.closed_backings.append(backing_id)


class fails:
    """`with fails(errno.X):` - the request must fail with FUSEError(X)."""

    def __init__(self, code: int):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            raise AssertionError(f"no error; expected {errno.errorcode[self.code]}")
        if not issubclass(kind, pyfuse3.FUSEError):
            return False
        if exc.errno != self.code:
            raise AssertionError(f"{errno.errorcode.get(exc.errno, exc.errno)}; "
                                 f"expected {errno.errorcode[self.code]}") from exc
        return True


class HeldWorkerJobs:
    """Holds fsd's jobs for worker threads (trio.to_thread.run_sync: big copies,
    tree copies, the search for a file's hard links) until `release()`, so that
    a test orders concurrent requests with events, not timing.  `task`: hold
    only that task's jobs (None: every task's)."""

    def __init__(self, monkeypatch):
        self.waiting = trio.Event()  # a job is being held
        self.task = None
        self._released = trio.Event()
        self._run_sync = trio.to_thread.run_sync
        monkeypatch.setattr(trio.to_thread, "run_sync", self._held_run_sync)

    async def _held_run_sync(self, fn, *args, **kw):
        if not self._released.is_set() and self.task in (None, trio.lowlevel.current_task()):
            self.waiting.set()
            await self._released.wait()
        return await self._run_sync(fn, *args, **kw)

    def release(self) -> None:
        self._released.set()

    async def only_for(self, fn, *args) -> None:
        """await fn(*args), holding only this task's jobs (start it in a nursery)."""
        self.task = trio.lowlevel.current_task()
        await fn(*args)


def holds_no_data(path) -> bool:
    """Whether a real file is all hole (a metadata-only copy): SEEK_DATA finds
    nothing.  (Its st_blocks need not be 0: xattrs may take a block.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return True
        raise
    finally:
        os.close(fd)
    return False


def _b(name) -> bytes:
    return os.fsencode(name) if not isinstance(name, bytes) else name


def _split(path) -> tuple[bytes, bytes]:
    parent, _, name = _b(path).rstrip(b"/").rpartition(b"/")
    return parent, name


class InProcessMount:
    """One mount's Operations, called as the kernel would for POSIX calls on
    paths relative to the mount root (str or bytes)."""

    def __init__(self, mount: Mount, session: Session, ctx: Ctx, held: Counter):
        self.mount = mount
        self.ops = mount.ops
        self.session = session
        self.ctx = ctx
        self.held = held  # lookups the kernel holds, by inode

    def as_user(self, uid: int, gid: int, groups=(), umask: int = 0o022) -> "InProcessMount":
        """The same mount, with requests made by another caller (whose
        supplementary groups pyfuse3.get_sup_groups will report)."""
        pid = 100000 + len(self.session.groups)
        self.session.groups[pid] = frozenset(groups)
        return InProcessMount(self.mount, self.session, Ctx(uid, gid, pid, umask), self.held)

    def _entry(self, attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        self.held[attr.st_ino] += 1
        return attr

    # --- names ------------------------------------------------------------------

    async def lookup(self, path) -> pyfuse3.EntryAttributes:
        """Look up every component of path, as the kernel's path walk does; the
        last one's entry."""
        attr = None
        inode = ROOT
        for part in [p for p in _b(path).split(b"/") if p]:
            if attr is not None and not stat.S_ISDIR(attr.st_mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)  # the kernel's path walk stops here
            attr = await self.ops.lookup(inode, part, self.ctx)
            if attr.st_ino == 0:
                raise pyfuse3.FUSEError(errno.ENOENT)  # a negative entry
            self._entry(attr)
            inode = attr.st_ino
        return attr if attr is not None else await self.ops.getattr(ROOT, self.ctx)

    async def ino(self, path) -> int:
        return (await self.lookup(path)).st_ino

    async def _parent(self, path) -> tuple[int, bytes]:
        parent, name = _split(path)
        return await self.ino(parent), name

    async def stat(self, path) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.ino(path), self.ctx)

    async def exists(self, path) -> bool:
        try:
            await self.lookup(path)
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    async def forget_all(self) -> None:
        """Give back every lookup, as the kernel does when it drops its caches."""
        pending = list(self.held.items())
        self.held.clear()
        await self.ops.forget(pending)

    # --- making and removing -----------------------------------------------------

    def _as_sent(self, mode: int) -> int:
        """A new object's mode as the kernel sends it: without the umask's bits,
        unless fsd applies the umask itself (FUSE_CAP_DONT_MASK)."""
        return mode if self.ops.enable_dont_mask else mode & ~self.ctx.umask

    async def create(self, path, data: bytes = b"", mode: int = 0o644) -> pyfuse3.EntryAttributes:
        parent, name = await self._parent(path)
        info, attr = await self.ops.create(parent, name, self._as_sent(mode), os.O_WRONLY | os.O_CREAT,
                                           self.ctx)
        self._entry(attr)
        try:
            if data:
                await self.ops.write(info.fh, 0, data)
        finally:
            await self.ops.release(info.fh)
        return attr

    async def mkdir(self, path, mode: int = 0o755) -> pyfuse3.EntryAttributes:
        parent, name = await self._parent(path)
        return self._entry(await self.ops.mkdir(parent, name, self._as_sent(mode), self.ctx))

    async def mknod(self, path, mode: int, rdev: int = 0) -> pyfuse3.EntryAttributes:
        parent, name = await self._parent(path)
        return self._entry(await self.ops.mknod(parent, name, self._as_sent(mode), rdev, self.ctx))

    async def symlink(self, target, path) -> pyfuse3.EntryAttributes:
        parent, name = await self._parent(path)
        return self._entry(await self.ops.symlink(parent, name, _b(target), self.ctx))

    async def link(self, src, dst) -> pyfuse3.EntryAttributes:
        inode = await self.ino(src)
        parent, name = await self._parent(dst)
        return self._entry(await self.ops.link(inode, parent, name, self.ctx))

    async def readlink(self, path) -> bytes:
        return await self.ops.readlink(await self.ino(path), self.ctx)

    async def unlink(self, path) -> None:
        parent, name = await self._parent(path)
        await self.ops.unlink(parent, name, self.ctx)

    async def rmdir(self, path) -> None:
        parent, name = await self._parent(path)
        await self.ops.rmdir(parent, name, self.ctx)

    async def rename(self, src, dst, flags: int = 0) -> None:
        p1, n1 = await self._parent(src)
        p2, n2 = await self._parent(dst)
        await self.ops.rename(p1, n1, p2, n2, flags, self.ctx)

    # --- data ----------------------------------------------------------------------

    async def open(self, path, flags: int = os.O_RDONLY) -> int:
        return (await self.ops.open(await self.ino(path), flags, self.ctx)).fh

    async def read_fh(self, fh: int, offset: int, size: int) -> bytes:
        """One read request: the data the kernel gets.  A reply of bytes is
        the data; an `FdRange` is read as libfuse reads it, at once (its
        descriptor may close with the handle): one pread(2) of at most the
        size asked, an error of it the request's."""
        reply = await self.ops.read(fh, offset, size)
        if not isinstance(reply, pyfuse3.FdRange):
            return bytes(reply)
        try:
            return os.pread(reply.fd, min(reply.size, size), reply.offset)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def read(self, path, size: int = 1 << 20, offset: int = 0) -> bytes:
        fh = await self.open(path)
        try:
            return await self.read_fh(fh, offset, size)
        finally:
            await self.ops.release(fh)

    async def write(self, path, data: bytes, offset: int = 0, flags: int = os.O_WRONLY) -> int:
        fh = await self.open(path, flags)
        try:
            return await self.ops.write(fh, offset, data)
        finally:
            await self.ops.release(fh)

    # --- listings ------------------------------------------------------------------

    async def opendir(self, path) -> int:
        return (await self.ops.opendir(await self.ino(path), self.ctx)).fh

    async def readdir(self, fh: int, start: int = 0, room: int | None = None) -> list[tuple[bytes, int, int]]:
        """One readdir request: (name, inode, next offset) of what fitted."""
        token = Token(room)
        await self.ops.readdir(fh, start, token)
        for name, attr, _ in token.entries:
            if name not in (b".", b".."):
                self.held[attr.st_ino] += 1
        return [(name, attr.st_ino, nxt) for name, attr, nxt in token.entries]

    async def listdir(self, path) -> list[bytes]:
        """The names of a directory, without . and .., in the order given."""
        fh = await self.opendir(path)
        try:
            names = [name for name, _, _ in await self.readdir(fh)]
        finally:
            await self.ops.releasedir(fh)
        return [n for n in names if n not in (b".", b"..")]

    # --- attributes ------------------------------------------------------------------

    async def setattr(self, path, fields: Fields, **values) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        for name, value in values.items():
            setattr(attr, name, value)
        return await self.ops.setattr(await self.ino(path), attr, fields, None, self.ctx)

    async def chmod(self, path, mode: int) -> pyfuse3.EntryAttributes:
        return await self.setattr(path, Fields(update_mode=True), st_mode=stat.S_IMODE(mode))

    async def chown(self, path, uid: int, gid: int) -> pyfuse3.EntryAttributes:
        return await self.setattr(path, Fields(update_uid=uid != -1, update_gid=gid != -1),
                                  st_uid=max(uid, 0), st_gid=max(gid, 0))

    async def utimens(self, path, atime_ns: int, mtime_ns: int) -> pyfuse3.EntryAttributes:
        return await self.setattr(path, Fields(update_atime=True, update_mtime=True),
                                  st_atime_ns=atime_ns, st_mtime_ns=mtime_ns)

    async def truncate(self, path, size: int) -> pyfuse3.EntryAttributes:
        return await self.setattr(path, Fields(update_size=True), st_size=size)

    async def getxattr(self, path, name) -> bytes:
        return await self.ops.getxattr(await self.ino(path), _b(name), self.ctx)

    async def listxattr(self, path) -> list[bytes]:
        return list(await self.ops.listxattr(await self.ino(path), self.ctx))

    async def setxattr(self, path, name, value: bytes) -> None:
        await self.ops.setxattr(await self.ino(path), _b(name), value, self.ctx)

    async def removexattr(self, path, name) -> None:
        await self.ops.removexattr(await self.ino(path), _b(name), self.ctx)

    async def statfs(self):
        return await self.ops.statfs(self.ctx)


class _LogRecorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class Overlay:
    """The `overlay` fixture: layer dirs under tmp_path and the mounts on them."""

    def __init__(self, root: Path, session: Session):
        self.root = root
        self.session = session
        self.upper = root / "upper"
        self.work = root / "work"
        self.mountpoint = root / "mnt"
        for d in (self.upper, self.work, self.mountpoint):
            d.mkdir()
        self.layers: list[Path] = []
        self.mounts: list[Mount] = []
        self.expected_log: list[str] = []

    def lowers(self, count: int) -> list[Path]:
        """count empty lower dirs, top first."""
        self.layers = make_layers(self.root / "lowers", count)
        return self.layers

    def use_lowers(self, layers: list[Path]) -> None:
        """Mount these lower dirs (top first), made elsewhere (support.layergen)."""
        self.layers = list(layers)

    def params(self, *options: str, upper: bool = True):
        dirs = f"lowerdir={':'.join(str(p) for p in self.layers)}"
        if upper:
            dirs += f",upperdir={self.upper},workdir={self.work}"
        return parse_options([dirs, *options], str(self.mountpoint))

    async def mount(self, *options: str, upper: bool = True, ctx: Ctx | None = None) -> InProcessMount:
        """Build a mount's objects as fsd does (recovery of the work area
        included), in a worker thread because the constructor runs its own trio
        loop, then tell its Operations the session is up (FUSE_INIT)."""
        params = self.params(*options, upper=upper)
        mount = await trio.to_thread.run_sync(Mount, params)
        self.mounts.append(mount)
        mount.ops.init()
        ctx = ctx or Ctx(os.getuid(), os.getgid(), os.getpid())
        return InProcessMount(mount, self.session, ctx, Counter())

    def unmount(self, fs: InProcessMount) -> None:
        """Close a mount (also what a crash leaves: the work area as it is)."""
        self.mounts.remove(fs.mount)
        fs.mount.close()

    async def remount(self, fs: InProcessMount, *options: str) -> InProcessMount:
        self.unmount(fs)
        return await self.mount(*options, ctx=fs.ctx)

    def expect_log(self, pattern: str) -> None:
        """A warning or error matching pattern is part of the test."""
        self.expected_log.append(pattern)

    def unexpected_log(self, records: list[logging.LogRecord]) -> list[str]:
        lines = [f"{r.levelname} {r.getMessage()}" for r in records]
        return [ln for ln in lines if not any(re.search(p, ln) for p in self.expected_log)]

    def close(self) -> None:
        while self.mounts:
            self.mounts.pop().close()


@pytest.fixture
def overlay(tmp_path, monkeypatch):
    session = Session()
    session.install(monkeypatch)
    recorder = _LogRecorder()
    logger = logging.getLogger("fsd")
    logger.addHandler(recorder)
    ov = Overlay(tmp_path, session)
    try:
        yield ov
    finally:
        logger.removeHandler(recorder)
        ov.close()
    unexpected = ov.unexpected_log(recorder.records)
    if unexpected:
        pytest.fail("fsd logged:\n" + "\n".join(unexpected[:20]), pytrace=False)
    found = fsck.problems(ov.layers, ov.upper, ov.work) if (ov.work / "fsd").is_dir() else []
    if found:
        pytest.fail("fsck of the upper and work area:\n" + "\n".join(found), pytrace=False)
