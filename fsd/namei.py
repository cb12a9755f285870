"""Lookup of one name through the stack.

Answers come from the directory's merged listing (dircache.py): one dict access
for the lowers, however deep the stack, and one for the upper.  The node of the
object found comes from the inode table, by the object's stable number
(inode.py).  A lookup reads only, with one exception: an upper object that must
take a fresh number, because the kernel still holds its natural one for a
deleted object, has that number recorded in the upper (`InodeTable.keep_number`),
so that it keeps it after a remount.

Outcomes of `lookup`: the child Node, or OSError ENOENT (no such name, a whiteout,
a reserved `.wh.` name) / ENAMETOOLONG (over 255 bytes).  `named` answers None
instead of ENOENT.
"""

from __future__ import annotations

import errno
import os
import stat

from .dircache import DirCache, Entry
from .errors import fail
from .inode import UPPER, Node
from .ondisk import NAME_MAX, dir_is_opaque, is_reserved_name
from .overlay import Overlay

S_IFDIR = stat.S_IFDIR


class Namei:
    def __init__(self, ovl: Overlay, dircache: DirCache):
        self.ovl = ovl
        self.table = ovl.table
        self.dircache = dircache

    def lookup(self, parent: Node, name: bytes) -> Node:
        found = self.named(parent, name)[0]
        if found is None:
            raise fail(errno.ENOENT, name)
        return found

    def named(self, parent: Node, name: bytes) -> tuple[Node | None, os.stat_result | None]:
        """What a user's lookup of name finds: the child Node and the stat of
        the upper object found (see `find_stat`: ops.py replies with it, not
        with a second lstat), or (None, None) for no such name (a negative
        lookup is an ordinary answer, not an exception: ops.py replies it
        without raising)."""
        return self.find_stat(parent, name) if _may_exist(name) else (None, None)

    def lookup_stat(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result | None]:
        """`lookup`, and the stat of the upper object found (see `find_stat`)."""
        node, st = self.named(parent, name)
        if node is None:
            raise fail(errno.ENOENT, name)
        return node, st

    def find(self, parent: Node, name: bytes) -> Node | None:
        """The child node, or None when the merged view has no such name."""
        return self.find_stat(parent, name)[0]

    def find_stat(self, parent: Node, name: bytes) -> tuple[Node | None, os.stat_result | None]:
        """`find`, and the stat of the upper object it found (None where the
        name is not in the upper): valid until the caller's next await."""
        in_upper = False
        if parent.upper:
            upper = self.dircache.upper_entries(parent)
            if name in upper.names:
                in_upper = True
            elif name in upper.whiteouts:
                return None, None
        lower = self.dircache.lower_entries(parent).get(name) if parent.lower_indices else None
        if in_upper:
            st = self.ovl.upper.lstat(parent.child_path(name))
            return self.upper_child(parent, name, lower, st), st
        if lower is None:
            return None, None
        return self.lower_child(parent, name, lower, parent.child_path(name)), None

    def known_lower(self, parent: Node, name: bytes) -> Node | None:
        """What `find` of name would answer where that is a lower object whose
        node the table holds already (the kernel's LOOKUP of it made it): that
        node, found by name, with no lstat of the object.  Lowers never change
        while mounted, so a lower-only name (no upper entry, no whiteout) still
        shows the object its node was made for, whose node `lower_child` would
        find again by its number: the node named so, its key's node (not a
        fresh number), not copied up.  None where `find` must decide."""
        node = parent.child(name)
        if node is None or node.upper or node.gone or node.lower_stat is None:
            return None
        if parent.upper:
            upper = self.dircache.upper_entries(parent)
            if name in upper.names or name in upper.whiteouts:
                return None
        entry = self.dircache.lower_entries(parent).get(name) if parent.lower_indices else None
        table = self.table
        if (entry is None or entry.lower_index != node.lower_index or entry.kind != node.kind
                or table.holder(node.key) is not node or table.is_fresh(node.key)
                or (parent, name) not in node.links):
            return None
        return node

    def upper_child(self, parent: Node, name: bytes, lower: Entry | None,
                    st: os.stat_result | None = None, attrs: list[bytes] | tuple | None = None) -> Node:
        """The node of upper object `name` (`lower`: what its name finds in the
        lowers).  `st` and `attrs` (its xattr names): what a caller that has
        just made it knows already, so not read again."""
        upper, markers, table = self.ovl.upper, self.ovl.markers, self.table
        rel = parent.child_path(name)
        if st is None:
            st = upper.lstat(rel)
        kind = stat.S_IFMT(st.st_mode)
        if attrs is None and kind != S_IFDIR:
            node = self._known(parent, name, st, kind)
            if node is not None:
                return node
        lower_indices: tuple[int, ...] = ()
        opaque = False
        if attrs is None:
            attrs = upper.listxattr(rel) if markers.private_prefix is not None or kind == S_IFDIR else ()
        if kind == S_IFDIR:
            opaque = dir_is_opaque(upper, rel, attrs)
            if not opaque and lower is not None and lower.kind == S_IFDIR:
                lower_indices = self.dircache.merge_depth(lower.lower_indices, rel)
        key = table.upper_key(rel, st, lower_indices, attrs)
        holder = table.holder(key)
        claimed = holder is not None and table.stands_for_another(holder, parent, name, st)
        node = None if claimed else table.find(key, kind)
        if node is None:
            node = table.add(table.fresh_key() if claimed else key, kind)
            if node.ino != key:
                table.keep_number(rel, node)
        if markers.metacopy_xattr in attrs and lower is not None and lower.kind == stat.S_IFREG:
            node.metacopy, node.lower_index = True, lower.lower_index
        else:
            node.metacopy, node.lower_index = False, UPPER
        node.add_link(parent, name)
        node.upper = True
        if kind == S_IFDIR and (node.lower_indices != lower_indices or node.opaque != opaque):
            node.lower_indices, node.opaque, node.lower_entries = lower_indices, opaque, None
        node.lower_stat = None
        return node

    def _known(self, parent: Node, name: bytes, st: os.stat_result, kind: int) -> Node | None:
        """The node of upper non-directory parent/name (st), when the table has
        it by the object's own number and by this name: its xattrs need not be
        read.  Such a node has none of fsd's (its number is not a recorded one:
        those are its key instead, and a metacopy has one), and the upper
        changes only through this mount, which keeps the names of its nodes."""
        node = self.table.holder(self.table.key_for(self.ovl.upper.dev, st.st_ino))
        if (node is None or node.kind != kind or node.gone or not node.upper or node.metacopy
                or (parent, name) not in node.links):
            return None
        node.add_link(parent, name)
        return node

    def lower_child(self, parent: Node, name: bytes, entry: Entry, rel: bytes) -> Node:
        """The node of lower object `name` (`entry`: what its name finds in the
        lowers of parent, which has no upper dir; `rel`: its path), once per
        name found, of every walk.  A listing of a lower directory calls it for
        each of its names, with their paths built from the directory's once."""
        index = entry.lower_index
        st = self.ovl.lowers[index].lstat(rel)
        kind = st.st_mode & 0o170000  # S_IFMT
        table = self.table
        key = table.lower_key(index, st.st_ino)
        node = table.find(key, kind)
        if node is not None and node.upper:
            if node.linking_names:
                # a copy-up that published the file is linking its other names,
                # this one too: it names the node, whose path stays a name
                # already in the upper until then
                node.add_link_behind(parent, name)
                return node
            node = None  # a hard link whose file was copied up without this name
            key = table.fresh_key()
        if node is None:
            node = table.add(key, kind, (parent, name))
            if kind == S_IFDIR:
                self.dircache.merge_below(node, entry.lower_indices, rel)
        else:
            node.add_link(parent, name)
        node.lower_index = index
        node.lower_stat = st
        return node

    def lower_parent(self, rel: bytes, index: int) -> Node | None:
        """The directory node under which `rel` shows the object of lower `index`
        (not hidden, not replaced by the upper); None otherwise.  Nodes made on
        the way are released again, but for the one returned: the caller
        releases it with table.unused."""
        *dirs, name = rel.split(b"/")
        made: list[Node] = []
        found = self._lower_parent(dirs, name, index, made)
        for node in made:
            if node is not found:
                self.table.unused(node)
        return found

    def _lower_parent(self, dirs: list[bytes], name: bytes, index: int, made: list[Node]) -> Node | None:
        node = self.table.root
        for part in dirs:
            node = self.find(node, part)
            if node is None or not node.is_dir:
                return None
            made.append(node)
        if node.upper:
            upper = self.dircache.upper_entries(node)
            if name in upper.names or name in upper.whiteouts:
                return None
        entry = self.dircache.lower_entries(node).get(name) if node.lower_indices else None
        return node if entry is not None and entry.lower_index == index else None

    def find_path(self, rel: bytes) -> tuple[Node | None, bytes]:
        """The parent node of `rel` (None if a component is missing) and its last name."""
        *dirs, name = rel.split(b"/")
        parent = self.table.root
        for part in dirs:
            parent = self.find(parent, part) if parent is not None else None
        return parent, name


def _may_exist(name: bytes) -> bool:
    """Whether a lookup of name can find anything: ENAMETOOLONG past NAME_MAX;
    False for a reserved name, "." and ".."."""
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG, name)
    return not (is_reserved_name(name) or name in (b".", b".."))
