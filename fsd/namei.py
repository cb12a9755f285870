"""Lookup of names through the stack, from a per-directory index.

A merged directory's content is the union of its upper listing and the listings
of its lower directories, top first: a whiteout hides the name in every layer
below it, a non-directory stops the search, an opaque directory hides every
directory of its path below it.  Lowers never change while mounted, so the merged
listing of a directory's lowers is built once per node (`lower_entries`) and every
later lookup in that directory is one dict access, however deep the stack.  The
upper listing (`upper_entries`) is cached too and kept exact by the operations in
dir.py, which are the only writers of the upper.

Outcomes of `lookup`: the child Node, or OSError ENOENT (no such name, a whiteout,
a reserved `.wh.` name) / ENAMETOOLONG (over 255 bytes).
"""

from __future__ import annotations

import dataclasses
import errno
import stat

from .errors import fail
from .inode import UPPER, InodeTable, Node
from .layer import Layer, Stack
from .whiteout import (NAME_MAX, OPAQUE_FILE, Markers, is_reserved_name, is_whiteout_dev,
                       opaque_by_xattr, whiteout_target)

S_IFDIR = stat.S_IFDIR


@dataclasses.dataclass(slots=True)
class Entry:
    """A name in a directory's merged lowers: where it is and what it is.

    layer: the lower index of the object; lowers: for a directory, the lower
    indices where a directory of that name may merge (opaque markers inside them
    are applied when the child node is made).
    """

    layer: int
    kind: int
    lowers: tuple[int, ...] = ()
    open: bool = True  # a directory still merging with lower layers


@dataclasses.dataclass(slots=True)
class UpperDir:
    names: dict[bytes, int]  # name -> S_IFMT of real entries
    whiteouts: set[bytes]  # names whited out here


def _scan(layer: Layer, rel: bytes) -> tuple[dict[bytes, int], set[bytes], bool]:
    """One real directory: its entries, the names it whites out, opaque-by-file."""
    names: dict[bytes, int] = {}
    whiteouts: set[bytes] = set()
    opaque = False
    for name, kind, rdev in layer.scandir(rel):
        if name == OPAQUE_FILE:
            opaque = True
            continue
        target = whiteout_target(name)
        if target is not None:
            whiteouts.add(target)
        elif is_whiteout_dev(kind, rdev):
            whiteouts.add(name)
        elif is_reserved_name(name):
            continue
        else:
            names[name] = kind
    whiteouts.difference_update(names)  # a real entry of the same layer wins
    return names, whiteouts, opaque


def dir_is_opaque(layer: Layer, rel: bytes, attrs: list[bytes] | None = None) -> bool:
    """Opaque by xattr or by a `.wh..wh..opq` file; `attrs`: its xattr names, if known."""
    if attrs is None:
        attrs = layer.listxattr(rel)
    if opaque_by_xattr(attrs, lambda a: layer.try_getxattr(rel, a)):
        return True
    return layer.try_lstat((rel + b"/" if rel else b"") + OPAQUE_FILE) is not None


class Namei:
    """Lookup and listings of the merged view of one mount."""

    def __init__(self, stack: Stack, table: InodeTable, markers: Markers):
        self.stack = stack
        self.table = table
        self.markers = markers
        # upper st_ino -> stable number, for objects copied up in this mount
        # whose origin xattr the filesystem refused (see CopyUp.set_origin)
        self.origins: dict[int, int] = {}

    # --- listings ----------------------------------------------------------------

    def upper_entries(self, node: Node) -> UpperDir:
        if node.upper_entries is None:
            node.upper_entries = self.scan_upper(node.path())
        return node.upper_entries

    def lower_entries(self, node: Node) -> dict[bytes, Entry]:
        if node.lower_entries is None:
            node.lower_entries = self.merge_lowers(node.lowers, node.path())
        return node.lower_entries

    def merge_lowers(self, lowers: tuple[int, ...], rel: bytes) -> dict[bytes, Entry]:
        """The merged listing of directory `rel` in the given lower layers."""
        merged: dict[bytes, Entry] = {}
        hidden: set[bytes] = set()
        for index in lowers:
            names, whiteouts, _ = _scan(self.stack.lowers[index], rel)
            for name, kind in names.items():
                entry = merged.get(name)
                if entry is None:
                    if name not in hidden:
                        is_dir = kind == S_IFDIR
                        merged[name] = Entry(index, kind, (index,) if is_dir else (), is_dir)
                elif entry.open:
                    if kind == S_IFDIR:
                        entry.lowers += (index,)
                    else:
                        entry.open = False
            for name in whiteouts:
                entry = merged.get(name)
                if entry is None:
                    hidden.add(name)
                else:
                    entry.open = False
        return merged

    def scan_upper(self, rel: bytes) -> UpperDir:
        names, whiteouts, _ = _scan(self.stack.upper, rel)
        return UpperDir(names, whiteouts)

    def lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether removing the upper entry `name` would uncover something below."""
        if parent.opaque or not parent.lowers:
            return False
        return name in self.lower_entries(parent)

    def merged_names(self, node: Node) -> dict[bytes, int]:
        """name -> S_IFMT of every entry of a merged directory, markers applied."""
        out: dict[bytes, int] = {}
        whiteouts: set[bytes] = set()
        if node.upper:
            upper = self.upper_entries(node)
            out.update(upper.names)
            whiteouts = upper.whiteouts
        if node.lowers:
            for name, entry in self.lower_entries(node).items():
                if name not in out and name not in whiteouts:
                    out[name] = entry.kind
        return out

    # --- lookup --------------------------------------------------------------------

    def lookup(self, parent: Node, name: bytes) -> Node:
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG, name)
        if is_reserved_name(name) or name in (b".", b".."):
            raise fail(errno.ENOENT, name)
        found = self.find(parent, name)
        if found is None:
            raise fail(errno.ENOENT, name)
        return found

    def find(self, parent: Node, name: bytes) -> Node | None:
        """The child node, or None when the merged view has no such name."""
        in_upper = False
        if parent.upper:
            upper = self.upper_entries(parent)
            if name in upper.names:
                in_upper = True
            elif name in upper.whiteouts:
                return None
        lower = self.lower_entries(parent).get(name) if parent.lowers else None
        if in_upper:
            return self._upper_child(parent, name, lower)
        if lower is None:
            return None
        return self._lower_child(parent, name, lower)

    def _upper_child(self, parent: Node, name: bytes, lower: Entry | None) -> Node:
        upper = self.stack.upper
        rel = parent.child_path(name)
        st = upper.lstat(rel)
        kind = stat.S_IFMT(st.st_mode)
        lowers: tuple[int, ...] = ()
        opaque = False
        attrs = upper.listxattr(rel) if self.markers.private_prefix is not None or kind == S_IFDIR else ()
        if kind == S_IFDIR:
            opaque = dir_is_opaque(upper, rel, attrs)
            if not opaque and lower is not None and lower.kind == S_IFDIR:
                lowers = self.merge_depth(lower.lowers, rel)
        key = self._origin_key(rel) if self.markers.origin_xattr in attrs else self.origins.get(st.st_ino)
        if key is None:
            key = self._real_key(rel, lowers, st)
        holder = self.table.holder(key)
        claimed = holder is not None and self._stands_for_another(holder, parent, name, st)
        node = None if claimed else self.table.find(key, kind)
        if node is None:
            node = self.table.add(self.table.fresh_key() if claimed else key, kind)
            if node.ino != key:
                self._keep_number(rel, node)
        if self.markers.metacopy_xattr in attrs and lower is not None and lower.kind == stat.S_IFREG:
            node.metacopy, node.layer = True, lower.layer
        else:
            node.metacopy, node.layer = False, UPPER
        node.add_link(parent, name)
        node.upper = True
        if kind == S_IFDIR and (node.lowers != lowers or node.opaque != opaque):
            node.lowers, node.opaque, node.lower_entries = lowers, opaque, None
        node.lower_stat = None
        return node

    def _stands_for_another(self, node: Node, parent: Node, name: bytes, st) -> bool:
        """Whether node, which has the number recorded for the upper object
        parent/name (st), is another object that still exists.  A number kept in
        an xattr can come back: the upper's filesystem reuses the inode number
        of an object whose number a moved tree carried away, and fresh numbers
        start over at each mount.  Two objects must never share a node."""
        if node.gone or (parent, name) in node.links:
            return False
        if not node.upper:
            # a lower object's node is the one its copy keeps; a fresh number
            # of a lower hard link names no copy
            return self.table.is_fresh(node.key)
        try:
            other = self.stack.upper.lstat(node.path())
        except OSError:
            return False  # its object is gone: find() retires it
        return other.st_ino != st.st_ino

    def _lower_child(self, parent: Node, name: bytes, entry: Entry) -> Node:
        rel = parent.child_path(name)
        layer = self.stack.lowers[entry.layer]
        st = layer.lstat(rel)
        kind = stat.S_IFMT(st.st_mode)
        key = self.table.key_for(layer.dev, st.st_ino)
        node = self.table.find(key, kind)
        if node is not None and node.upper:
            node = None  # a hard link whose file was copied up without this name
            key = self.table.fresh_key()
        if node is None:
            node = self.table.add(key, kind)
            if kind == S_IFDIR:
                node.lowers = self.merge_depth(entry.lowers, rel)
        node.add_link(parent, name)
        node.layer = entry.layer
        node.lower_stat = st
        return node

    def lower_parent(self, rel: bytes, index: int) -> Node | None:
        """The directory node under which `rel` shows the object of lower `index`
        (not hidden, not replaced by the upper); None otherwise.  Nodes made on
        the way are left for the caller to release with table.unused."""
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
            upper = self.upper_entries(node)
            if name in upper.names or name in upper.whiteouts:
                return None
        entry = self.lower_entries(node).get(name) if node.lowers else None
        return node if entry is not None and entry.layer == index else None

    def _keep_number(self, rel: bytes, node: Node) -> None:
        """A new upper object whose natural number the kernel still holds for a
        deleted one got a fresh number: record it like a copy-up's origin, so
        that it keeps it after a remount."""
        try:
            self.stack.upper.setxattr(rel, self.markers.origin_xattr, b"%d" % node.ino)
        except (OSError, TypeError):
            return  # no xattrs (or read-only): the number holds for this mount only
        self.table.rekey(node, node.ino)

    def merge_depth(self, candidates: tuple[int, ...], rel: bytes) -> tuple[int, ...]:
        """Cut the candidate lower dirs after the first opaque one."""
        for pos, index in enumerate(candidates[:-1]):
            if dir_is_opaque(self.stack.lowers[index], rel):
                return candidates[:pos + 1]
        return candidates

    def dir_key(self, rel: bytes, lowers: tuple[int, ...]) -> int:
        """The stable number of the upper directory rel merged with `lowers`."""
        key = self._origin_key(rel)
        return key if key is not None else self._real_key(rel, lowers, None)

    def _real_key(self, rel: bytes, lowers: tuple[int, ...], upper_st) -> int:
        if lowers:
            low = self.stack.lowers[lowers[0]]
            return self.table.key_for(low.dev, low.lstat(rel).st_ino)
        upper = self.stack.upper
        st = upper_st if upper_st is not None else upper.lstat(rel)
        return self.table.key_for(upper.dev, st.st_ino)

    def _origin_key(self, rel: bytes) -> int | None:
        """The number fsd recorded when it copied this object up, if any."""
        attr = self.markers.origin_xattr
        if attr is None:
            return None
        value = self.stack.upper.try_getxattr(rel, attr)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    # --- state changes made by dir.py and copy_up.py ----------------------------

    def upper_added(self, parent: Node, name: bytes, kind: int) -> None:
        """`name` now exists in parent's upper dir (any whiteout of it is gone)."""
        if parent.upper_entries is not None:
            parent.upper_entries.names[name] = kind
            parent.upper_entries.whiteouts.discard(name)

    def upper_removed(self, parent: Node, name: bytes, whiteout: bool) -> None:
        if parent.upper_entries is not None:
            parent.upper_entries.names.pop(name, None)
            if whiteout:
                parent.upper_entries.whiteouts.add(name)
            else:
                parent.upper_entries.whiteouts.discard(name)

    def root_node(self) -> Node:
        """Make the root node: the upper root merged with every lower root.  An
        opaque marker on a layer's root means nothing, as for the kernel overlay
        (a root is never looked up)."""
        node = self.table.make_root(stat.S_IFDIR)
        node.upper = self.stack.upper is not None
        node.lowers = tuple(range(len(self.stack.lowers)))
        return node
