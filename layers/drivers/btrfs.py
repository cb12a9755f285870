"""The `btrfs` driver: layers and containers as btrfs subvolume snapshots.

The store keeps every layer's diff dir as with any driver (export, save,
check --verify and the other drivers read it).  Beside it this driver keeps
`layers/<hex>/btrfs/` (`layout.LAYER_SUBVOLUME`): a subvolume holding the
full tree of the image up to that layer, made the first time a container
needs it — a writable snapshot of the parent layer's subvolume (an empty
subvolume for a bottom layer) with the layer's diff applied, built under a
temporary name in the layer dir and renamed into place (a concurrent
create that lost the race drops its own).  A container's `cdir/rootfs` is a
writable snapshot of its top layer's subvolume: creating it copies nothing.

Like vfs nothing is mounted: `mount` returns the rootfs, changes are found
by comparing it with the layers, and container limits are refused.
Subvolumes are removed as plain trees (`fsutil.remove_tree`: rmdir of an
empty subvolume), so removing a layer or a container needs nothing of this
driver.  Subvolumes are made with the kernel's ioctls, not btrfs-progs.

Other snapshotting filesystems (zfs: a dataset per layer, a clone per
container) fit the same shape: `Driver.snapshots` says a driver keeps such
per-layer trees; nothing more exists for zfs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct

from .. import fsprobe, fsutil, layout
from ..errors import DriverError
from .vfs import VfsDriver, apply_layer

# linux/btrfs.h: _IOW(0x94, nr, struct btrfs_ioctl_vol_args) (4096 bytes:
# an s64 fd and a 4088-byte name)
_VOL_ARGS = struct.Struct("q4088s")
IOC_SNAP_CREATE = 0x50009401
IOC_SUBVOL_CREATE = 0x5000940E
SUBVOL_ROOT_INO = 256                 # the inode number of every subvolume's root


def _vol_args(fd: int, name: str) -> bytearray:
    raw = os.fsencode(name)
    if b"/" in raw or len(raw) >= 4088:
        raise ValueError(f"bad subvolume name {name!r}")
    return bytearray(_VOL_ARGS.pack(fd, raw))   # mutable: ioctl passes it as is


def _in_dir(parent: str, request: int, fd: int, name: str) -> None:
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(dfd, request, _vol_args(fd, name))
    finally:
        os.close(dfd)


def create_subvolume(path: str) -> None:
    """An empty subvolume at `path` (its parent dir exists)."""
    _in_dir(os.path.dirname(path), IOC_SUBVOL_CREATE, 0, os.path.basename(path))


def snapshot(source: str, path: str) -> None:
    """A writable snapshot of the subvolume `source` at `path`."""
    sfd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _in_dir(os.path.dirname(path), IOC_SNAP_CREATE, sfd, os.path.basename(path))
    finally:
        os.close(sfd)


def is_subvolume(path: str) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOL_ROOT_INO
    except (FileNotFoundError, NotADirectoryError):
        return False


class BtrfsDriver(VfsDriver):
    """vfs's container rootfs (mount, diff, changeset as vfs), made by snapshots."""

    name = "btrfs"
    has_upper = False
    snapshots = True

    def __init__(self, root: str, privileged: bool):
        super().__init__(privileged)
        self.root = root

    def check_usable(self) -> None:
        mount = fsprobe.mount_of(self.root)
        if mount is None or mount.fstype != "btrfs":
            where = f"{mount.fstype} at {mount.mountpoint}" if mount else "unknown"
            raise DriverError(self.name, f"the store {self.root} is not on btrfs ({where})")

    def layer_subvolume(self, lower: str) -> str | None:
        """The subvolume of the layer whose diff dir is `lower`; None when
        `lower` is no layer's (the empty dir of an image without layers)."""
        if os.path.basename(lower) != layout.LAYER_DIFF:
            return None
        return os.path.join(os.path.dirname(lower), layout.LAYER_SUBVOLUME)

    def _ensure(self, lowers: list[str]) -> str | None:
        """The subvolume of `lowers[0]` (TOP first), built with those below
        it where missing; None for an image without layers."""
        target = self.layer_subvolume(lowers[0]) if lowers else None
        if target is None or is_subvolume(target):
            return target
        parent = self._ensure(lowers[1:])
        tmp = os.path.join(os.path.dirname(target),
                           f".{layout.LAYER_SUBVOLUME}-{secrets.token_hex(4)}")
        if parent is None:
            create_subvolume(tmp)
        else:
            snapshot(parent, tmp)
        try:
            apply_layer(lowers[0], tmp, {}, self.privileged)
            os.rename(tmp, target)
        except OSError:
            fsutil.remove_tree(tmp)
            if not is_subvolume(target):   # not a lost race: a real failure
                raise
        return target

    def create(self, cdir: str, lowers: list[str]) -> None:
        self.check_usable()
        rootfs = os.path.join(cdir, "rootfs")
        top = self._ensure(lowers)
        if top is None:
            create_subvolume(rootfs)
            os.chmod(rootfs, 0o755)
        else:
            snapshot(top, rootfs)
