"""File-system mechanisms the store is built from.

- `atomic_write`, `atomic_file`: temp file, fsync, rename, fsync of the
  directory: a reader sees the old bytes or the new, never half.
- `StoreLock`: the store lock (flock on `lock`); the holder writes its pid
  there so a waiter can name it.  The kernel drops it when the holder dies.
- `Lease`: a private staging dir whose `lease` file is flock'ed for the life of
  the command; `lease_alive` tells a dead command's leftovers from live work.
- `open_beneath`: open a relative path under a dirfd without following any
  symlink, for names that come from untrusted input.
- `remove_tree`, `sync_tree`, `allocated_size`, `clone_file`.
- `spread_subdirs`: where ext4 puts the inodes of what a command stages.
- `crash_point`: where crash tests stop a command (`$STRATA_CRASH_AT`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import signal
import stat
import sys
import time
from typing import BinaryIO, Iterator

from . import layout
from .errors import StoreLocked, UnsafeArchive

_libc = ctypes.CDLL(None, use_errno=True)
FICLONE = 0x40049409
FS_IOC_GETFLAGS = 0x80086601   # linux/fs.h: _IOR('f', 1, long); the kernel reads an int
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000      # `chattr +T`


_pause_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when $STRATA_CRASH_AT names this
    point, so crash tests can stop a command at an exact step; SIGSTOP it when
    $STRATA_PAUSE_AT is `name` or `name:N` (the N-th time it gets here), so a
    test can act while the command is in flight (never at a point inside the
    store lock)."""
    if os.environ.get("STRATA_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("STRATA_PAUSE_AT")
    if pause and pause.partition(":")[0] == name:
        _pause_hits[name] = _pause_hits.get(name, 0) + 1
        if str(_pause_hits[name]) == (pause.partition(":")[2] or "1"):
            os.kill(os.getpid(), signal.SIGSTOP)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably."""
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(parent)


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A new file published at `path` when the block ends without an error
    (temp file beside it, fsync, rename, fsync of the directory); on an error
    nothing appears and the temp file is removed."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    f = os.fdopen(fd, "wb", buffering=1 << 20)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        os.unlink(tmp)
        raise
    f.close()
    os.rename(tmp, path)
    fsync_dir(parent)


def remove_file(path: str) -> None:
    """Unlink `path` if present and fsync its directory."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


class StoreLock:
    """Exclusive store lock.  Use as a context manager; re-entrant per object."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        start = time.monotonic()
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise StoreLocked(os.path.dirname(self.path), holder, self.timeout)
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


class Lease:
    """A staging dir owned by this process while its `lease` file is locked.

    The kernel releases the flock when the process dies, however it dies, so a
    later command can tell leftovers (`lease_alive` false) from live work.
    """

    def __init__(self, staging_root: str):
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.path = os.path.join(staging_root, self.token)
        os.makedirs(self.path, mode=0o700)
        self._fd = os.open(os.path.join(self.path, layout.LEASE),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        """Remove the staging dir and let the lease go."""
        if self._fd is None:
            return
        remove_tree(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lease_alive(staging_root: str, token: str | None) -> bool:
    """Whether the command owning `token` still runs (its lease is locked)."""
    if not token or "/" in token or token.startswith("."):
        return False
    return _flock_refused(os.path.join(staging_root, token, layout.LEASE), fcntl.LOCK_SH)


def flock_held(path: str) -> bool:
    """Whether some process holds a flock on the file at `path`."""
    return _flock_refused(path, fcntl.LOCK_EX)


def _flock_refused(path: str, mode: int) -> bool:
    """Whether a flock of `mode` on the file at `path` would have to wait
    (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def exclusive_flock(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed); waits for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Remove a file or tree, even one with read-only directories in it."""
    def onerror(func, p, exc_info):
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if not isinstance(exc, PermissionError):
            raise exc
        # A tar or a container may leave 0500 dirs; removal needs write access.
        os.chmod(os.path.dirname(p), 0o700)
        if func in (os.unlink, os.rmdir, os.remove):
            func(p)
        else:  # could not open or list the directory p itself
            os.chmod(p, 0o700)
            shutil.rmtree(p, onerror=onerror)

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)


def sync_tree(path: str) -> None:
    """Make everything under `path` durable: one syncfs(2) of its filesystem."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def spread_subdirs(path: str) -> None:
    """Mark the directory `path` the top of unrelated trees (`chattr +T`):
    ext4's Orlov allocator then puts each new subdirectory, and the files
    made under it, in a block group it picks among the emptiest, instead of
    next to its parent.  Why, for the staging dir: on ext4 without a journal,
    every inode made scans its block group's free inodes past those freed in
    the last minute (`recently_deleted`, kept from reuse for fsck's sake), so
    a layer staged where a removed one was (a `reset`, `rmi` or `prune` just
    before) paid 150-300 µs per file created: the placeholder tree of a lazy
    pull (6,800 entries) took 1.3 s of system time, 0.1 s with the flag, as
    each command's staging dir lands in a block group of its own.  Elsewhere (another filesystem, no right to set it) nothing
    changes, and that is no error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf, sys.byteorder)
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS,
                        (flags | FS_TOPDIR_FL).to_bytes(4, sys.byteorder))
    except OSError:
        pass
    finally:
        os.close(fd)


def allocated_size(path: str) -> int:
    """Real allocated bytes under `path`, hard links counted once, as `du -sx`:
    what is mounted below (a container's merged mount) is not counted."""
    return tree_usage(path)[0]


def tree_usage(path: str) -> tuple[int, int]:
    """(allocated bytes, objects) under `path` itself included, hard links
    once, what is mounted below left out: what fsd's quota_bytes= and
    quota_inodes= count for an upper."""
    seen: set[tuple[int, int]] = set()
    total = objects = 0
    dev = os.lstat(path).st_dev
    stack = [path]
    while stack:
        top = stack.pop()
        st = os.lstat(top)
        total += st.st_blocks * 512
        objects += 1
        if not stat.S_ISDIR(st.st_mode):
            continue
        with os.scandir(top) as it:
            for entry in it:
                est = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    if est.st_dev == dev:
                        stack.append(entry.path)
                    continue
                if est.st_nlink > 1:
                    key = (est.st_dev, est.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += est.st_blocks * 512
                objects += 1
    return total, objects


def open_beneath(dirfd: int, relpath: str, flags: int = os.O_RDONLY) -> int:
    """Open `relpath` under `dirfd` following no symlink on the way.

    Refuses `..`, absolute paths and any symlinked component with
    UnsafeArchive (the name comes from untrusted input).
    """
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if relpath.startswith("/") or ".." in parts or not parts:
        raise UnsafeArchive(relpath, "path leaves the archive")
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeArchive(relpath, "path goes through a symlink") from None
                raise
            os.close(fd)
            fd = nfd
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeArchive(relpath, "is a symlink") from None
            raise
    finally:
        os.close(fd)


def clone_file(src_fd: int, dst_fd: int) -> None:
    """Copy all data of src into dst: reflink when the fs can, else copy_file_range."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError:
        pass
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(src_fd, offset, os.SEEK_SET)
            os.lseek(dst_fd, offset, os.SEEK_SET)
            while True:
                data = os.read(src_fd, 1 << 20)
                if not data:
                    return
                os.write(dst_fd, data)
        if n == 0:
            break
        offset += n
