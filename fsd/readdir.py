"""Listings of directories, by directory: no handle, no OPENDIR, no RELEASEDIR.

The kernel is asked to send no OPENDIR and RELEASEDIR (pyfuse3's
enable_no_opendir: two requests per opendir(3), of a warm walk's three per
directory) and caches listings itself; readdir comes with the directory's inode.
So a listing is taken when a reader starts at offset 0 and kept under a
number of its own, which every offset handed out carries in its high bits: a reader
that goes on at such an offset goes on in its own listing, valid however the
directory changed in between and however many others read it meanwhile.  The
reader that reaches its end lets it go; the last MAX_LISTINGS taken are kept
otherwise (a reader that left one unfinished), and an offset of one no longer
kept goes on in a fresh listing at the same position.  Where the kernel still
sends OPENDIR (without FUSE_NO_OPENDIR_SUPPORT), the handle is the inode.

Entries come with their attributes (readdirplus); ops.py replies with them and
counts each child as a lookup (not `.` and `..`, for which the kernel counts
none).  Taking a listing reads the upper directory as a user's getdents would,
so that its filesystem updates the atime (relatime ...) as under the kernel
overlay; not under noatime or nodiratime.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterator

import pyfuse3

from .attr import AttrOps
from .dircache import DirCache
from .inode import Node
from .namei import Namei
from .overlay import Overlay

log = logging.getLogger("fsd")

MAX_LISTINGS = 1024  # listings kept that no reader has read to the end
_POS_BITS = 32  # an offset is (listing number << _POS_BITS) | position


class ReaddirOps:
    def __init__(self, ovl: Overlay, dircache: DirCache, namei: Namei, attrs: AttrOps):
        self.ovl = ovl
        self.dircache = dircache
        self.dir_atime = ovl.dir_atime
        self.namei = namei
        self.attrs = attrs
        # listing number (1 .. 2**30 - 1, then again: never 0, which starts a
        # listing) -> (the directory's node, its names); by the node itself, not
        # its number: a number may name another directory once this one is gone
        self._listings: OrderedDict[int, tuple[Node, list[bytes]]] = OrderedDict()
        self._numbers = itertools.cycle(range(1, 1 << 30))

    def _take(self, node: Node) -> tuple[int, list[bytes]]:
        """A new listing of node, under a new number."""
        number = next(self._numbers)
        names = [b".", b"..", *self.dircache.merged_names(node)]
        self._listings[number] = (node, names)
        if len(self._listings) > MAX_LISTINGS:
            self._listings.popitem(last=False)
        if node.upper and not node.gone and self.dir_atime:
            self._read_upper(node)
        return number, names

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

    def entries(self, node: Node, offset: int
                ) -> Iterator[tuple[bytes, pyfuse3.EntryAttributes, int, Node | None]]:
        """(name, attributes, offset of the next entry, the child's node or None
        for `.` and `..`) of node's listing from `offset` (0: a new listing); a
        child made here is released by the caller if it is not handed to the
        kernel."""
        number, start = offset >> _POS_BITS, offset & ((1 << _POS_BITS) - 1)
        kept = self._listings.get(number) if offset else None
        if kept is None or kept[0] is not node:
            number, names = self._take(node)
        else:
            names = kept[1]
        if start >= len(names):
            self._listings.pop(number, None)  # read to its end
            return
        at = number << _POS_BITS  # offset of the entry at position 0 of this listing
        if start == 0:
            yield b".", self.attrs.entry(node), at | 1, None
        if start <= 1:
            yield b"..", self.attrs.entry(node.parent or node), at | 2, None
        entry = self.attrs.entry
        if node.upper or not node.lower_indices:
            find = self.namei.find_stat
            for pos in range(max(start, 2), len(names)):
                name = names[pos]
                try:
                    child, st = find(node, name)
                    if child is None:
                        continue  # removed since the listing was taken
                    attr = entry(child, st)  # an upper object's stat, taken by the lookup
                except FileNotFoundError:
                    continue
                yield name, attr, at | (pos + 1), child
            return
        # A directory of the lowers only (most of a cold walk): its merged
        # lowers, its path and the lookup's pieces are taken once, not per name;
        # a lower object's attributes are the stat its node was made with.
        lower = self.dircache.lower_entries(node).get
        base = node.path()
        prefix = base + b"/" if base else b""
        lower_child = self.namei.lower_child
        for pos in range(max(start, 2), len(names)):
            name = names[pos]
            found = lower(name)
            if found is None:
                continue
            try:
                child = lower_child(node, name, found, prefix + name)
            except FileNotFoundError:
                continue
            yield name, entry(child, None if child.upper else child.lower_stat), at | (pos + 1), child
