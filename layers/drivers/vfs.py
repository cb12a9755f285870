"""The `vfs` driver: a full copy of the image per container; works anywhere.

`create` applies the layers bottom-up into `cdir/rootfs`: whiteouts remove,
opaque dirs are emptied first, everything else is copied with owner, mode,
xattrs and times (file data by reflink where the filesystem can).  Hard links
inside the image stay hard links.  Nothing is mounted: `mount` returns the
rootfs itself, and changes are found by comparing it with the layers.
Nothing stands between a process and the rootfs, so no limit can hold: a
container with limits is refused (`Driver.check_quota`).
"""

from __future__ import annotations

import errno
import os
import stat

from .. import changelist, fsutil, tarentries, layout
from ..records import Quota
from .base import Driver, Mounted


def _copy_meta(src: str, dst: str, st: os.stat_result, privileged: bool) -> None:
    if privileged:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    try:
        for key in os.listxattr(src, follow_symlinks=False):
            if key in layout.OPAQUE_XATTRS:
                continue
            try:
                os.setxattr(dst, key, os.getxattr(src, key, follow_symlinks=False),
                            follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP):
                    raise
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM):
            raise
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _clear_dir(path: str) -> None:
    for name in os.listdir(path):
        fsutil.remove_tree(os.path.join(path, name))


def apply_layer(layer: str, target: str, links: dict, privileged: bool) -> None:
    """Apply one layer dir onto the tree `target` (see the module doc)."""
    dir_times: list[tuple[str, str, os.stat_result]] = []

    def walk(src_dir: str, dst_dir: str) -> None:
        entries = sorted(os.scandir(src_dir), key=lambda e: e.name)
        names = {e.name for e in entries}
        if layout.is_opaque_dir(src_dir, names):
            _clear_dir(dst_dir)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            target_name = layout.whiteout_target(e.name)
            if target_name is not None:
                fsutil.remove_tree(os.path.join(dst_dir, target_name))
                continue
            if e.name.startswith(layout.META_PREFIX):
                continue
            dst = os.path.join(dst_dir, e.name)
            if layout.is_whiteout_dev(st):
                fsutil.remove_tree(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                if not os.path.isdir(dst) or os.path.islink(dst):
                    fsutil.remove_tree(dst)
                    os.mkdir(dst, 0o700)
                walk(e.path, dst)
                dir_times.append((dst, e.path, st))
                continue
            fsutil.remove_tree(dst)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links and os.path.lexists(links[key]):
                os.link(links[key], dst, follow_symlinks=False)
                continue
            if stat.S_ISREG(st.st_mode):
                src_fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_CLOEXEC, 0o600)
                    try:
                        fsutil.clone_file(src_fd, dst_fd)
                    finally:
                        os.close(dst_fd)
                finally:
                    os.close(src_fd)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(e.path), dst)
            else:
                os.mknod(dst, st.st_mode, st.st_rdev)
            _copy_meta(e.path, dst, st, privileged)
            if st.st_nlink > 1:
                links[key] = dst

    walk(layer, target)
    dir_times.append((target, layer, os.lstat(layer)))
    for dst, src, st in dir_times:   # deepest first: walk appended them post-order
        _copy_meta(src, dst, st, privileged)


class VfsDriver(Driver):
    name = "vfs"

    def __init__(self, privileged: bool):
        self.privileged = privileged

    def create(self, cdir: str, lowers: list[str]) -> None:
        rootfs = os.path.join(cdir, "rootfs")
        os.mkdir(rootfs, 0o755)
        links: dict = {}
        for layer in reversed(lowers):
            apply_layer(layer, rootfs, links, self.privileged)
            links.clear()

    def mount(self, cdir: str, lowers: list[str], quota: Quota = Quota()) -> Mounted:
        self.check_quota(quota)
        return Mounted(os.path.join(cdir, "rootfs"), None)

    def umount(self, cdir: str, mounted: Mounted) -> None:
        pass

    def alive(self, cdir: str, mounted: Mounted) -> bool:
        return os.path.isdir(mounted.mountpoint)

    def writable_usage(self, cdir: str) -> tuple[int, int]:
        return fsutil.tree_usage(os.path.join(cdir, "rootfs"))

    def changes(self, cdir: str, lowers: list[str]) -> list[tuple[str, str]]:
        return changelist.tree_changes(os.path.join(cdir, "rootfs"), lowers)

    def changeset(self, cdir: str, lowers: list[str], epoch: int | None):
        rootfs = os.path.join(cdir, "rootfs")
        return tarentries.changes_entries(rootfs, changelist.tree_changes(rootfs, lowers), epoch)
