"""Which driver a new store gets when none is configured, and why.

`choose(fstype, available)` is the matrix of issue 6, by the type of the
filesystem under the store root (`fsprobe.mount_of`):

- btrfs → `btrfs` (layers and containers are subvolume snapshots: no copy,
  no mount, no daemon);
- ext4, xfs → `fuse`.  Also for root, where the kernel overlay would work:
  fuse is the project's default, it alone enforces container limits
  (`--size`/`--inodes`, user_quota), and it behaves the same with and without
  root, so a store moves between the two without surprises.  `overlay` stays
  one `driver = "overlay"` in storage.conf away;
- anything else (tmpfs, an overlay, a network fs, unknown) → `vfs`, which
  works anywhere but copies the whole image into every container: a
  warning says so.

A store keeps the driver it was created with (`strata.json`); the choice is
made once, and its reason recorded there for `layers info`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import fsprobe

FUSE_FS = frozenset({"ext4", "xfs"})
VFS_WARNING = ("the vfs driver copies the whole image into every container; expect "
               "disk use of one image per container (set driver in storage.conf)")


@dataclass(frozen=True)
class Choice:
    driver: str
    reason: str
    warning: str | None = None


def choose(fstype: str | None, available: tuple[str, ...]) -> Choice:
    """The driver for a new store on a filesystem of type `fstype`."""
    fs = fstype or "an unknown filesystem"
    if fstype == "btrfs" and "btrfs" in available:
        return Choice("btrfs", "the store is on btrfs: layers and containers are "
                               "subvolume snapshots")
    if fstype in FUSE_FS or fstype == "btrfs":
        return Choice("fuse", f"the store is on {fs}: fsd overlays the layers "
                              "(the default; the kernel overlay only when configured)")
    return Choice("vfs", f"the store is on {fs}, where no overlay driver is chosen: "
                         "full copies", VFS_WARNING)


def choose_for(root: str, available: tuple[str, ...]) -> Choice:
    """`choose` for the filesystem that holds `root` (or would: its nearest
    existing ancestor)."""
    mount = fsprobe.mount_of(root)
    return choose(mount.fstype if mount else None, available)
