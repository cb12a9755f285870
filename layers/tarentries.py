"""What goes into a layer tar made from a directory: its entries, in order.

`tree_entries(root, …)` walks an upper dir, a layer dir or a plain tree and
yields `(TarInfo, source path)` pairs, the source being the file whose data
the entry carries (None for entries without data).  `changes_entries` does
the same for a full copy (vfs) given its A/C/D list.  `archive.TarWriter`
turns them into a tar and `archive.build_layer` into a layer dir.

The order is an OCI changeset's, and deterministic: a directory's entry, then
its opaque marker `.wh..wh..opq`, then its whiteouts `.wh.NAME` sorted by
NAME, then its other entries sorted by name (bytewise), each directory's
contents right after it.  Markers are read in every form (`layout`) and
written in the OCI form.  Owner and mode are what the container sees (the
`override_stat` xattr of a rootless store, else the real ones); overlay-private
xattrs are never written.  With `epoch` (SOURCE_DATE_EPOCH), no timestamp is
later than it.  Sockets cannot be in a tar and are left out.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

from . import layout

Entry = tuple[tarfile.TarInfo, "str | None"]
_SKIPPED_XATTRS = ("security.selinux",)   # a host's labels, not the image's


class UpperNeedsLower(Exception):
    """An upper entry that refers to a lower one for its content: a file that
    holds metadata only (metacopy), a directory renamed by redirect."""

    def __init__(self, path: str, what: str):
        super().__init__(path)
        self.path = path
        self.what = what


@dataclass
class _Walk:
    root: str
    epoch: int | None
    markers: bool               # interpret whiteouts and opaque markers
    links: dict

    def mtime(self, st: os.stat_result) -> int:
        t = int(st.st_mtime)
        return min(t, self.epoch) if self.epoch is not None else t


def tree_entries(root: str, markers: bool = True, epoch: int | None = None) -> Iterator[Entry]:
    """Entries of the tree at `root` (its own entry not included).  With
    `markers`, whiteouts and opaque dirs of any form become OCI markers; without
    (a merged tree), every name is an ordinary entry."""
    w = _Walk(os.path.abspath(root), epoch, markers, {})
    yield from _dir_entries(w, [], lambda parts: _disk_children(w, parts))


def changes_entries(tree: str, changes: list[tuple[str, str]],
                    epoch: int | None = None) -> Iterator[Entry]:
    """Entries for a full copy `tree` whose changes over its image are
    `changes` (A/C/D, absolute paths): what was added or changed, the
    directories leading to it, and a whiteout for each deletion."""
    plan: dict[tuple[str, ...], tuple[set[str], set[str]]] = {}   # dir → (names, whiteouts)

    def slot(parts: tuple[str, ...]) -> tuple[set[str], set[str]]:
        return plan.setdefault(parts, (set(), set()))

    for kind, path in changes:
        parts = tuple(p for p in path.split("/") if p)
        if not parts:
            continue
        if kind == "D":
            slot(parts[:-1])[1].add(parts[-1])
        else:
            slot(parts[:-1])[0].add(parts[-1])
        for i in range(len(parts) - 1):
            slot(parts[:i])[0].add(parts[i])
    w = _Walk(os.path.abspath(tree), epoch, False, {})

    def children(parts: list[str]) -> tuple[bool, list[str], list[str]]:
        names, whiteouts = plan.get(tuple(parts), (set(), set()))
        return False, _sorted(whiteouts), _sorted(names)

    yield from _dir_entries(w, [], children)


def _sorted(names) -> list[str]:
    return sorted(names, key=os.fsencode)


def _disk_children(w: _Walk, parts: list[str]) -> tuple[bool, list[str], list[str]]:
    """(opaque, whiteout targets, other names) of the directory `parts`."""
    path = os.path.join(w.root, *parts)
    names = os.listdir(path)
    if not w.markers:
        return False, [], _sorted(names)
    opaque = bool(parts) and layout.is_opaque_dir(path, set(names))
    whiteouts, others = [], []
    for name in names:
        if name.startswith(layout.META_PREFIX):
            continue            # the opaque marker and aufs bookkeeping
        target = layout.whiteout_target(name)
        if target is not None:
            whiteouts.append(target)
            continue
        st = os.lstat(os.path.join(path, name))
        if layout.is_whiteout_dev(st):
            whiteouts.append(name)
        else:
            others.append(name)
    return opaque, _sorted(set(whiteouts)), _sorted(others)


def _dir_entries(w: _Walk, parts: list[str],
                 children: Callable[[list[str]], tuple[bool, list[str], list[str]]]
                 ) -> Iterator[Entry]:
    dir_path = os.path.join(w.root, *parts)
    opaque, whiteouts, names = children(parts)
    if opaque:
        st = os.lstat(dir_path)
        ti = _marker(parts, layout.OPAQUE_NAME, st, w)
        ti.uid, ti.gid, ti.mode, _ = layout.seen_owner_mode(dir_path, st)
        yield ti, None
    for target in whiteouts:
        yield _marker(parts, layout.WHITEOUT_PREFIX + target, os.lstat(dir_path), w), None
    for name in names:
        child = parts + [name]
        path = os.path.join(w.root, *child)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        ti = _tarinfo(w, "/".join(child), path, st)
        if ti is None:
            continue
        yield ti, path if ti.isreg() and ti.size else None
        if ti.isdir():
            yield from _dir_entries(w, child, children)


def _marker(parts: list[str], name: str, dir_st: os.stat_result, w: _Walk) -> tarfile.TarInfo:
    ti = tarfile.TarInfo("/".join(parts + [name]))
    ti.type = tarfile.REGTYPE
    ti.mode = 0o600
    ti.mtime = w.mtime(dir_st)
    return ti


def _tarinfo(w: _Walk, name: str, path: str, st: os.stat_result) -> tarfile.TarInfo | None:
    uid, gid, mode, kind = layout.seen_owner_mode(path, st)
    ti = tarfile.TarInfo(name)
    ti.uid, ti.gid, ti.mode = uid, gid, mode
    ti.mtime = w.mtime(st)
    fmt = stat.S_IFMT(st.st_mode)
    if kind and kind.startswith(("char-", "block-")) and fmt == stat.S_IFREG:
        # a device node a rootless daemon could not make: a file standing for it
        try:
            _, major, minor = kind.split("-")
            ti.devmajor, ti.devminor = int(major), int(minor)
        except ValueError:
            return None
        ti.type = tarfile.CHRTYPE if kind.startswith("char-") else tarfile.BLKTYPE
    elif kind == "pipe" and fmt == stat.S_IFREG:
        ti.type = tarfile.FIFOTYPE
    elif kind == "socket" or fmt == stat.S_IFSOCK:
        return None
    elif fmt == stat.S_IFDIR:
        if w.markers and _refers_below(path, ("overlay.redirect",)):
            raise UpperNeedsLower(path, "is a renamed directory (redirect_dir)")
        ti.type = tarfile.DIRTYPE
    elif fmt == stat.S_IFLNK:
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.readlink(path)
        ti.mode = 0o777
    elif fmt == stat.S_IFREG:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in w.links:
            ti.type = tarfile.LNKTYPE
            ti.linkname = w.links[key]
            return ti
        if st.st_nlink > 1:
            w.links[key] = name
        if w.markers and _refers_below(path, ("overlay.metacopy", "fsd.metacopy")):
            raise UpperNeedsLower(path, "holds metadata only (metacopy)")
        ti.type = tarfile.REGTYPE
        ti.size = st.st_size
    elif fmt == stat.S_IFIFO:
        ti.type = tarfile.FIFOTYPE
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        ti.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return None
    ti.pax_headers = _xattrs(path, st)
    return ti


def _refers_below(path: str, suffixes: tuple[str, ...]) -> bool:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False
    return any(n.endswith(suffixes) and not n.startswith("trusted.overlay.overlay.")
               for n in names)


def _xattrs(path: str, st: os.stat_result) -> dict[str, str]:
    if stat.S_ISLNK(st.st_mode):
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for key in sorted(names):
        if layout.is_private_xattr(key) or key in _SKIPPED_XATTRS:
            continue
        try:
            value = os.getxattr(path, key, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return out
