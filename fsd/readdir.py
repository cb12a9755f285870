"""Directory handles: a merged listing taken at opendir (and at rewind), so
that offsets stay valid while a directory is read in several calls.

Entries come with their attributes (readdirplus); ops.py replies with them and
counts each child as a lookup (not `.` and `..`, for which the kernel counts
none).  Taking a listing reads the upper directory as a user's getdents would,
so that its filesystem updates the atime (relatime ...) as under the kernel
overlay; not under noatime or nodiratime.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pyfuse3

from .attr import AttrOps
from .dircache import DirCache
from .inode import Node
from .namei import Namei
from .overlay import Overlay

log = logging.getLogger("fsd")


class DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node: Node):
        self.node = node
        self.names: list[bytes] | None = None


class ReaddirOps:
    def __init__(self, ovl: Overlay, dircache: DirCache, namei: Namei, attrs: AttrOps):
        self.ovl = ovl
        self.dircache = dircache
        self.dir_atime = ovl.dir_atime
        self.namei = namei
        self.attrs = attrs
        self.handles: dict[int, DirHandle] = {}
        self._ids = itertools.count(1)

    def opendir(self, node: Node) -> int:
        fh = next(self._ids)
        self.handles[fh] = DirHandle(node)
        return fh

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def _read_upper(self, node: Node) -> None:
        """Read the upper directory as the kernel overlay does, for its atime (only
        that: a failure here is no failure of the readdir)."""
        try:
            changed = self.ovl.upper.read_dir(node.path())
        except OSError as exc:
            log.debug("atime of %r not updated: %s", node.path(), exc)
            return
        if changed:
            self.ovl.table.attrs_changed(node)

    def entries(self, fh: int, start: int) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int, Node | None]]:
        """(name, attributes, offset of the next entry, the child's node or None
        for `.` and `..`) from offset `start`; a child made here is released by
        the caller if it is not handed to the kernel."""
        handle = self.handles[fh]
        node = handle.node
        if handle.names is None or start == 0:
            handle.names = [b".", b"..", *self.dircache.merged_names(node)]
            if node.upper and not node.gone and self.dir_atime:
                self._read_upper(node)
        names = handle.names
        if start == 0:
            yield b".", self.attrs.entry(node), 1, None
        if start <= 1:
            yield b"..", self.attrs.entry(node.parent or node), 2, None
        find, entry = self.namei.find_stat, self.attrs.entry
        for pos in range(max(start, 2), len(names)):
            name = names[pos]
            try:
                child, st = find(node, name)
                if child is None:
                    continue  # removed since the listing was taken
                attr = entry(child, st)  # an upper object's stat, taken by the lookup
            except FileNotFoundError:
                continue
            yield name, attr, pos + 1, child
