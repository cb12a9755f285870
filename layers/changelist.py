"""A container's change list (A/C/D, `layers diff`), and reading a stack of
layer dirs as overlayfs does, which the list is made against.

`lowers` are layer content dirs, TOP first (the order of `lowerdir=`).
Markers are read in every form (`layout`): `.wh.` files, char dev 0/0,
`.wh..wh..opq` and the opaque xattrs.

- `lookup(lowers, parts)`: the lstat of the merged entry, or None.
- `listing(lowers, parts)`: the merged names of a directory.
- `upper_changes(upper, lowers)`: A/C/D from an upper dir alone.
- `tree_changes(tree, lowers)`: A/C/D by comparing a full copy (vfs).
- `without_mountpoints(changes, paths)`: leaves out what a runtime added to
  mount on.
"""

from __future__ import annotations

import os
import stat

from . import layout

ADDED, CHANGED, DELETED = "A", "C", "D"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _whited_out(layer: str, parts: list[str]) -> bool:
    parent = os.path.join(layer, *parts[:-1])
    return os.path.lexists(os.path.join(parent, layout.WHITEOUT_PREFIX + parts[-1]))


def _contributors(lowers: list[str], parts: list[str]) -> tuple[os.stat_result | None, list[str]]:
    """The merged entry at `parts` and, for a directory, the layers that
    contribute to its listing (top first)."""
    layers = list(lowers)
    found: os.stat_result | None = None
    for depth in range(len(parts)):
        sub = parts[:depth + 1]
        found, nxt = None, []
        for layer in layers:
            if _whited_out(layer, sub):
                break
            st = _lstat(os.path.join(layer, *sub))
            if st is None:
                continue
            if layout.is_whiteout_dev(st):
                break
            if found is None:
                found = st
            if not stat.S_ISDIR(st.st_mode) or not stat.S_ISDIR(found.st_mode):
                break
            nxt.append(layer)
            if layout.is_opaque_dir(os.path.join(layer, *sub)):
                break
        if found is None:
            return None, []
        if not stat.S_ISDIR(found.st_mode):
            return (found, []) if depth == len(parts) - 1 else (None, [])
        layers = nxt
    if not parts:
        found = _lstat(lowers[0]) if lowers else None
    return found, layers


def lookup(lowers: list[str], parts: list[str]) -> os.stat_result | None:
    return _contributors(lowers, parts)[0]


def listing(lowers: list[str], parts: list[str]) -> set[str]:
    """Names in the merged directory `parts` (whiteouts and markers removed)."""
    _, layers = _contributors(lowers, parts)
    names: set[str] = set()
    hidden: set[str] = set()
    for layer in layers:
        path = os.path.join(layer, *parts)
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        here: set[str] = set()   # a whiteout hides only the layers below its own
        for e in entries:
            target = layout.whiteout_target(e.name)
            if target is not None:
                here.add(target)
            elif e.name.startswith(layout.META_PREFIX):
                continue
            elif layout.is_whiteout_dev(e.stat(follow_symlinks=False)):
                here.add(e.name)
            elif e.name not in hidden:
                names.add(e.name)
        hidden |= here
    return names


def _rel(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def upper_changes(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """What the upper dir changed over the image `lowers`, sorted by path.

    Read from the upper alone; the lowers are only looked up at the paths the
    upper names.  A whiteout is D (when the image has the path); an opaque
    directory is the directory replaced: C for it, D for every topmost path of
    the image it hides that the upper does not bring back, A/C for what the
    upper holds.  Directories that only lead to a change are not listed
    unless their owner or mode changed.
    """
    out: dict[str, str] = {}

    def walk(parts: list[str], image_dir: bool, hidden: bool) -> None:
        # image_dir: the image has a directory at `parts`; hidden: the lower
        # content at `parts` does not show through (an opaque dir on the way)
        path = os.path.join(upper, *parts)
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        names = {e.name for e in entries}
        hidden = hidden or (bool(parts) and layout.is_opaque_dir(path, names))
        kept: set[str] = set()
        for e in entries:
            if e.name == layout.OPAQUE_NAME or e.name.startswith(layout.META_PREFIX):
                continue
            st = e.stat(follow_symlinks=False)
            target = layout.whiteout_target(e.name)
            if target is None and layout.is_whiteout_dev(st):
                target = e.name
            if target is not None:
                if image_dir and lookup(lowers, parts + [target]) is not None:
                    out[_rel(parts + [target])] = DELETED
                continue
            kept.add(e.name)
            child = parts + [e.name]
            below = lookup(lowers, child) if image_dir else None
            is_dir = stat.S_ISDIR(st.st_mode)
            if below is None:
                out[_rel(child)] = ADDED
            elif not is_dir or not stat.S_ISDIR(below.st_mode) \
                    or layout.is_opaque_dir(e.path) \
                    or _meta_differs(e.path, st, _lower_path(lowers, child), below):
                out[_rel(child)] = CHANGED
            if is_dir:
                walk(child, below is not None and stat.S_ISDIR(below.st_mode),
                     hidden or below is None or not stat.S_ISDIR(below.st_mode))
        if hidden and image_dir:
            for gone in listing(lowers, parts) - kept:
                out[_rel(parts + [gone])] = DELETED

    walk([], True, False)
    return sorted(((kind, path) for path, kind in out.items()), key=lambda c: c[1])


def logical_stat(path: str, st: os.stat_result) -> tuple[int, int, int]:
    """(mode, uid, gid) the container sees (`layout.seen_owner_mode`)."""
    uid, gid, perm, _ = layout.seen_owner_mode(path, st)
    return stat.S_IFMT(st.st_mode) | perm, uid, gid


def _lower_path(lowers: list[str], parts: list[str]) -> str | None:
    """The real path of the merged entry `parts` in the topmost layer holding it."""
    for layer in lowers:
        path = os.path.join(layer, *parts)
        if os.path.lexists(path):
            return path
    return None


RUNTIME_MOUNTPOINTS = ("/dev", "/proc", "/sys")


def without_mountpoints(changes: list[tuple[str, str]],
                        mountpoints: set[str]) -> list[tuple[str, str]]:
    """`changes` without the directories a runtime adds to mount things on
    (the container's mount destinations, /dev, /proc, /sys): an added
    mountpoint, what lies below it, and the added directories leading to it
    when nothing else changed below them.  What podman's diff leaves out."""
    hidden = set()
    for kind, path in changes:
        if kind == ADDED and (path in mountpoints or any(
                path.startswith(m + "/") for m in mountpoints)):
            hidden.add(path)
    if not hidden:
        return changes
    # deepest first, so that a hidden parent hides its own parent in turn
    for kind, path in sorted(changes, key=lambda c: -c[1].count("/")):
        if kind == ADDED and path not in hidden \
                and any(h.startswith(path + "/") for h in hidden) \
                and all(q in hidden for _, q in changes if q.startswith(path + "/")):
            hidden.add(path)
    return [(k, p) for k, p in changes if p not in hidden]


def _meta_differs(path: str, a: os.stat_result, lower: str | None,
                  b: os.stat_result) -> bool:
    if lower is None:
        return (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid)
    return logical_stat(path, a) != logical_stat(lower, b)


def _content_differs(a: os.stat_result, lower_path_st: os.stat_result) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(lower_path_st.st_mode):
        return True
    if (a.st_mode, a.st_uid, a.st_gid) != \
            (lower_path_st.st_mode, lower_path_st.st_uid, lower_path_st.st_gid):
        return True
    if stat.S_ISDIR(a.st_mode):
        return False
    return a.st_size != lower_path_st.st_size or a.st_mtime_ns != lower_path_st.st_mtime_ns


def tree_changes(tree: str, lowers: list[str]) -> list[tuple[str, str]]:
    """What a full copy `tree` changed over `lowers` (vfs), sorted by path."""
    out: list[tuple[str, str]] = []

    def walk(parts: list[str]) -> None:
        path = os.path.join(tree, *parts)
        names = set(os.listdir(path))
        for gone in sorted(listing(lowers, parts) - names):
            out.append((DELETED, _rel(parts + [gone])))
        for name in sorted(names):
            child = parts + [name]
            st = os.lstat(os.path.join(tree, *child))
            below = lookup(lowers, child)
            if below is None:
                out.append((ADDED, _rel(child)))
                if stat.S_ISDIR(st.st_mode):
                    _all_added(child)
                continue
            if _content_differs(st, below):
                out.append((CHANGED, _rel(child)))
            if stat.S_ISDIR(st.st_mode):
                if stat.S_ISDIR(below.st_mode):
                    walk(child)
                else:
                    _all_added(child)

    def _all_added(parts: list[str]) -> None:
        for dirpath, dirnames, filenames in os.walk(os.path.join(tree, *parts)):
            rel = os.path.relpath(dirpath, tree)
            for n in dirnames + filenames:
                out.append((ADDED, "/" + os.path.join(rel, n)))

    walk([])
    return sorted(out, key=lambda c: c[1])
