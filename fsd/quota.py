"""Usage limits on the upper: `quota_bytes=` and `quota_inodes=`.

Every change of the upper passes through fsd, so fsd can keep its usage exact on
any filesystem, rootless included: the allocated bytes of every upper inode are
known by st_ino (hard links count once), measured by a walk at mount and by
lstat/fstat after each change.  A change that would pass a limit fails with
EDQUOT before anything is written; a write near the limit is shortened to what
fits, so a file holds exactly what was accepted.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import fail


class Quota:
    def __init__(self, max_bytes: int | None, max_inodes: int | None):
        self.max_bytes = max_bytes
        self.max_inodes = max_inodes
        self.allocated: dict[int, int] = {}  # upper st_ino -> allocated bytes
        self.used = 0

    def scan(self, upper_fd: int) -> None:
        """Measure the upper (run in a worker thread for a big one)."""
        self.allocated.clear()
        self.used = 0
        self.record(os.fstat(upper_fd))
        for _, dirnames, filenames, dirfd in os.fwalk(b".", dir_fd=upper_fd):
            for name in dirnames + filenames:
                self.record(os.lstat(name, dir_fd=dirfd))

    def record(self, st: os.stat_result) -> None:
        """An upper inode was made or changed: take its allocated size."""
        new = st.st_blocks * 512
        self.used += new - self.allocated.get(st.st_ino, 0)
        self.allocated[st.st_ino] = new

    def released(self, st: os.stat_result) -> None:
        """A name of an upper inode is going away (st taken before)."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self.used -= self.allocated.pop(st.st_ino, 0)

    @property
    def room(self) -> int | None:
        """Bytes that may still be allocated; None without a byte limit."""
        return None if self.max_bytes is None else self.max_bytes - self.used

    def check(self, nbytes: int = 0, inodes: int = 0) -> None:
        """EDQUOT if nbytes more and inodes more objects would pass a limit."""
        if self.max_bytes is not None and nbytes > 0 and self.used + nbytes > self.max_bytes:
            raise fail(errno.EDQUOT)
        if self.max_inodes is not None and inodes > 0 and len(self.allocated) + inodes > self.max_inodes:
            raise fail(errno.EDQUOT)

    def write_size(self, st: os.stat_result, offset: int, size: int) -> int:
        """How much of a write of `size` bytes at `offset` into the file whose
        current stat is st may go ahead (0: EDQUOT).  Rewriting allocated data
        costs nothing."""
        room = self.room
        if room is None or size <= room:
            return size
        if offset + size <= st.st_size and st.st_blocks * 512 >= st.st_size:
            return size  # rewrites data already allocated
        return max(0, min(size, room - room % 4096))  # whole blocks, so nothing passes the limit

    def statfs(self, out, frsize: int) -> None:
        """Show the limits as the filesystem's size in a statvfs reply."""
        if self.max_bytes is not None:
            out.f_blocks = self.max_bytes // frsize
            free = max(0, self.max_bytes - self.used) // frsize
            out.f_bfree = min(out.f_bfree, free)
            out.f_bavail = min(out.f_bavail, free)
        if self.max_inodes is not None:
            out.f_files = self.max_inodes
            free = max(0, self.max_inodes - len(self.allocated))
            out.f_ffree = min(out.f_ffree, free)
            out.f_favail = min(out.f_favail, free)
