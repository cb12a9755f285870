"""Overlay inodes and the inode table.

fsd chooses its own inode numbers (they are also the FUSE node ids).  A node's
number comes from the real object it stands for, so that it is the same for the
life of the mount, after a copy-up and after a remount:

- a lower object: its st_ino, tagged with the index of its filesystem;
- an object copied up by fsd: the number it had before, kept in an xattr;
- a merged directory: that of its topmost lower directory;
- anything else in the upper: the upper st_ino.

Filesystems are numbered in stack order (lowers top first, then the upper), so
that a number kept in an xattr means the same object at the next mount.  Hard
links of one file in a layer therefore share one node.  A number still held by
the kernel for an object that was deleted is never handed to a new object: the
newcomer gets a fresh number from a separate range instead (the kernel would
otherwise see one node change type).  Lookup counts follow the FUSE protocol
(ops.py counts them); a node leaves the table when the kernel has forgotten it
and no file is open on it.

The table never talks to the kernel: it records the nodes whose cached
attributes went stale without a request on them (`attrs_changed`), and ops.py
tells the kernel after the request (`take_stale`).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat

import pyfuse3

from .layer import UPPER, Layer, Named, Opened
from .ondisk import Markers, format_origin, parse_origin

__all__ = ["Node", "InodeTable", "UPPER"]

_DEV_SHIFT = 48
_INO_LIMIT = 1 << _DEV_SHIFT  # an st_ino from here on is hashed (key_for)
_ROOT = pyfuse3.ROOT_INODE
_FRESH_BASE = 1 << 62


class Node:
    """One object of the merged view.

    upper: the object exists in the upper layer at this node's path.
    lower_index: for a non-directory not in the upper, the index of the lower
      layer holding it (UPPER otherwise).
    lower_indices: for a directory, the indices of the lower layers merged
      under it, top first.
    links: the (parent, name) pairs known to name this object; the last is used
      to build its path.  A directory has exactly one.
    children: of a directory, name -> the node its last link by that name
      made (`child`); None until it has one.
    """

    __slots__ = (
        "ino", "key", "kind", "links", "upper", "lower_index", "lower_indices", "opaque",
        "lookups", "fds", "lower_stat", "upper_entries", "lower_entries",
        "lock", "linking_names", "gone", "metacopy", "last_stat", "inherits", "lower_xattrs", "_path", "_path_epoch",
        "children", "__weakref__",
    )

    # Bumped whenever a directory's path changes (its last link replaced or
    # dropped): every path cached before it may name a moved tree.
    _epoch = 0

    def __init__(self, ino: int, key: int, kind: int, link: "tuple[Node, bytes] | None" = None):
        self.ino = ino
        self.key = key
        self.kind = kind
        self.links: list[tuple[Node, bytes]] = [link] if link is not None else []
        self.children: dict[bytes, Node] | None = None
        if link is not None:
            link[0]._named(link[1], self)
        self.upper = False
        self.lower_index = UPPER
        self.lower_indices: tuple[int, ...] = ()
        self.opaque = False
        self.lookups = 0
        self.fds: dict[int, bool] = {}  # real fds of open files -> on the upper; for use after unlink
        self.lower_stat = None  # the immutable lstat of a lower-only object
        self.upper_entries = None  # cached upper listing of a directory
        self.lower_entries = None  # cached merged listing of a directory's lowers
        self.lock = None  # trio.Lock, made when a copy-up needs one
        # a copy-up that published this lower hard-linked file is linking its
        # other names (copy_up.py); not the lock's being held, which a waiter
        # also holds for a moment when it is passed on
        self.linking_names = False
        self.gone = False  # every name of it has been removed
        self.metacopy = False  # upper holds metadata only; data still in `layer`
        self.last_stat = None  # its stat when its last name went, for fstat after that
        # what an object made in this upper directory takes from it (dir.py,
        # `DirOps.inherited`); None until read, and again after any change of
        # the directory's mode, owner or xattrs (attr.py) or of its upper dir
        self.inherits = None
        self.lower_xattrs = None  # its lower object's xattr names, read once (attr.py, `LowerXattrs`)
        self._path = b""  # path() as of _path_epoch
        self._path_epoch = -1

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def parent(self) -> "Node | None":
        return self.links[-1][0] if self.links else None

    @property
    def name(self) -> bytes:
        return self.links[-1][1] if self.links else b""

    def path(self) -> bytes:
        """The path relative to a layer root, built from the names up to the root.
        ENOENT for an object that no longer has a name (it must never be taken
        for the root, whose path is b"").  Kept until a path on the way changes
        (`_moved`): lookups and attribute replies ask it on every request."""
        epoch = Node._epoch
        if self._path_epoch == epoch:
            return self._path
        parts = []
        node = self
        while node.links:
            parent, name = node.links[-1]
            parts.append(name)
            node = parent
        if node.ino != pyfuse3.ROOT_INODE:
            raise OSError(errno.ENOENT, "no name left", self.ino)
        parts.reverse()
        self._path = path = b"/".join(parts)
        self._path_epoch = epoch
        return path

    def _moved(self) -> None:
        """This node's path changed: a directory's moves its whole tree."""
        if self.kind == stat.S_IFDIR:
            Node._epoch += 1
        else:
            self._path_epoch = -1

    def child_path(self, name: bytes) -> bytes:
        base = self.path()
        return base + b"/" + name if base else name

    def held_fd(self) -> int | None:
        """A real descriptor fsd holds open on this object, one on the upper
        first; None if there is none."""
        return max(self.fds, key=self.fds.get) if self.fds else None

    def child(self, name: bytes) -> "Node | None":
        """The node that was last given the name `name` in this directory (a
        lookup's, a new object's), if the table still holds it.  A hint, not
        an answer: it may be gone, or stand for what the name showed before a
        change; the caller checks it against what the name shows now."""
        children = self.children
        return children.get(name) if children is not None else None

    def _named(self, name: bytes, node: "Node") -> None:
        children = self.children
        if children is None:
            self.children = {name: node}
        else:
            children[name] = node

    def _unnamed(self, name: bytes, node: "Node") -> None:
        children = self.children
        if children is not None and children.get(name) is node:
            del children[name]

    def add_link(self, parent: "Node", name: bytes) -> None:
        link = (parent, name)
        links = self.links
        if not links:
            links.append(link)  # no path of it, nor of anything below it, was kept
        elif links[-1] != link:
            if link in links:
                links.remove(link)
            links.append(link)
            self._moved()
        parent._named(name, self)
        self.gone = False

    def add_link_behind(self, parent: "Node", name: bytes) -> None:
        """Know one more name of this object without building its path from it."""
        if (parent, name) not in self.links:
            self.links.insert(0, (parent, name))
        parent._named(name, self)
        self.gone = False

    def drop_link(self, parent: "Node", name: bytes) -> None:
        links = self.links
        if (parent, name) in links:
            last = links[-1] == (parent, name)
            links.remove((parent, name))
            if last:
                self._moved()
        parent._unnamed(name, self)
        if not links:
            self.gone = True

    def is_below(self, ancestor: "Node") -> bool:
        node = self
        while node.links:
            node = node.links[-1][0]
            if node is ancestor:
                return True
        return False

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.path()!r} upper={self.upper} lower_index={self.lower_index} lower_indices={self.lower_indices}>"


class InodeTable:
    """All nodes the kernel knows, by inode number, and the live ones by key;
    the numbering rules of the mount's layers (lowers top first, the upper)."""

    def __init__(self, lowers: list[Layer], upper: Layer | None, markers: Markers):
        self.nodes: dict[int, Node] = {}
        self._by_key: dict[int, Node] = {}
        self._devs: dict[int, int] = {}
        self.lowers = lowers
        self.upper = upper
        self.markers = markers
        for layer in [*lowers, upper]:
            if layer is not None:
                self._devs.setdefault(layer.dev, len(self._devs))
        # by lower index, the high bits of key_for's numbers of its objects (None
        # where key_for has to decide), so that `lower_key` has no device to look up
        self._lower_bases = [self._devs[layer.dev] << _DEV_SHIFT
                             if self._devs[layer.dev] < 1 << (62 - _DEV_SHIFT) else None for layer in lowers]
        self._fresh = itertools.count(_FRESH_BASE)
        # upper st_ino -> number, for objects whose origin xattr the filesystem
        # refused (user.* on symlinks): kept for the life of the mount
        self._origins: dict[int, int] = {}
        self.root: Node | None = None
        self.stale: set[Node] = set()

    def attrs_changed(self, node: Node) -> None:
        """The kernel's cached attributes of node went stale without a request
        on it (a copy-up of it or into it: new ctime, a merged directory's
        nlink 1).  Only a node the kernel holds needs telling."""
        if node.lookups:
            self.stale.add(node)

    def take_stale(self) -> list[Node]:
        """The nodes to tell the kernel about, once."""
        nodes = list(self.stale)
        self.stale.clear()
        return nodes

    # --- numbers of real objects ------------------------------------------------

    def upper_key(self, rel: bytes, st: os.stat_result, lower_indices: tuple[int, ...],
                  attrs: list[bytes]) -> int:
        """The number of the upper object rel (st; `attrs` its xattr names): the
        one recorded when fsd copied it up, else that of its topmost lower
        directory (a merged directory), else its own."""
        key = None
        if self.markers.origin_xattr in attrs:
            key = self._recorded(rel)
        if key is None:
            key = self._origins.get(st.st_ino)
        return key if key is not None else self._real_key(rel, lower_indices, st)

    def dir_key(self, rel: bytes, lower_indices: tuple[int, ...]) -> int:
        """The stable number of the upper directory rel merged with those lowers."""
        key = self._recorded(rel)
        return key if key is not None else self._real_key(rel, lower_indices, None)

    def _real_key(self, rel: bytes, lower_indices: tuple[int, ...], upper_st) -> int:
        if lower_indices:
            low = self.lowers[lower_indices[0]]
            return self.key_for(low.dev, low.lstat(rel).st_ino)
        st = upper_st if upper_st is not None else self.upper.lstat(rel)
        return self.key_for(self.upper.dev, st.st_ino)

    def _recorded(self, rel: bytes) -> int | None:
        attr = self.markers.origin_xattr
        if attr is None:
            return None
        value = self.upper.try_getxattr(rel, attr)
        return None if value is None else parse_origin(value)

    def record_origin(self, obj: Named | Opened, key: int) -> None:
        """Record the number an object keeps after it moved to the upper (obj is
        in the upper or in the work area, where it is being built): in an xattr,
        or, where the filesystem refuses one, in memory for the life of the mount."""
        attr = self.markers.origin_xattr
        try:
            if attr is None:
                raise OSError(errno.ENOTSUP, "no xattr for fsd's bookkeeping")
            obj.setxattr(attr, format_origin(key))
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                raise
            self._origins[obj.lstat().st_ino] = key

    def keep_number(self, rel: bytes, node: Node) -> None:
        """A new upper object whose natural number the kernel still holds for a
        deleted one got a fresh number: record it like a copy-up's origin, so
        that it keeps it after a remount.  The one write a lookup makes."""
        try:
            self.upper.setxattr(rel, self.markers.origin_xattr, format_origin(node.ino))
        except (OSError, TypeError):
            return  # no xattrs (or read-only): the number holds for this mount only
        self.rekey(node, node.ino)

    def stands_for_another(self, node: Node, parent: Node, name: bytes, st: os.stat_result) -> bool:
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
            return self.is_fresh(node.key)
        try:
            other = self.upper.lstat(node.path())
        except OSError:
            return False  # its object is gone: find() retires it
        return other.st_ino != st.st_ino

    def key_for(self, dev: int, st_ino: int) -> int:
        """The stable number of the real object (dev, st_ino)."""
        index = self._devs.setdefault(dev, len(self._devs))
        if st_ino >= 1 << _DEV_SHIFT or index >= 1 << (62 - _DEV_SHIFT):
            return _FRESH_BASE - 1 - (hash((dev, st_ino)) & ((1 << 61) - 1))
        key = (index << _DEV_SHIFT) | st_ino
        return key if key != pyfuse3.ROOT_INODE else _FRESH_BASE - 1

    def lower_key(self, index: int, st_ino: int) -> int:
        """key_for the object st_ino of lower `index` (once per lower object found)."""
        base = self._lower_bases[index]
        if base is None or st_ino >= _INO_LIMIT or st_ino == _ROOT:
            return self.key_for(self.lowers[index].dev, st_ino)
        return base | st_ino

    def fresh_key(self) -> int:
        """A number no real object maps to, and no live node has (one kept in
        an xattr at an earlier mount may have come from the same counter)."""
        key = next(self._fresh)
        while key in self._by_key or key in self.nodes:
            key = next(self._fresh)
        return key

    @staticmethod
    def is_fresh(key: int) -> bool:
        return key >= _FRESH_BASE

    def holder(self, key: int) -> Node | None:
        """The node that has key now, whatever it stands for."""
        return self._by_key.get(key)

    def make_root(self, kind: int) -> Node:
        node = Node(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE, kind)
        node.lookups = 1  # the kernel never forgets the root
        self.nodes[node.ino] = node
        self.root = node
        return node

    def find(self, key: int, kind: int) -> Node | None:
        """The live node of this key, if it is still the same kind of object."""
        node = self._by_key.get(key)
        if node is not None and (node.gone or node.kind != kind):
            self.retire(node)
            return None
        return node

    def add(self, key: int, kind: int, link: tuple[Node, bytes] | None = None) -> Node:
        """A new node for key (named by `link`, a (parent, name), if given); a
        fresh number if the key's number is still in use."""
        ino = key if key not in self.nodes else self.fresh_key()
        node = Node(ino, key, kind, link)
        self.nodes[ino] = node
        self._by_key[key] = node
        return node

    def rekey(self, node: Node, key: int) -> None:
        """Give a node the key of a new real object (an upper object replaced it)."""
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        node.key = key
        self._by_key[key] = node

    def retire(self, node: Node) -> None:
        """Stop finding node by its key: its object is gone from the merged view."""
        node.gone = True
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        self._drop_if_unused(node)

    def __getitem__(self, ino: int) -> Node:
        return self.nodes[ino]

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(node)

    def opened(self, node: Node, fd: int, on_upper: bool) -> None:
        node.fds[fd] = on_upper

    def closed(self, node: Node, fd: int) -> None:
        node.fds.pop(fd, None)
        self._drop_if_unused(node)

    def unused(self, node: Node) -> None:
        """Drop a node that was made but never handed to the kernel."""
        self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        if node.lookups or node.fds or node is self.root:
            return
        if self.nodes.get(node.ino) is node:
            del self.nodes[node.ino]
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        for parent, name in node.links:
            parent._unnamed(name, node)  # Node.child finds only nodes the table holds

    def all_below(self, ancestor: Node) -> list[Node]:
        return [n for n in self.nodes.values() if n.is_below(ancestor)]
