"""fsd's work area: where every object is built before it is renamed into the
upper, and what a crash can leave there.

The work area is fsd's own directory inside the workdir, on the upper's
filesystem (layout and record formats: ondisk.py):

- `tmp/`: objects being built (a copy-up, a new object replacing a whiteout, a
  directory tree being moved).  A crash leaves at most half-built objects
  here, never in the upper; `open` empties it, so they are discarded at the
  next mount.
- `index/`: a copy of a lower file with several names, linked here before it is
  published, until every name of it links the copy; recovery.py finishes or
  drops what a crash left.
- `moving`: the journal of a directory move, written before the upper changes
  and removed after; recovery.py finishes a move cut short.
- `lock`: flock'd by the mount that owns the work area, so that two mounts never
  share an upper.
- `whiteout`: the character device 0/0 that every whiteout fsd makes is a hard
  link of (`link_whiteout`).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterator

from .layer import UPPER, Layer
from .ondisk import (ACL_DEFAULT, INDEX_DIR, JOURNAL, LOCK, SHARED_WHITEOUT, TMP_DIR, WORK_AREA,
                     format_journal, write_whiteout_dev,
                     index_name, parse_index_name, parse_journal)
from .params import ParamError


LOCK_WAIT = 2.0  # seconds a mount waits for the work area's last daemon to exit


class WorkArea:
    def __init__(self, layer: Layer, lock_fd: int, made_as: tuple[int, int, int] | None = None):
        self.layer = layer
        self._lock_fd = lock_fd
        self._serial = itertools.count()
        # (uid, gid, umask): what a regular file made in the scratch directory
        # gets, its owner and the bits taken from the mode it is made with (a
        # copy-up skips a chown or chmod that would change nothing); None
        # where the directory shapes them (set-group-id, a default ACL)
        self.made_as = made_as
        # whether `link_whiteout` links the shared whiteout (None: not made yet
        # at this mount; False: the filesystem refuses such links)
        self._shared_whiteout: bool | None = None

    @classmethod
    def open(cls, workdir: str, upperdir: str) -> "WorkArea":
        """Take fsd's directory in the workdir: locked against a second mount,
        emptied of what an earlier run left half-built.

        The lock is held until the daemon exits, which is a moment after its
        unmount: a remount right after `fusermount3 -u` waits up to
        LOCK_WAIT seconds for it; past that, ParamError naming the holder."""
        path = os.path.join(workdir, WORK_AREA)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        lock_fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                holders = _flock_holders(os.fstat(lock_fd))
                os.close(lock_fd)
                by = f" (pid {', '.join(map(str, holders))})" if holders else ""
                raise ParamError(f"upperdir '{upperdir}' and workdir '{workdir}' "
                                 f"are in use by another mount{by}") from None
        layer = Layer(path, UPPER)
        discard_tree(layer, TMP_DIR)
        layer.mkdir(TMP_DIR, 0o700)
        if layer.try_lstat(INDEX_DIR) is None:
            layer.mkdir(INDEX_DIR, 0o700)
        return cls(layer, lock_fd, _made_as(layer))

    def close(self) -> None:
        self.layer.close()
        os.close(self._lock_fd)

    def tmp_name(self) -> bytes:
        """A fresh name in the scratch directory."""
        return b"%s/%d" % (TMP_DIR, next(self._serial))

    @property
    def scratch(self) -> bytes:
        return TMP_DIR

    def discard(self, rel: bytes, release: Callable[[os.stat_result], None] | None = None) -> None:
        """Remove a work-area object (file or tree), ignoring what is already gone;
        `release(st)` is told of each object removed."""
        discard_tree(self.layer, rel, release)

    # --- whiteouts ----------------------------------------------------------------

    def link_whiteout(self, dst: Layer, rel: bytes) -> None:
        """Make a whiteout (a character device 0/0) at rel, a free name in dst
        (the upper, or this work area: one filesystem), as one more hard link
        of the work area's shared whiteout, as the kernel overlay shares one
        (ovl_whiteout): a link costs the filesystem a directory entry where a
        mknod costs an inode too (ext4, 1,000 whiteouts in a new directory:
        ~6 µs of CPU each against ~18).  One system call, as mknod: a crash
        leaves the whiteout or the free name.  The shared one is made at the
        first whiteout of each mount and again at its filesystem's link limit
        (EMLINK); where the filesystem refuses a link of it otherwise, each
        whiteout is made on its own from then on."""
        if self._shared_whiteout is None:
            self._shared_whiteout = self._make_shared_whiteout()
        if self._shared_whiteout:
            try:
                self.layer.link(SHARED_WHITEOUT, dst, rel)
                return
            except OSError as exc:
                if exc.errno == errno.EMLINK:
                    self._make_shared_whiteout()
                    self.layer.link(SHARED_WHITEOUT, dst, rel)
                    return
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                self._shared_whiteout = False
        write_whiteout_dev(dst, rel)

    def _make_shared_whiteout(self) -> bool:
        """A new shared whiteout, in place of any earlier one (whose links stay
        whiteouts); False where the work area cannot make a character device."""
        tmp = self.tmp_name()
        try:
            write_whiteout_dev(self.layer, tmp)
        except PermissionError:
            return False
        try:
            self.layer.rename(tmp, self.layer, SHARED_WHITEOUT)
        except BaseException:
            self.discard(tmp)
            raise
        return True

    # --- the hard-link index -------------------------------------------------------

    def index_entry(self, rel: bytes, index: int, st_ino: int) -> bytes:
        """Link a work-area copy of lower file (index, st_ino) into the index,
        so that its other names are linked to it at the next mount if a crash
        comes first; the caller removes the entry once they are."""
        entry = index_name(index, st_ino)
        self.discard(entry)
        self.layer.link(rel, self.layer, entry)
        return entry

    def index_entries(self) -> Iterator[tuple[bytes, tuple[int, int] | None, bool]]:
        """Each index entry: its name, (lower index, st_ino) or None for a name
        fsd did not write, and whether its copy was published (has another link)."""
        for name, _, _ in self.layer.scandir(INDEX_DIR):
            rel = INDEX_DIR + b"/" + name
            yield rel, parse_index_name(name), self.layer.lstat(rel).st_nlink > 1

    # --- the directory-move journal ----------------------------------------------

    def write_journal(self, src: bytes, dst: bytes, key: int) -> None:
        """Record a directory move before it changes the upper (synced, renamed
        into place: the journal is whole or absent; a half-written one is in
        the scratch directory, emptied at the next mount)."""
        tmp = self.tmp_name()
        fd = self.layer.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, format_journal(src, dst, key))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.layer.rename(tmp, self.layer, JOURNAL)

    def read_journal(self) -> tuple[bytes, bytes, int] | None:
        """(source, destination, origin number) of a move under way, or None."""
        try:
            fd = self.layer.open(JOURNAL, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return parse_journal(os.read(fd, 1 << 16))
        finally:
            os.close(fd)

    def clear_journal(self) -> None:
        self.layer.unlink(JOURNAL)


def _made_as(layer: Layer) -> tuple[int, int, int] | None:
    """How the scratch directory makes a regular file (see WorkArea.made_as),
    learnt from one made with mode 0777."""
    if layer.lstat(TMP_DIR).st_mode & stat.S_ISGID or layer.try_getxattr(TMP_DIR, ACL_DEFAULT) is not None:
        return None
    probe = TMP_DIR + b"/made"
    fd = layer.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
        layer.unlink(probe)
    return st.st_uid, st.st_gid, ~st.st_mode & 0o777


def _flock_holders(st: os.stat_result) -> list[int]:
    """Pids holding a flock on the file `st` describes, from /proc/locks
    (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, device numbers in hex)."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return sorted({int(fields[4]) for fields in (line.split() for line in lines)
                   if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key
                   and fields[4].isdigit()})


def discard_tree(layer: Layer, rel: bytes, release=None) -> None:
    """Remove rel and everything below it in layer; missing is fine.
    `release(st)` is told of each object removed; without it, what is below rel
    is removed by its directory entries' types, with no lstat of each (a
    directory removed from the merged view holds a whiteout per name it had).
    Iterative: trees can be thousands of levels deep."""
    try:
        st = layer.lstat(rel)
    except FileNotFoundError:
        return
    pending = [(rel, stat.S_ISDIR(st.st_mode), st, False)]
    while pending:
        path, is_dir, st, listed = pending.pop()
        if is_dir and not listed:
            pending.append((path, True, st, True))
            for name, child_is_dir in layer.scandir_is_dir(path):
                child = path + b"/" + name
                if release is None:
                    pending.append((child, child_is_dir, None, False))
                else:
                    child_st = layer.lstat(child)
                    pending.append((child, stat.S_ISDIR(child_st.st_mode), child_st, False))
            continue
        if is_dir:
            layer.rmdir(path)
        else:
            layer.unlink(path)
        if release is not None:
            release(st)
