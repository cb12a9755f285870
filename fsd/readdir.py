"""Directory handles: a merged listing taken at opendir (and at rewind), so
that offsets stay valid while a directory is read in several calls.

Entries come with their attributes (readdirplus), each counted as a lookup,
except `.` and `..`, for which the kernel does not count one.  Taking a listing
reads the upper directory as a user's getdents would, so that its filesystem
updates the atime (relatime ...) as under the kernel overlay; not under
noatime or nodiratime.
"""

from __future__ import annotations

import itertools
import logging

import pyfuse3

from .attr import AttrOps
from .inode import InodeTable, Node
from .namei import Namei

log = logging.getLogger("fsd")


class DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node: Node):
        self.node = node
        self.names: list[bytes] | None = None


class ReaddirOps:
    def __init__(self, table: InodeTable, namei: Namei, attrs: AttrOps, dir_atime: bool = True):
        self.table = table
        self.dir_atime = dir_atime
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
            changed = self.namei.stack.upper.read_dir(node.path())
        except OSError as exc:
            log.debug("atime of %r not updated: %s", node.path(), exc)
            return
        if changed:
            self.table.attrs_changed(node)

    def readdir(self, fh: int, start: int, token) -> None:
        handle = self.handles[fh]
        node = handle.node
        if handle.names is None or start == 0:
            handle.names = [b".", b"..", *self.namei.merged_names(node)]
            if node.upper and not node.gone and self.dir_atime:
                self._read_upper(node)
        for pos in range(start, len(handle.names)):
            name = handle.names[pos]
            if name == b".":
                if not pyfuse3.readdir_reply(token, name, self.attrs.entry(node), pos + 1):
                    return
                continue
            if name == b"..":
                parent = node.parent or node
                if not pyfuse3.readdir_reply(token, name, self.attrs.entry(parent), pos + 1):
                    return
                continue
            try:
                child = self.namei.find(node, name)
                if child is None:
                    continue  # removed since the listing was taken
                attr = self.attrs.entry(child)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, name, attr, pos + 1):
                self.table.unused(child)
                return
            child.lookups += 1
