"""pyfuse3 as scripts/install builds it, with the patches under patches/.

Stock pyfuse3 3.5.0 leaves the FUSE fallocate and lseek requests unanswered
by the filesystem (libfuse replies ENOSYS): the kernel then fails every
fallocate(2) on the mount with EOPNOTSUPP, and lseek(SEEK_HOLE) finds a hole
only at the end of the file. patches/pyfuse3-3.5.0-fallocate-lseek.patch adds
Operations.fallocate(fh, mode, offset, length) and Operations.lseek(fh, offset,
whence). The results are checked on the backing file: blocks freed, zeros
read, the holes that lseek reports.

Stock opendir can only return a file handle, so the kernel never caches a
directory listing. patches/pyfuse3-3.5.0-opendir-cache.patch lets it return a
FileInfo whose cache_readdir and keep_cache become FOPEN_CACHE_DIR and
FOPEN_KEEP_CACHE: a second listing of an unchanged directory is then served by
the kernel. The results are the daemon's own counts of opendir and readdir
requests, read through the CALLS_XATTR of the mount's root.

With FUSE_HANDLE_KILLPRIV_V2 the kernel stops asking for security.capability
before every write and tells the file system which requests must remove set-id
bits; libfuse 3.14 can neither ask for it nor pass the flags on.
patches/pyfuse3-3.5.0-killpriv.patch does both for a file system that sets
Operations.handle_killpriv_v2 (in this passthrough: "killpriv" on the command
line). The results are the requests the daemon saw: how many getxattr of
security.capability, and the kill flags of each write, open, setattr and
setxattr, read through CALLS_XATTR as well.

libfuse 3.14 answers FUSE_TMPFILE itself (ENOSYS), so open(2) with O_TMPFILE
fails EOPNOTSUPP; patches/pyfuse3-3.5.0-tmpfile.patch adds Operations.tmpfile,
which this passthrough answers with an O_TMPFILE file in the backing directory.

Stock pyfuse3 spends most of a request's cost around the request: a trio.Lock,
a wait for /dev/fuse to become readable (epoll_ctl and epoll_wait) before
every read, a trip through trio's scheduler. patches/pyfuse3-3.5.0-receive-
loop.patch reads /dev/fuse non-blocking until it is empty and runs each handler
synchronously until it suspends; only a handler that suspends gets a task of
its own. What shows it: requests queued while the daemon was stalled are then
read and answered with a handful of scheduler I/O waits instead of one or more
per request (a trio Instrument in the daemon counts them). The other tests here
hold the new loop to what the old one did: another trio task still runs during
a flood of requests, requests are served while handlers are suspended (waiting
in a worker thread, interrupted by a signal), a storm of FORGETs leaves no
lookup counted, and SIGTERM, a cancelled main(), fusermount3 -u and a lazy
unmount with a handler suspended each end the daemon cleanly.

FUSE passthrough (Linux 6.9) lets the kernel read and write an open file
through a backing file, without READ or WRITE requests; libfuse 3.14 can
neither ask for it nor name the backing file in an open reply.
patches/pyfuse3-3.5.0-passthrough.patch adds Operations.enable_passthrough,
pyfuse3.passthrough_granted(), pyfuse3.backing_open/backing_close and
FileInfo.backing_id ("passthrough" on the command line here: every open and
create passes through). The results are the daemon's counts of read and write
requests.

Stock pyfuse3 never asks for FUSE_CAP_CACHE_SYMLINKS, so the kernel sends
READLINK at every path walk through a symlink.
patches/pyfuse3-3.5.0-cache-symlinks.patch adds Operations.enable_cache_symlinks
("cache_symlinks" on the command line here). The result is the daemon's count
of readlink requests.

Stock pyfuse3 never asks for FUSE_CAP_DONT_MASK, so the kernel applies the
caller's umask before the file system sees the mode of a new file, also where a
default ACL says the umask must not apply. patches/pyfuse3-3.5.0-dont-mask.patch
adds Operations.enable_dont_mask (in this passthrough: "dont_mask" on the
command line): the mode then arrives as asked, the umask in
RequestContext.umask. The results are the mode and umask the create handler
got, read through CALLS_XATTR.

Stock pyfuse3's read handler must return the data as bytes: the file system
reads it into a Python object, which pyfuse3 then copies into the reply.
patches/pyfuse3-3.5.0-read-fd-range.patch lets it return a pyfuse3.FdRange
(a file descriptor, an offset and a size) instead, which libfuse reads into the
reply itself, or splices ("fd_range" on the command line: every read is
answered so). The results are the data the reader gets, and the error.

The fallocate, lseek, opendir, killpriv, tmpfile, receive loop, passthrough,
dont_mask and FdRange tests fail without their patches. The filesystem under test is a flat
passthrough of one backing directory, defined below and served by a child
process (`python THIS_FILE BACKING MOUNTPOINT [OPENDIR_REPLY]`), so pyfuse3's
one-mount-per-process state stays out of pytest.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import pytest
import trio

if __name__ != "__main__":  # pytest; the daemon, run as a script, needs none of it
    from support import mounts

log = logging.getLogger("passthrough")

FSTYPE = "fuse.strata-pyfuse3-patch"
CALLS_XATTR = "user.passthrough.calls"  # on the root: {"opendir": n, "readdir": n, ...} as JSON
CAPS = "security.capability"
ACL = "system.posix_acl_access"
LOOP_XATTR = "user.passthrough.loop"  # on the root: Passthrough.loop_figures() as JSON
# getxattr of this name (on any file) is answered, with b"gated", once the gate
# is open: the handler waits in a worker thread, suspended. SIGUSR2 opens the gate.
GATED_XATTR = "user.passthrough.gated"
GATED_PREFIX = "gated"  # the release of a file so named waits for the gate too
STALL_XATTR = "user.passthrough.stall"  # setxattr on the root: Passthrough.stall
STALL_FIFO = ".stall"  # in the backing directory
SUSPEND_PREFIX = "suspend"  # fd_range: a read of a file so named suspends first
UNREADABLE = "unreadable"  # fd_range: a read of this file is answered with a range of a directory
FORGET_ALL_XATTR = "user.passthrough.forget_all"  # setxattr on the root: Passthrough.forget_all
# SIGTERM: pyfuse3.terminate(), as fsd does; SIGUSR1: cancel pyfuse3.main();
# SIGUSR2: open the gate.
FALLOC_FL_KEEP_SIZE = 0x01  # <linux/falloc.h>
FALLOC_FL_PUNCH_HOLE = 0x02
MiB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate64.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2), which Python's os module lacks; raises OSError."""
    if _libc.fallocate64(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# -- the filesystem, run in the child ------------------------------------------

@contextlib.contextmanager
def _fuse_errors():
    """OSError from the backing file becomes FUSEError with its errno."""
    try:
        yield
    except OSError as e:
        raise pyfuse3.FUSEError(e.errno) from e


# What opendir returns for its file handle, by the name given on the command line.
OPENDIR_REPLIES = {
    "int": lambda fh: fh,
    "FileInfo": lambda fh: pyfuse3.FileInfo(fh=fh),
    "cache_readdir": lambda fh: pyfuse3.FileInfo(fh=fh, cache_readdir=True, keep_cache=False),
    "cache_readdir+keep_cache": lambda fh: pyfuse3.FileInfo(fh=fh, cache_readdir=True,
                                                            keep_cache=True),
}


class Passthrough(pyfuse3.Operations):
    """Regular files in the root of the backing directory, nothing more.

    Attributes are not cached (timeouts 0), so every stat shows the backing
    file. The root's mtime and ctime though are those the backing directory had
    at mount: a kernel that caches the listing then learns of a change to it
    only from requests through the mount (as with fsd, whose lowers never
    change), not from a new mtime (which drops the cached listing too).
    opendir answers with OPENDIR_REPLIES[opendir_reply]; opendir and readdir
    requests are counted and the counts read through CALLS_XATTR.

    For the receive loop: lookups are counted per inode as the kernel counts
    them, and forgotten; GATED_XATTR, STALL_XATTR and FORGET_ALL_XATTR drive
    the loop into the situations its tests need, and LOOP_XATTR reports."""

    enable_writeback_cache = False

    def __init__(self, backing: str, opendir_reply: str = "int"):
        super().__init__()
        self.dirfd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
        self.names: dict[int, bytes] = {}  # inode -> name in the backing dir
        self.inodes: dict[bytes, int] = {}
        # "killpriv": handle_killpriv_v2 and ACLs (the kernel passes the ACL's kill
        # flag only then); opendir answers with an int but as OPENDIR_REPLIES says
        self.handle_killpriv_v2 = self.enable_acl = opendir_reply == "killpriv"
        self.opendir_reply = OPENDIR_REPLIES.get(opendir_reply, OPENDIR_REPLIES["int"])
        # kills: [request, name, the kill flag the request came with]; create:
        # [mode, umask] that the last create request came with
        self.calls = {"opendir": 0, "readdir": 0, "releasedir": 0, "readdir fh": None,
                      "getxattr " + CAPS: 0, "kills": [],
                      "read": 0, "write": 0, "passthrough_granted": False, "create": None,
                      "readlink": 0}
        # "passthrough": opens and creates in passthrough mode, each on its own
        # backing id (a test opens a file once at a time)
        self.enable_passthrough = opendir_reply == "passthrough"
        self.backing_ids: dict[int, int] = {}  # file handle -> backing id
        # "dont_mask": enable_dont_mask
        self.enable_dont_mask = opendir_reply == "dont_mask"
        # "fd_range": reads answered with FdRange (see read)
        self.fd_range = opendir_reply == "fd_range"
        # "no_opendir": enable_no_opendir (readdir records the fh it is given)
        self.enable_no_opendir = opendir_reply == "no_opendir"
        # "cache_symlinks": enable_cache_symlinks (readlink requests are counted)
        self.enable_cache_symlinks = opendir_reply == "cache_symlinks"
        self.fh_names: dict[int, int] = {}  # file handle (a backing fd) -> inode
        self.nameless: dict[int, int] = {}  # inode of an O_TMPFILE file -> its fd
        self.lookups: dict[int, int] = {}  # inode -> lookups the kernel has not forgotten
        st = os.fstat(self.dirfd)
        self.root_times = {"st_mtime_ns": st.st_mtime_ns, "st_ctime_ns": st.st_ctime_ns}
        self.gate = threading.Event()
        self.gated = 0  # handlers that waited, or wait, for the gate
        self.gated_fds: set[int] = set()
        self.flood: dict | None = None  # see stall()
        self.io_waits = IoWaits()
        self.nursery: trio.Nursery | None = None  # set by _serve

    def _inode(self, name: bytes) -> int:
        if name not in self.inodes:
            self.inodes[name] = pyfuse3.ROOT_INODE + 1 + len(self.inodes)
            self.names[self.inodes[name]] = name
        return self.inodes[name]

    def _looked_up(self, inode: int) -> int:
        """Count one lookup of inode, as the kernel does for each entry we return."""
        self.lookups[inode] = self.lookups.get(inode, 0) + 1
        return inode

    def _entry(self, inode: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        for a in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                  "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(e, a, getattr(st, a))
        e.st_ino = inode
        e.attr_timeout = e.entry_timeout = 0
        return e

    async def lookup(self, parent_inode, name, ctx):
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        with _fuse_errors():
            st = os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
        return self._entry(self._looked_up(self._inode(name)), st)

    async def forget(self, inode_list):
        for inode, nlookup in inode_list:
            left = self.lookups.get(inode, 0) - nlookup
            if left < 0:
                log.error("forget of inode %d: %d lookups forgotten, %d counted",
                          inode, nlookup, self.lookups.get(inode, 0))
            if left > 0:
                self.lookups[inode] = left
            else:
                self.lookups.pop(inode, None)

    async def getattr(self, inode, ctx):
        if self.flood is not None and self.flood["left"]:
            self._flooded()
        with _fuse_errors():
            if inode in self.nameless:
                return self._entry(inode, os.fstat(self.nameless[inode]))
            if inode == pyfuse3.ROOT_INODE:
                e = self._entry(inode, os.fstat(self.dirfd))
                for a, t in self.root_times.items():
                    setattr(e, a, t)
                return e
            return self._entry(inode, os.stat(self.names[inode], dir_fd=self.dirfd,
                                              follow_symlinks=False))

    async def readlink(self, inode, ctx):
        self.calls["readlink"] += 1
        with _fuse_errors():
            return os.readlink(self.names[inode], dir_fd=self.dirfd)

    def _path(self, inode: int) -> str:
        return f"/proc/self/fd/{self.dirfd}/{os.fsdecode(self.names[inode])}"

    def _kill(self, request: str, inode: int, flag: bool) -> None:
        self.calls["kills"].append([request, self.names[inode].decode(), bool(flag)])

    async def open(self, inode, flags, ctx):
        if flags & os.O_TRUNC:
            self._kill("open", inode, getattr(ctx, "kill_suidgid", False))
        with _fuse_errors():
            fd = os.open(self.names[inode], flags | os.O_NOFOLLOW, dir_fd=self.dirfd)
        self.fh_names[fd] = inode
        if self.names[inode].startswith(GATED_PREFIX.encode()):
            self.gated_fds.add(fd)
        return self._file_info(fd)

    def _file_info(self, fd: int) -> pyfuse3.FileInfo:
        if not self.enable_passthrough:
            return pyfuse3.FileInfo(fh=fd)
        self.calls["passthrough_granted"] = pyfuse3.passthrough_granted()
        self.backing_ids[fd] = pyfuse3.backing_open(fd)
        return pyfuse3.FileInfo(fh=fd, backing_id=self.backing_ids[fd])

    async def setattr(self, inode, attr, fields, fh, ctx):
        with _fuse_errors():
            if fields.update_size:
                self._kill("setattr", inode, getattr(ctx, "kill_suidgid", False))
                os.truncate(fh if fh is not None else self._path(inode), attr.st_size)
        return await self.getattr(inode, ctx)

    async def create(self, parent_inode, name, mode, flags, ctx):
        self.calls["create"] = [mode & 0o7777, ctx.umask]
        with _fuse_errors():
            fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW, mode, dir_fd=self.dirfd)
            self.fh_names[fd] = self._inode(name)
            return (self._file_info(fd),
                    self._entry(self._looked_up(self._inode(name)), os.fstat(fd)))

    async def tmpfile(self, parent_inode, mode, flags, ctx):
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        with _fuse_errors():
            fd = os.open(".", os.O_TMPFILE | (flags & os.O_ACCMODE), mode & 0o7777, dir_fd=self.dirfd)
        inode = pyfuse3.ROOT_INODE + 1 + len(self.inodes) + len(self.nameless)
        self.nameless[inode] = fd
        self.fh_names[fd] = inode
        return pyfuse3.FileInfo(fh=fd), self._entry(self._looked_up(inode), os.fstat(fd))

    async def read(self, fh, off, size):
        """With fd_range, the read is answered with a range of the backing
        file, which pyfuse3 has libfuse read; of a file named SUSPEND_PREFIX...
        after the handler suspended, of UNREADABLE a range of a directory."""
        self.calls["read"] += 1
        if self.fd_range:
            name = self.names.get(self.fh_names.get(fh), b"")
            if name.startswith(SUSPEND_PREFIX.encode()):
                await trio.lowlevel.checkpoint()
            return pyfuse3.FdRange(self.dirfd if name == UNREADABLE.encode() else fh, off, size)
        with _fuse_errors():
            return os.pread(fh, size, off)

    async def write(self, fh, off, buf, ctx=None):
        if ctx is not None:
            self._kill("write", self.fh_names[fh], ctx.kill_suidgid)
        self.calls["write"] += 1
        with _fuse_errors():
            return os.pwrite(fh, buf, off)

    async def release(self, fh):
        if fh in self.gated_fds:
            self.gated_fds.discard(fh)
            await self._wait_for_gate()
        self.nameless.pop(self.fh_names.pop(fh, None), None)
        if fh in self.backing_ids:
            pyfuse3.backing_close(self.backing_ids.pop(fh))
        os.close(fh)

    async def fallocate(self, fh, mode, offset, length):
        with _fuse_errors():
            fallocate(fh, mode, offset, length)

    async def lseek(self, fh, offset, whence):
        with _fuse_errors():
            return os.lseek(fh, offset, whence)

    async def opendir(self, inode, ctx):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self.calls["opendir"] += 1
        return self.opendir_reply(inode)

    async def readdir(self, fh, start_id, token):
        """The backing directory's names in sorted order; next_id is the index of the next."""
        self.calls["readdir"] += 1
        self.calls["readdir fh"] = fh
        with _fuse_errors():
            names = sorted(os.fsencode(n) for n in os.listdir(self.dirfd))
            for i in range(start_id, len(names)):
                st = os.stat(names[i], dir_fd=self.dirfd, follow_symlinks=False)
                inode = self._inode(names[i])
                if not pyfuse3.readdir_reply(token, names[i], self._entry(inode, st), i + 1):
                    return
                self._looked_up(inode)  # readdirplus: the kernel counts each entry as a lookup

    async def releasedir(self, fh):
        self.calls["releasedir"] += 1

    async def getxattr(self, inode, name, ctx):
        if name == os.fsencode(CAPS):
            self.calls["getxattr " + CAPS] += 1
        if name == os.fsencode(GATED_XATTR):
            await self._wait_for_gate()
            return b"gated"
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if name == os.fsencode(CALLS_XATTR):
            return json.dumps(self.calls).encode()
        if name == os.fsencode(LOOP_XATTR):
            return json.dumps(self.loop_figures()).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def setxattr(self, inode, name, value, ctx):
        """Access ACLs of files, kept as user.acl on the backing file (its mode
        stays); on the root, the receive loop's STALL_XATTR and FORGET_ALL_XATTR."""
        if inode == pyfuse3.ROOT_INODE and name == os.fsencode(STALL_XATTR):
            self.stall(int(value))
        elif inode == pyfuse3.ROOT_INODE and name == os.fsencode(FORGET_ALL_XATTR):
            self.forget_all()
        elif name == os.fsencode(ACL) and inode != pyfuse3.ROOT_INODE:
            self._kill("setxattr", inode, getattr(ctx, "kill_sgid", False))
            with _fuse_errors():
                os.setxattr(self._path(inode), "user.acl", value)
        else:
            raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- the receive loop's tests

    def loop_figures(self) -> dict:
        """gated: handlers that waited or wait for the gate; looked_up: inodes
        whose lookups the kernel has not all forgotten; flood: see stall()."""
        return {"gated": self.gated, "looked_up": len(self.lookups), "flood": self.flood}

    async def _wait_for_gate(self) -> None:
        """Suspend this handler, in a worker thread, until the gate is open."""
        self.gated += 1
        await trio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)

    def stall(self, requests: int) -> None:
        """Stop the whole daemon, in this handler (it never suspends), until a
        byte is written to STALL_FIFO; then watch the next `requests` getattr
        requests (flood, in loop_figures()):
          left      how many of them are still to come;
          io_waits  how often trio's scheduler polled for I/O while they were
                    being answered (each poll is an epoll_wait);
          max_run   the most of them answered in a row while another task
                    that was ready to run (spin) did not get to."""
        self.flood = {"left": requests, "run": 0, "max_run": 0, "io_waits": None}
        self.nursery.start_soon(self._spin)
        fd = os.open(STALL_FIFO, os.O_RDONLY, dir_fd=self.dirfd)
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
        self.flood["io_waits_before"] = self.io_waits.count

    def _flooded(self) -> None:
        flood = self.flood
        flood["left"] -= 1
        flood["run"] += 1
        flood["max_run"] = max(flood["max_run"], flood["run"])
        if not flood["left"]:
            flood["io_waits"] = self.io_waits.count - flood.pop("io_waits_before")

    async def _spin(self) -> None:
        """A task that always wants the CPU until the flood is over: each time
        it gets it ends a run of requests answered without it."""
        while self.flood["left"]:
            self.flood["run"] = 0
            await trio.lowlevel.checkpoint()

    def forget_all(self) -> None:
        """Have the kernel drop every name in the root, from pyfuse3's notify
        thread: it then forgets each inode it no longer needs, in a storm of
        FORGET requests that arrive while requests are being served."""
        for name in self.inodes:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, name, ignore_enoent=True)


class IoWaits(trio.abc.Instrument):
    """Counts trio's polls for I/O: each is one epoll_wait."""

    def __init__(self):
        self.count = 0

    def after_io_wait(self, timeout):
        self.count += 1


def serve(backing: str, mountpoint: str, opendir_reply: str = "int") -> None:
    """Mount the passthrough of backing on mountpoint until it is unmounted,
    or until SIGTERM, or until SIGUSR1 cancels pyfuse3.main()."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = set(pyfuse3.default_options) | {"fsname=strata-pyfuse3-patch",
                                              "subtype=strata-pyfuse3-patch", "allow_other"}
    fs = Passthrough(backing, opendir_reply)
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)


async def _serve(fs: Passthrough) -> None:
    trio.lowlevel.add_instrument(fs.io_waits)
    async with trio.open_nursery() as nursery:
        fs.nursery = nursery
        with trio.CancelScope() as main_scope:
            nursery.start_soon(_handle_signals, fs, main_scope)
            await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _handle_signals(fs: Passthrough, main_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            if signum == signal.SIGTERM:
                pyfuse3.terminate()
            elif signum == signal.SIGUSR1:
                main_scope.cancel()
            else:
                fs.gate.set()


# -- fixtures ------------------------------------------------------------------

@dataclass
class Served:
    """A running passthrough mount: its backing dir, mountpoint, daemon and log."""
    backing: Path
    mnt: Path
    proc: subprocess.Popen
    log: Path
    minor: int = field(init=False)  # of the FUSE connection

    def __post_init__(self):
        self.minor = mounts.mounts_at(self.mnt)[0].minor

    def figures(self) -> dict:
        return json.loads(os.getxattr(self.mnt, LOOP_XATTR))

    def wait_exit(self) -> int:
        """The daemon's exit status, once it has exited by itself."""
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the passthrough did not exit: " + mounts.describe_process(self.proc.pid),
                        pytrace=False)


@pytest.fixture
def passthrough(tmp_path, fuse_deadline, fsd_log, request):
    """A Served passthrough mount.

    Its opendir answers as OPENDIR_REPLIES[request.param] when the test
    parametrizes this fixture (indirect), else with an int. Its log is one of
    fsd_log's, where an ERROR line fails the test unless expected. Unmounted
    at teardown even when the test failed; a daemon that crashed or exited
    non-zero fails the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a real FUSE mount)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    opendir_reply = getattr(request, "param", "int")

    log_path = fsd_log.new_path("passthrough")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, __file__, str(backing), str(mnt), opendir_reply],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        mounts.wait_for(lambda: mounts.is_mounted(mnt, FSTYPE) or proc.poll() is not None, 15)
        assert mounts.is_mounted(mnt, FSTYPE), \
            f"passthrough did not mount (exit {proc.poll()}):\n{log_path.read_text()}"
        fuse_deadline.watch_mount(mnt)
        yield Served(backing, mnt, proc, log_path)
    finally:
        problems = mounts.unmount_fuse(mnt, [proc.pid])
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        return
    if proc.returncode != 0:
        problems.append(f"passthrough exited {proc.returncode}")
    if problems:
        pytest.fail("; ".join(problems) + ":\n" + log_path.read_text(errors="replace"),
                    pytrace=False)


def _skip_unless_backing_punches_holes(backing: Path) -> None:
    probe = backing / ".probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.pwrite(fd, b"x" * (2 * MiB), 0)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, MiB)
            hole = os.lseek(fd, 0, os.SEEK_HOLE)
        except OSError as e:
            pytest.skip(f"the filesystem under {backing} cannot punch holes: {e}")
        if hole != 0:
            pytest.skip(f"the filesystem under {backing} does not report holes (SEEK_HOLE {hole})")
    finally:
        os.close(fd)
        probe.unlink()


# -- tests -------------------------------------------------------------------------

def test_fallocate_allocates_and_punch_hole_frees_blocks(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    _skip_unless_backing_punches_holes(backing)
    size, hole_off, hole_len = 4 * MiB, MiB, 2 * MiB
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        # Without the patch the kernel answers EOPNOTSUPP here and from now on.
        try:
            fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * size)
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                pytest.fail("fallocate(2) through pyfuse3 fails EOPNOTSUPP: this pyfuse3 lacks "
                            "patches/pyfuse3-3.5.0-fallocate-lseek.patch (run scripts/install)",
                            pytrace=False)
            raise
        st = os.stat(backing / "f")
        assert (st.st_size, st.st_blocks * 512 >= 2 * size) == (0, True)
        assert os.fstat(fd).st_size == 0

        os.posix_fallocate(fd, 0, size)  # mode 0: the size grows
        st = os.stat(backing / "f")
        assert (st.st_size, st.st_blocks * 512 >= 2 * size) == (size, True)
        assert os.fstat(fd).st_size == size

        os.pwrite(fd, b"x" * size, 0)
        blocks_before = os.stat(backing / "f").st_blocks
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, hole_off, hole_len)

        st = os.stat(backing / "f")
        assert st.st_size == size
        assert blocks_before - st.st_blocks >= hole_len // 512, (blocks_before, st.st_blocks)
        want = b"x" * hole_off + b"\0" * hole_len + b"x" * (size - hole_off - hole_len)
        assert (backing / "f").read_bytes() == want
        assert os.pread(fd, size, 0) == want  # the kernel dropped its cached pages
    finally:
        os.close(fd)
    assert (mnt / "f").read_bytes() == want


def test_lseek_finds_data_and_holes(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    _skip_unless_backing_punches_holes(backing)
    # data [0, 64 KiB), hole [64 KiB, 1 MiB), data [1 MiB, 1 MiB + 64 KiB), end
    chunk, gap = 64 << 10, MiB
    with open(backing / "sparse", "wb") as f:
        f.write(b"a" * chunk)
        f.seek(gap)
        f.write(b"b" * chunk)
    size = gap + chunk

    fd = os.open(mnt / "sparse", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == chunk  # without the patch: the end, 1 MiB + 64 KiB
        assert os.lseek(fd, chunk, os.SEEK_DATA) == gap
        assert os.lseek(fd, gap, os.SEEK_HOLE) == size
        with pytest.raises(OSError) as e:
            os.lseek(fd, size, os.SEEK_DATA)
        assert e.value.errno == errno.ENXIO
        assert os.pread(fd, size, 0) == b"a" * chunk + b"\0" * (gap - chunk) + b"b" * chunk
    finally:
        os.close(fd)


def _calls(mnt: Path) -> dict[str, int]:
    """The daemon's counts of opendir and readdir requests so far."""
    return json.loads(os.getxattr(mnt, CALLS_XATTR))


def _listing(mnt: Path) -> tuple[list[str], dict[str, int]]:
    """The sorted names in mnt, and the requests their listing sent to the daemon."""
    before = _calls(mnt)
    names = sorted(os.listdir(mnt))
    after = _calls(mnt)
    return names, {k: after[k] - before[k] for k in ("opendir", "readdir")}


def _page_cache_drops() -> int:
    """How many times the page cache was dropped (drop_caches) since boot."""
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name == "drop_pagecache":
                return int(value)
    return 0


def _retried_if_page_cache_dropped(check, attempts: int = 5):
    """check(attempt) for attempt 0, 1, ... until it returns.

    The kernel keeps cached listings in the page cache, which other tests on
    this machine drop (/proc/sys/vm/drop_caches): a check that failed while
    that happened is tried again, any other failure is one."""
    for attempt in range(attempts):
        drops = _page_cache_drops()
        try:
            return check(attempt)
        except AssertionError:
            if attempt == attempts - 1 or _page_cache_drops() == drops:
                raise


def _require_opendir_cache_patch() -> None:
    # Without it the daemon's opendir raises TypeError (FileInfo takes no
    # cache_readdir, and is no file handle): name the cause instead.
    if not hasattr(pyfuse3.FileInfo(), "cache_readdir"):
        pytest.fail("pyfuse3.FileInfo has no cache_readdir: this pyfuse3 lacks "
                    "patches/pyfuse3-3.5.0-opendir-cache.patch (run scripts/install)",
                    pytrace=False)


@pytest.mark.parametrize("passthrough, served_by_the_kernel", [
    # An int (stock pyfuse3's only answer) or FileInfo's defaults: no caching.
    ("int", False),
    ("FileInfo", False),
    # The listing is cached, but dropped at the next open without keep_cache.
    ("cache_readdir", False),
    ("cache_readdir+keep_cache", True),
], indirect=["passthrough"])
def test_opendir_cache_flags_decide_whether_a_second_listing_reaches_readdir(
        passthrough, served_by_the_kernel, request):
    backing, mnt = passthrough.backing, passthrough.mnt
    if request.node.callspec.params["passthrough"] != "int":
        _require_opendir_cache_patch()
    names = [f"f{i:03}" for i in range(200)]  # two pages of the kernel's cache
    for name in names:
        (backing / name).touch()

    listed, calls = _listing(mnt)
    assert (listed, calls["opendir"], calls["readdir"] > 1) == (names, 1, True)

    def second_listing(attempt):
        if attempt:
            _listing(mnt)  # fills the cache again
        listed, calls = _listing(mnt)
        assert listed == names
        assert calls["opendir"] == 1  # a new open, which reached the daemon
        if served_by_the_kernel:
            assert calls["readdir"] == 0
        else:
            assert calls["readdir"] > 0

    _retried_if_page_cache_dropped(second_listing)


@pytest.mark.parametrize("passthrough", ["cache_readdir+keep_cache"], indirect=True)
def test_cached_listing_is_dropped_when_the_directory_changes_through_the_mount(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    _require_opendir_cache_patch()
    for name in ("a", "b"):
        (backing / name).touch()

    def changes(attempt):
        behind, created = f"behind{attempt}", f"c{attempt}"
        names = sorted(os.listdir(backing))
        assert _listing(mnt)[0] == names
        assert _listing(mnt) == (names, {"opendir": 1, "readdir": 0})

        # A change behind the kernel's back (never one in a lower) goes unseen:
        # the root's mtime does not change, so nothing tells the kernel.
        (backing / behind).touch()
        assert _listing(mnt) == (names, {"opendir": 1, "readdir": 0})

        # A change through the mount drops the cached listing (fuse_dir_changed).
        os.close(os.open(mnt / created, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        names = sorted(names + [behind, created])
        listed, calls = _listing(mnt)
        assert (listed, calls["readdir"] > 0) == (names, True)
        assert _listing(mnt) == (names, {"opendir": 1, "readdir": 0})  # cached anew

    _retried_if_page_cache_dropped(changes)


@pytest.mark.parametrize("passthrough", ["no_opendir"], indirect=True)
def test_no_opendir_leaves_opendir_and_releasedir_unsent_and_readdir_gets_the_inode(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    names = [f"f{i:03}" for i in range(200)]  # two pages of the kernel's cache
    for name in names:
        (backing / name).touch()

    listed, calls = _listing(mnt)
    assert (listed, calls["opendir"], calls["readdir"] > 1) == (names, 0, True)
    assert _calls(mnt)["readdir fh"] == pyfuse3.ROOT_INODE

    def cached(attempt):  # the kernel caches the listing as with cache_readdir+keep_cache
        if attempt:
            _listing(mnt)
        assert _listing(mnt) == (names, {"opendir": 0, "readdir": 0})

    _retried_if_page_cache_dropped(cached)
    assert (_calls(mnt)["opendir"], _calls(mnt)["releasedir"]) == (0, 0)


def _require_cache_symlinks_patch() -> None:
    if not hasattr(pyfuse3.Operations, "enable_cache_symlinks"):
        pytest.fail("pyfuse3.Operations has no enable_cache_symlinks: this pyfuse3 lacks "
                    "patches/pyfuse3-3.5.0-cache-symlinks.patch (run scripts/install)",
                    pytrace=False)


@pytest.mark.parametrize("passthrough, asked_once", [("int", False), ("cache_symlinks", True)],
                         indirect=["passthrough"])
def test_cache_symlinks_decides_whether_each_readlink_reaches_the_daemon(passthrough, asked_once):
    _require_cache_symlinks_patch()
    os.symlink("target/of/the/link", passthrough.backing / "link")
    link = passthrough.mnt / "link"

    def readlinks(attempt):
        before = _calls(passthrough.mnt)["readlink"]
        assert [os.readlink(link) for _ in range(3)] == ["target/of/the/link"] * 3
        asked = _calls(passthrough.mnt)["readlink"] - before
        if not asked_once:
            assert asked == 3
        elif attempt:  # after a drop of the page cache: cached again, or still
            assert asked <= 1
        else:
            assert asked == 1

    _retried_if_page_cache_dropped(readlinks)


def test_o_tmpfile_reaches_the_tmpfile_handler(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    try:
        fd = os.open(mnt, os.O_TMPFILE | os.O_RDWR, 0o640)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            pytest.fail("open(O_TMPFILE) through pyfuse3 fails EOPNOTSUPP: this pyfuse3 lacks "
                        "patches/pyfuse3-3.5.0-tmpfile.patch (run scripts/install)", pytrace=False)
        raise
    try:
        assert os.write(fd, b"no name") == 7
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_nlink, st.st_size) == (0o640, 0, 7)
        assert os.pread(fd, 7, 0) == b"no name"
        assert os.listdir(mnt) == os.listdir(backing) == []
    finally:
        os.close(fd)


def _created_with_umask(mnt: Path, umask: int) -> list[int]:
    """Create a file with mode 0666 under umask; the [mode, umask] create got."""
    old = os.umask(umask)
    try:
        os.close(os.open(mnt / "new", os.O_WRONLY | os.O_CREAT, 0o666))
    finally:
        os.umask(old)
    return _calls(mnt)["create"]


def test_the_kernel_masks_the_mode_of_a_new_file_by_default(passthrough):
    mnt = passthrough.mnt
    assert _created_with_umask(mnt, 0o027) == [0o640, 0o027]


@pytest.mark.parametrize("passthrough", ["dont_mask"], indirect=True)
def test_dont_mask_leaves_the_umask_to_the_file_system(passthrough):
    mnt = passthrough.mnt
    assert _created_with_umask(mnt, 0o027) == [0o666, 0o027]


def _require_killpriv_patch() -> None:
    if not hasattr(pyfuse3.Operations, "handle_killpriv_v2"):
        pytest.fail("pyfuse3.Operations has no handle_killpriv_v2: this pyfuse3 lacks "
                    "patches/pyfuse3-3.5.0-killpriv.patch (run scripts/install)", pytrace=False)


@pytest.mark.parametrize("passthrough, asks_per_write", [("int", True), ("killpriv", False)],
                         indirect=["passthrough"])
def test_killpriv_v2_stops_the_capability_check_before_each_write(passthrough, asks_per_write):
    backing, mnt = passthrough.backing, passthrough.mnt
    writes = 20
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(writes):
            os.pwrite(fd, b"x", i)
    finally:
        os.close(fd)
    asked = _calls(mnt)["getxattr " + CAPS]
    if asks_per_write:
        assert asked == writes
    else:
        _require_killpriv_patch()
        assert asked <= 1, f"{asked} getxattr of {CAPS} for {writes} writes"  # one, per inode


@pytest.mark.parametrize("passthrough", ["killpriv"], indirect=True)
def test_killpriv_v2_passes_the_kill_flags_of_each_request(passthrough, user):
    """A user (no CAP_FSETID) writes, opens with O_TRUNC, truncates, and sets
    an access ACL on a file whose group she is not in; root writes too."""
    from support.faults import in_child, posix_acl

    backing, mnt = passthrough.backing, passthrough.mnt
    _require_killpriv_patch()
    for name, uid, gid in (("theirs", 0, 0), ("mine", user.uid, 0)):
        (backing / name).write_bytes(b"data")
        os.chown(backing / name, uid, gid)
        os.chmod(backing / name, 0o666)
    acl = posix_acl(6, 6, 4)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)

    def as_user():
        fd = os.open("theirs", os.O_WRONLY, dir_fd=dfd)
        os.write(fd, b"u")
        os.close(fd)
        os.close(os.open("theirs", os.O_WRONLY | os.O_TRUNC, dir_fd=dfd))
        os.truncate(f"/proc/self/fd/{dfd}/theirs", 1)
        os.setxattr(f"/proc/self/fd/{dfd}/mine", ACL, acl)
        return "ok"
    try:
        assert in_child(as_user, (user.uid, user.gid, [user.gid])) == "ok"
        fd = os.open("theirs", os.O_WRONLY, dir_fd=dfd)
        os.write(fd, b"r")
        os.close(fd)
    finally:
        os.close(dfd)
    assert _calls(mnt)["kills"] == [["write", "theirs", True], ["open", "theirs", True],
                                    ["setattr", "theirs", True], ["setxattr", "mine", True],
                                    ["write", "theirs", False]]
    # the extended setxattr request was parsed right: name and value
    assert os.getxattr(backing / "mine", "user.acl") == acl


# -- the receive loop ------------------------------------------------------------

FLOOD = 300  # requests queued at once while the daemon is stalled


def test_queued_requests_are_answered_without_a_poll_each_and_other_tasks_still_run(passthrough):
    fs = passthrough
    (fs.backing / "f").write_bytes(b"x")
    os.mkfifo(fs.backing / STALL_FIFO)
    fds = [os.open(fs.mnt / "f", os.O_RDONLY) for _ in range(FLOOD)]
    try:
        stall = threading.Thread(target=os.setxattr,
                                 args=(fs.mnt, STALL_XATTR, str(FLOOD).encode()))
        stall.start()
        release = _open_when_read(fs.backing / STALL_FIFO)  # the daemon is stalled now
        # One getattr request each, queued behind the stall: the daemon finds
        # FLOOD requests waiting when it reads again.
        clients = [threading.Thread(target=os.fstat, args=(fd,)) for fd in fds]
        for c in clients:
            c.start()
        assert mounts.wait_for(lambda: mounts.fuse_waiting(fs.minor) >= FLOOD + 1, 30), \
            f"only {mounts.fuse_waiting(fs.minor)} requests queued"
        os.write(release, b"x")
        os.close(release)
        for t in [stall, *clients]:
            t.join(30)
            assert not t.is_alive()
    finally:
        for fd in fds:
            os.close(fd)

    flood = fs.figures()["flood"]
    assert flood["left"] == 0
    # Stock pyfuse3 waits for /dev/fuse to become readable before each read,
    # and each such wait is a poll of the scheduler: FLOOD or more of them.
    assert flood["io_waits"] < FLOOD // 4, flood
    # The reader lets other tasks run every 64 requests; a task ready to run
    # waits for at most two such runs (one of them begun before it was ready).
    assert 0 < flood["max_run"] <= 2 * 64, flood


def _open_when_read(fifo: Path) -> int:
    """fifo opened for writing, once the daemon has opened it for reading."""
    fd = None

    def opened():
        nonlocal fd
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet
                raise
        return fd is not None
    assert mounts.wait_for(opened, 30), "the daemon did not stall"
    return fd


class Gated(threading.Thread):
    """getxattr(path, GATED_XATTR) in a thread; the result or the OSError in .outcome."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.outcome: bytes | OSError | None = None
        self.start()

    def run(self):
        try:
            self.outcome = os.getxattr(self.path, GATED_XATTR)
        except OSError as e:
            self.outcome = e

    def result(self) -> bytes | OSError:
        self.join(30)
        assert not self.is_alive(), "the gated request was never answered"
        return self.outcome


def _wait_gated(fs: Served, n: int) -> None:
    """Until n handlers have suspended at the gate (asking is a request too)."""
    assert mounts.wait_for(lambda: fs.figures()["gated"] == n, 30), fs.figures()


def test_requests_are_served_while_handlers_wait_in_threads(passthrough):
    fs = passthrough
    for i in range(20):
        (fs.backing / f"f{i}").write_bytes(b"%d" % i)
    gated = [Gated(fs.mnt / f"f{i}") for i in range(3)]
    _wait_gated(fs, 3)
    assert [(fs.mnt / f"f{i}").read_bytes() for i in range(20)] == [b"%d" % i for i in range(20)]
    assert sorted(os.listdir(fs.mnt)) == sorted(f"f{i}" for i in range(20))
    assert all(g.is_alive() for g in gated)
    fs.proc.send_signal(signal.SIGUSR2)  # the gate opens
    assert [g.result() for g in gated] == [b"gated"] * 3


def test_an_interrupted_request_is_answered_when_its_handler_resumes(passthrough):
    fs = passthrough
    (fs.backing / "f").write_bytes(b"x")
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        gated = Gated(fs.mnt / "f")
        _wait_gated(fs, 1)
        # The kernel sends FUSE_INTERRUPT for the request the thread waits on
        # (libfuse answers it itself), and keeps waiting for the answer.
        for _ in range(3):
            signal.pthread_kill(gated.ident, signal.SIGUSR1)
            assert (fs.mnt / "f").read_bytes() == b"x"
        fs.proc.send_signal(signal.SIGUSR2)
        assert gated.result() == b"gated"
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert fs.figures()["gated"] == 1


def test_a_storm_of_forgets_leaves_no_lookup_counted(passthrough):
    fs = passthrough
    names = [f"f{i:04}" for i in range(3000)]
    for name in names:
        (fs.backing / name).touch()
    for name in names:
        os.stat(fs.mnt / name)
    assert fs.figures()["looked_up"] >= len(names)
    os.setxattr(fs.mnt, FORGET_ALL_XATTR, b"1")
    # Requests keep coming (each look at the figures is one) while the kernel
    # forgets 3,000 inodes; the passthrough logs an error for a count that
    # would go below zero.
    assert mounts.wait_for(lambda: fs.figures()["looked_up"] == 0, 30), fs.figures()


def test_sigterm_with_a_handler_suspended_answers_it_and_exits(passthrough):
    fs = passthrough
    (fs.backing / "f").write_bytes(b"x")
    gated = Gated(fs.mnt / "f")
    _wait_gated(fs, 1)
    fs.proc.send_signal(signal.SIGTERM)  # pyfuse3.terminate(): main() returns once the handler has
    fs.proc.send_signal(signal.SIGUSR2)
    assert gated.result() == b"gated"
    assert fs.wait_exit() == 0
    assert not mounts.is_mounted(fs.mnt)


def test_cancelling_main_with_a_handler_suspended_ends_it_unanswered(passthrough):
    fs = passthrough
    (fs.backing / "f").write_bytes(b"x")
    gated = Gated(fs.mnt / "f")
    _wait_gated(fs, 1)
    fs.proc.send_signal(signal.SIGUSR1)  # cancels main(), and with it the handler
    # Nothing answers the request; closing the session aborts the connection.
    outcome = gated.result()
    assert isinstance(outcome, OSError) and outcome.errno in (errno.ECONNABORTED, errno.ENOTCONN), \
        outcome
    assert fs.wait_exit() == 0
    assert not mounts.is_mounted(fs.mnt)
    assert "never awaited" not in fs.log.read_text()


def test_lazy_unmount_with_a_handler_suspended_answers_it_and_exits(passthrough):
    fs = passthrough
    (fs.backing / "f").write_bytes(b"x")
    gated = Gated(fs.mnt / "f")
    _wait_gated(fs, 1)
    # The request in flight keeps the mount busy: plain fusermount3 -u fails
    # EBUSY, -z detaches it and the connection lives until the request ends.
    subprocess.run(["fusermount3", "-u", "-z", str(fs.mnt)], check=True)
    assert not mounts.is_mounted(fs.mnt)
    assert fs.proc.poll() is None
    fs.proc.send_signal(signal.SIGUSR2)
    assert gated.result() == b"gated"
    assert fs.wait_exit() == 0


@pytest.mark.fsd_errors_expected(r"fuse_release\(\): fuse_reply_\* failed")
def test_unmount_with_a_release_suspended_exits_once_it_completes(passthrough):
    fs = passthrough
    (fs.backing / f"{GATED_PREFIX}-f").write_bytes(b"x")
    # The kernel sends RELEASE after close(2) has returned: nothing holds the
    # mount, so fusermount3 -u succeeds with the handler suspended.
    os.close(os.open(fs.mnt / f"{GATED_PREFIX}-f", os.O_RDONLY))
    _wait_gated(fs, 1)
    subprocess.run(["fusermount3", "-u", str(fs.mnt)], check=True)
    assert not mounts.is_mounted(fs.mnt)
    assert fs.proc.poll() is None  # main() waits for the handler
    fs.proc.send_signal(signal.SIGUSR2)
    # Its answer finds no connection (pyfuse3 logs that), and the daemon exits.
    assert fs.wait_exit() == 0


# -- passthrough -----------------------------------------------------------------

def _require_passthrough_patch() -> None:
    if not hasattr(pyfuse3, "backing_open"):
        pytest.fail("pyfuse3 has no backing_open: this pyfuse3 lacks "
                    "patches/pyfuse3-3.5.0-passthrough.patch (run scripts/install)", pytrace=False)


def _skip_unless_kernel_passes_through() -> None:
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 9):
        pytest.skip(f"FUSE passthrough needs Linux 6.9 (this is {os.uname().release})")


@pytest.mark.parametrize("passthrough", ["passthrough"], indirect=True)
def test_passthrough_reads_and_writes_do_not_reach_the_daemon(passthrough):
    backing, mnt = passthrough.backing, passthrough.mnt
    _require_passthrough_patch()
    _skip_unless_kernel_passes_through()
    data = os.urandom(3 * MiB + 5)
    (backing / "old").write_bytes(data)

    assert (mnt / "old").read_bytes() == data  # an open: FUSE_OPEN reply
    fd = os.open(mnt / "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)  # a create reply
    try:
        os.write(fd, data)
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert (backing / "new").read_bytes() == data
    calls = _calls(mnt)
    assert calls["passthrough_granted"] is True
    assert (calls["read"], calls["write"]) == (0, 0)


def _require_fd_range_patch() -> None:
    if not hasattr(pyfuse3, "FdRange"):
        pytest.fail("pyfuse3 has no FdRange: this pyfuse3 lacks "
                    "patches/pyfuse3-3.5.0-read-fd-range.patch (run scripts/install)", pytrace=False)


@pytest.mark.parametrize("passthrough", ["fd_range"], indirect=True)
def test_a_read_answered_with_a_range_of_a_file_descriptor(passthrough):
    """The data of the backing file reaches the reader: in small replies and
    in large ones (the kernel's readahead asks 128 KiB at a time), short at
    the end of the file, empty past it, zeros in a hole; from a handler that
    suspended before it answered too. An error of reading the descriptor is
    the read's."""
    backing, mnt = passthrough.backing, passthrough.mnt
    _require_fd_range_patch()
    data = os.urandom(3 * MiB + 5)
    files = {"big": data, "small": b"0123456789", "empty": b"", "suspended": data[:300000],
             "sparse": bytes(MiB) + b"middle" + bytes(MiB), UNREADABLE: b"x"}
    for name, content in files.items():
        (backing / name).write_bytes(content)
    with open(backing / "sparse", "r+b") as f:  # holes around the data
        f.truncate(0)
        f.seek(MiB)
        f.write(b"middle")
        f.truncate(2 * MiB + 6)

    for name in ("big", "small", "empty", "suspended", "sparse"):
        assert (mnt / name).read_bytes() == files[name], name
    fd = os.open(mnt / "big", os.O_RDONLY)
    try:
        for off, n in ((len(data) - 5, 100), (len(data), 10), (len(data) + 4096, 1)):
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
    finally:
        os.close(fd)
    with pytest.raises(IsADirectoryError):
        (mnt / UNREADABLE).read_bytes()
    assert _calls(mnt)["read"] >= 3 * MiB // (128 * 1024)


if __name__ == "__main__":
    serve(*sys.argv[1:])
