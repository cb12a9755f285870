"""The driver interface and what every driver shares: seeing its mounts.

A driver is told, for one container, its own dir (`cdir`, created empty by
the store) and its image's layer content dirs TOP first (`lowers`).  It owns
what goes inside `cdir`.  Contract of each method:

- `create(cdir, lowers)`: prepare the container's dirs; may be slow (vfs
  copies), so the store calls it outside the lock.
- `mount(cdir, lowers, quota) -> Mounted`: make the merged tree live; the store
  calls it only when the registry holds no live mount.  `MountFailed` on failure.
- `check_quota(quota)`: DriverError unless the driver can hold the container's
  writable layer to `quota` (`records.Quota`).  Only `fuse` can: every write
  passes through fsd (`quota_bytes=`, `quota_inodes=`).  The kernel overlay
  and vfs write straight to the store's filesystem, and a project quota is
  not ours to set, so they refuse a container with limits.
- `writable_usage(cdir)`: (bytes, objects) of what the container wrote, as
  the limits count them.
- `umount(cdir, mounted)`: undo `mount`; a mount already gone is not an error.
- `alive(cdir, mounted)`: whether the recorded mount still works (a dead fuse
  daemon leaves "transport endpoint is not connected").
- `clean_dead(cdir, mounted)`: detach what a dead mount left behind.
- `changes(cdir, lowers)`: the container's A/C/D list (see `changelist.py`).
- `changeset(cdir, lowers, epoch)`: the entries of a layer holding the
  container's changes (see `tarentries.py`); the container is not mounted,
  or is held still by `frozen`.
- `frozen(cdir, mounted)`: a context in which the mounted container's
  writable layer does not change (only a driver with `can_freeze`: fuse).

A snapshotting driver (`snapshots = True`: btrfs; zfs would be another)
keeps, beside each layer's diff dir, a full tree of the image up to that
layer, made from its parent's by snapshot, and makes a container a writable
snapshot of its top layer's tree; it sees only `lowers` like any driver.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import ContextManager, Iterator

from .. import changelist, fsutil, tarentries
from ..errors import DriverError
from ..fsprobe import mount_fstype
from ..records import Quota


@dataclass(frozen=True)
class Mounted:
    mountpoint: str
    pid: int | None = None


def reachable(path: str) -> bool:
    """False when the fs at `path` answers ENOTCONN (dead fuse daemon).
    statfs always reaches the daemon; stat may be answered from the cache."""
    try:
        os.statvfs(path)
        return True
    except OSError as e:
        return e.errno not in (errno.ENOTCONN, errno.ECONNABORTED)


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Driver:
    name = "base"
    form = "oci"                   # layout.FORM_*: marker form of layer dirs
    has_upper = True
    snapshots = False              # keeps per-layer snapshot trees (btrfs, zfs)
    can_freeze = False             # can hold a mounted container's upper still

    def check_usable(self) -> None:
        """DriverError when this driver cannot work here."""

    def create(self, cdir: str, lowers: list[str]) -> None:
        for sub in ("upper", "work", "merged"):
            os.mkdir(os.path.join(cdir, sub), 0o755)

    def check_quota(self, quota: Quota) -> None:
        if quota:
            raise DriverError(self.name, "cannot enforce a container size or inode limit "
                                         "(--size/--inodes, storage.conf size/inodes); "
                                         "only the fuse driver can")

    def writable_usage(self, cdir: str) -> tuple[int, int]:
        return fsutil.tree_usage(os.path.join(cdir, "upper"))

    def mount(self, cdir: str, lowers: list[str], quota: Quota = Quota()) -> Mounted:
        raise NotImplementedError

    def umount(self, cdir: str, mounted: Mounted) -> None:
        raise NotImplementedError

    def alive(self, cdir: str, mounted: Mounted) -> bool:
        return mount_fstype(mounted.mountpoint) is not None \
            and reachable(mounted.mountpoint) and pid_alive(mounted.pid)

    def clean_dead(self, cdir: str, mounted: Mounted) -> None:
        self.umount(cdir, mounted)

    def frozen(self, cdir: str, mounted: Mounted) -> ContextManager[None]:
        raise DriverError(self.name, "cannot hold a mounted container still")

    def changes(self, cdir: str, lowers: list[str]) -> list[tuple[str, str]]:
        return changelist.upper_changes(os.path.join(cdir, "upper"), lowers)

    def changeset(self, cdir: str, lowers: list[str],
                  epoch: int | None) -> Iterator[tarentries.Entry]:
        return tarentries.tree_entries(os.path.join(cdir, "upper"), markers=True,
                                      epoch=epoch)
