"""pyfuse3 as scripts/install builds it: fallocate and lseek reach the filesystem.

Stock pyfuse3 3.5.0 leaves the FUSE fallocate and lseek requests unanswered
by the filesystem (libfuse replies ENOSYS): the kernel then fails every
fallocate(2) on the mount with EOPNOTSUPP, and lseek(SEEK_HOLE) finds a hole
only at the end of the file. patches/pyfuse3-3.5.0-fallocate-lseek.patch adds
Operations.fallocate(fh, mode, offset, length) and Operations.lseek(fh, offset,
whence); these tests fail without it.

The filesystem under test is a flat passthrough of one backing directory,
defined below and served by a child process (`python THIS_FILE BACKING
MOUNTPOINT`), so pyfuse3's one-mount-per-process state stays out of pytest.
The results are checked on the backing file: blocks freed, zeros read, the
holes that lseek reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyfuse3
import pytest
import trio

FSTYPE = "fuse.strata-pyfuse3-patch"
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


class Passthrough(pyfuse3.Operations):
    """Regular files in the root of the backing directory, nothing more.

    Attributes are not cached (timeouts 0), so every stat shows the backing file."""

    enable_writeback_cache = False

    def __init__(self, backing: str):
        super().__init__()
        self.dirfd = os.open(backing, os.O_RDONLY | os.O_DIRECTORY)
        self.names: dict[int, bytes] = {}  # inode -> name in the backing dir
        self.inodes: dict[bytes, int] = {}

    def _inode(self, name: bytes) -> int:
        if name not in self.inodes:
            self.inodes[name] = pyfuse3.ROOT_INODE + 1 + len(self.inodes)
            self.names[self.inodes[name]] = name
        return self.inodes[name]

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
        return self._entry(self._inode(name), st)

    async def getattr(self, inode, ctx):
        with _fuse_errors():
            if inode == pyfuse3.ROOT_INODE:
                return self._entry(inode, os.fstat(self.dirfd))
            return self._entry(inode, os.stat(self.names[inode], dir_fd=self.dirfd,
                                              follow_symlinks=False))

    async def open(self, inode, flags, ctx):
        with _fuse_errors():
            fd = os.open(self.names[inode], flags | os.O_NOFOLLOW, dir_fd=self.dirfd)
        return pyfuse3.FileInfo(fh=fd)

    async def create(self, parent_inode, name, mode, flags, ctx):
        with _fuse_errors():
            fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW, mode, dir_fd=self.dirfd)
            return pyfuse3.FileInfo(fh=fd), self._entry(self._inode(name), os.fstat(fd))

    async def read(self, fh, off, size):
        with _fuse_errors():
            return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        with _fuse_errors():
            return os.pwrite(fh, buf, off)

    async def release(self, fh):
        os.close(fh)

    async def fallocate(self, fh, mode, offset, length):
        with _fuse_errors():
            fallocate(fh, mode, offset, length)

    async def lseek(self, fh, offset, whence):
        with _fuse_errors():
            return os.lseek(fh, offset, whence)


def serve(backing: str, mountpoint: str) -> None:
    """Mount the passthrough of backing on mountpoint until it is unmounted."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = set(pyfuse3.default_options) | {"fsname=strata-pyfuse3-patch",
                                              "subtype=strata-pyfuse3-patch"}
    pyfuse3.init(Passthrough(backing), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=False)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture
def passthrough(tmp_path, fuse_deadline, request):
    """(backing dir, mountpoint) of a running passthrough mount.

    Unmounted at teardown even when the test failed; a daemon that crashed,
    exited non-zero or logged an error fails the test."""
    from support import mounts  # here: the child, run as a script, has no tests/ on its path

    if os.geteuid() != 0:
        pytest.skip("needs root (a real FUSE mount)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    _skip_unless_backing_punches_holes(backing)

    log_path = tmp_path / "passthrough.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, __file__, str(backing), str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        mounts.wait_for(lambda: mounts.is_mounted(mnt, FSTYPE) or proc.poll() is not None, 15)
        assert mounts.is_mounted(mnt, FSTYPE), \
            f"passthrough did not mount (exit {proc.poll()}):\n{log_path.read_text()}"
        fuse_deadline.watch_mount(mnt)
        yield backing, mnt
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
    log_text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        problems.append(f"passthrough exited {proc.returncode}")
    if "ERROR" in log_text or "Traceback" in log_text:
        problems.append("passthrough logged errors")
    if problems:
        pytest.fail("; ".join(problems) + ":\n" + log_text, pytrace=False)


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
    backing, mnt = passthrough
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
    backing, mnt = passthrough
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


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
