"""Open files: every handle is a real file descriptor on the upper or a lower.

Opening for writing (or with O_TRUNC) copies the file up first; O_TRUNC copies
no data.  A lower file's content is opened through lazy.py when its layer is
lazy: fetched first.  Reads and writes go straight to the real descriptor, so a
file unlinked while open keeps working through it.  O_DIRECT stays on the real
descriptor, so the layer's filesystem applies its rules (ext4: EINVAL for an
unaligned offset or size, as through the kernel overlay); the data written
through such a handle passes through page-aligned buffers, which O_DIRECT wants
too, and libfuse reads into a page-aligned one.

Atimes: a lower file is read with O_NOATIME (a layer never changes, as under the
kernel overlay); an upper one without, so that its filesystem updates the atime
by its own rules, unless the mount is noatime.  fsync is a no-op under fsync=0
or volatile, and otherwise runs in a worker thread (`_in_worker`).

Passthrough (kernel >= 6.9, CAP_SYS_ADMIN: rootful mounts): a handle is opened
in passthrough mode where that is correct, so that the kernel reads, writes and
maps it through the real file and sends fsd no read or write for it.  The
kernel fixes that backing file at open, so a handle on a lower file of a mount
with an upper stays on the normal path: it must move to the upper copy after a
copy-up (`fd`).  On a mount without an upper nothing is ever copied up: its
lower files pass through.  Upper files pass through with `upper_passthrough`
only: writes through such a handle bypass fsd, and so the write gate of a
freeze (freeze.py) and the quota (none is kept then).  The kernel fails an
open that mixes passthrough and normal handles on one inode, or two backing
files: a node with normal handles open gets only normal ones, and all
passthrough handles of a node share one backing id.  The first failure to
register a backing file (an unprivileged daemon, an upper on a stacked
filesystem, a kernel without it) turns passthrough off for the mount.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import mmap
import os

import pyfuse3
import trio

from .copy_up import CopyUp
from .errors import fail
from .inode import Node
from .layer import reopen
from .overlay import Overlay
from .watchdog import waiting

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_PUNCH_HOLE = 0x02
_DROP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY
log = logging.getLogger("fsd")


async def _in_worker(fn, *args):
    """fn(*args) in one of trio's cached worker threads, within the limit of
    trio.to_thread's default limiter, the calling task waiting for it and not
    cancellable meanwhile (as trio.to_thread.run_sync by default).  What
    to_thread.run_sync does besides costs an fsync request about as much CPU
    as the switch of threads itself: a trip through the scheduler to take the
    limiter, a copy of the context, the thread named and renamed (two prctl)
    on every call.  Only for a call that never calls back into trio: the
    copies of big files and trees (copy_up.py) stay on trio.to_thread, whose
    threads may (`trio.from_thread`, for a lazy file: lazy.open_in_thread)."""
    limiter = trio.to_thread.current_default_thread_limiter()
    borrower = object()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result):
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(functools.partial(fn, *args), deliver)
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
    finally:
        limiter.release_on_behalf_of(borrower)


def _aligned(size: int) -> mmap.mmap:
    """A page-aligned buffer of at least size bytes, for O_DIRECT."""
    return mmap.mmap(-1, max(size, 1))


class Handle:
    __slots__ = ("fd", "node", "flags", "on_upper", "passthrough")

    def __init__(self, fd: int, node: Node, flags: int, on_upper: bool, passthrough: bool):
        self.fd = fd
        self.node = node
        self.flags = flags
        self.on_upper = on_upper
        self.passthrough = passthrough


class Backing:
    """The backing file of a node's passthrough handles: its id, and how many
    handles use it."""
    __slots__ = ("id", "handles")

    def __init__(self, backing_id: int):
        self.id = backing_id
        self.handles = 0


class FileOps:
    def __init__(self, ovl: Overlay, copyup: CopyUp):
        self.ovl = ovl
        self.table = ovl.table
        self.copyup = copyup
        self.lazy = ovl.lazy
        self.noatime = ovl.noatime
        self.handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        # passthrough: None until the kernel's answer at INIT is known
        self.passthrough: bool | None = None
        self.backings: dict[Node, Backing] = {}  # nodes with passthrough handles
        # nodes with handles on the normal path, counted while passthrough is on
        self.normal_opens: dict[Node, int] = {}

    async def open(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            if not self.ovl.writable:
                raise fail(errno.EROFS)
            await self.copyup.ensure(node, data=not flags & os.O_TRUNC)
        flags &= ~_DROP_FLAGS
        if node.gone:
            fd, on_upper = self._reopen(node, flags)
        else:
            on_upper = node.upper and not node.metacopy
            layer = self.ovl.upper if on_upper else self.ovl.lowers[node.lower_index]
            if layer.index in self.lazy.sockets:  # no await for other layers: they cost nothing
                fd = await self.lazy.open(layer, node.path(), self._real_flags(flags, on_upper))
            else:
                fd = layer.open(node.path(), self._real_flags(flags, on_upper))
        return self.adopt(node, fd, flags, on_upper)

    def adopt(self, node: Node, fd: int, flags: int, on_upper: bool = True) -> pyfuse3.FileInfo:
        """A handle on fd, a descriptor of node's real file opened as flags ask
        (by `open`, or O_TMPFILE by `DirOps.tmpfile`); it is the handle's now."""
        fh = next(self._ids)
        backing = self._backing(node, fd, on_upper)
        self.handles[fh] = Handle(fd, node, flags & ~(_DROP_FLAGS | os.O_TRUNC), on_upper,
                                  backing is not None)
        self.table.opened(node, fd, on_upper)
        if backing is None:
            if self.passthrough:
                self.normal_opens[node] = self.normal_opens.get(node, 0) + 1
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        backing.handles += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, backing_id=backing.id)

    def _backing(self, node: Node, fd: int, on_upper: bool) -> Backing | None:
        """The backing file for a new handle of node on fd, registering fd as
        the node's if it has none yet; None: the normal path (see the module's
        docstring for when)."""
        backing = self.backings.get(node)
        if backing is not None:  # even once passthrough is off: the node's mode
            return backing
        if self.passthrough is None:
            self.passthrough = pyfuse3.passthrough_granted()
        if (not self.passthrough or node in self.normal_opens
                or not (self.ovl.upper is None or on_upper and self.ovl.upper_passthrough)):
            return None
        try:
            backing = self.backings[node] = Backing(pyfuse3.backing_open(fd))
        except OSError as e:
            log.info("passthrough off: the kernel refused a backing file (%s)", e)
            self.passthrough = False
            return None
        return backing

    def _reopen(self, node: Node, flags: int) -> tuple[int, bool]:
        """Open a file whose last name is gone, which the kernel can still open
        while a descriptor of it is open (/proc/PID/fd/N, open_by_handle_at):
        through a descriptor fsd holds on it for that one.  ENOENT if there is
        none, and for writing when that one is on a lower file (no copy-up
        without a name)."""
        held = node.held_fd()
        if held is None or ((flags & os.O_ACCMODE) != os.O_RDONLY and not node.fds[held]):
            raise fail(errno.ENOENT)
        on_upper = node.fds[held]
        return reopen(held, self._real_flags(flags, on_upper)), on_upper

    def fd(self, fh: int) -> int:
        """The real descriptor of a handle.  A handle opened on a lower file moves
        to the upper copy once there is one, so that it reads what was written
        through other descriptors since (as on the kernel overlay)."""
        handle = self.handles[fh]
        node = handle.node
        if not handle.on_upper and node.upper and not node.metacopy and not node.gone:
            fd = self.ovl.upper.open(node.path(), self._real_flags(handle.flags, True))
            self.table.closed(node, handle.fd)
            os.close(handle.fd)
            handle.fd, handle.on_upper = fd, True
            self.table.opened(node, fd, True)
        return handle.fd

    def create_flags(self, flags: int) -> int:
        """The real open flags of a new upper file that create(2) opens with flags
        (without O_CREAT and O_EXCL: the maker adds them); its descriptor then
        goes to `adopt` as `open` would have opened it."""
        return self._real_flags(flags & ~_DROP_FLAGS, True)

    def _real_flags(self, flags: int, on_upper: bool) -> int:
        """The open flags of a real file (Layer.open drops O_NOATIME where the
        daemon may not use it)."""
        return flags | os.O_NOATIME if self.noatime or not on_upper else flags

    def read(self, fh: int, offset: int, size: int) -> pyfuse3.FdRange:
        """The range of the real file that answers the read: libfuse reads it
        into the reply (or splices it there) as soon as this returns, while
        the descriptor is still the handle's; the data never passes through
        Python.  A short read at the end, an error of the real file (EINVAL
        of an unaligned O_DIRECT read) reach the kernel as from pread(2)."""
        return pyfuse3.FdRange(self.fd(fh), offset, size)

    def _pwrite(self, fh: int, fd: int, data: bytes, offset: int) -> int:
        if not self.handles[fh].flags & os.O_DIRECT:
            return os.pwrite(fd, data, offset)
        buf = _aligned(len(data))
        buf.write(data)
        return os.pwrite(fd, memoryview(buf)[:len(data)], offset)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        fd = self.fd(fh)
        quota = self.ovl.quota
        if quota is None:
            return self._pwrite(fh, fd, data, offset)
        size = quota.write_size(os.fstat(fd), offset, len(data))
        if size == 0:
            raise fail(errno.EDQUOT)
        written = self._pwrite(fh, fd, data[:size] if size < len(data) else data, offset)
        quota.record(os.fstat(fd))
        return written

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on the real file, punch-hole and keep-size included."""
        fd = self.fd(fh)
        quota = self.ovl.quota
        if quota is not None and not mode & FALLOC_FL_PUNCH_HOLE:
            quota.check(length)
        if _libc.fallocate(fd, mode, offset, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        if quota is not None:
            quota.record(os.fstat(fd))

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE, answered by the real file."""
        return os.lseek(self.fd(fh), offset, whence)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.ovl.fsync:
            with waiting("a worker thread syncing the file"):
                await _in_worker(os.fdatasync if datasync else os.fsync, self.fd(fh))

    async def fsync_dir(self, node: Node) -> None:
        """Sync a directory's upper entries (a lower one never changes)."""
        if not self.ovl.fsync or not node.upper:
            return
        fd = self.ovl.upper.open(node.path(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with waiting("a worker thread syncing the directory"):
                await _in_worker(os.fsync, fd)
        finally:
            os.close(fd)

    def release(self, fh: int) -> None:
        """Close a handle.  An upper file with no link left goes with its last
        descriptor: its blocks leave the quota then (an O_TMPFILE never linked,
        or a file written after its last name went)."""
        handle = self.handles.pop(fh)
        node = handle.node
        quota = self.ovl.quota
        if quota is not None and handle.on_upper and node.gone:
            st = os.fstat(handle.fd)
            if st.st_nlink == 0:
                quota.released(st)
        if handle.passthrough:
            backing = self.backings[node]
            backing.handles -= 1
            if not backing.handles:
                del self.backings[node]
                pyfuse3.backing_close(backing.id)
        elif node in self.normal_opens:
            if self.normal_opens[node] == 1:
                del self.normal_opens[node]
            else:
                self.normal_opens[node] -= 1
        os.close(handle.fd)
        self.table.closed(node, handle.fd)
