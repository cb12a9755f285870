"""The contents of merged directories: lower indexes, upper listings, the merge.

A merged directory's content is the union of its upper listing and the listings
of its lower directories, top first: a whiteout hides the name in every layer
below it, a non-directory stops the search, an opaque directory hides every
directory of its path below it.  Lowers never change while mounted, so the merged
listing of a directory's lowers is built once per node (`lower_entries`) and every
later lookup in that directory is one dict access, however deep the stack.  The
upper listing (`upper_entries`) is cached too and kept exact by `upper_added` and
`upper_removed`, which every change of an upper directory calls (dir.py,
copy_up.py).

Measured against the alternatives on the bench's 64-layer stack (every path
stat'd, in-process, cold caches): looking a name up in each layer instead, as
the kernel overlay does, costs ~100,000 lookups of names not there, 260-370 ms
of CPU, against ~190 ms for the whole walk reading the dirs; reading a deep
directory's layers by four threads at once saved ~90 ms of waiting for the disk
on an idle machine, but on a busy one saved nothing and cost 20-50% more CPU
(the threads contend for the GIL; micro.py's deep lookup, dirs in memory,
~320 -> ~840 us), so the layers are read one after another.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Collection

from .inode import Node
from .ondisk import dir_is_opaque, scan_dir
from .overlay import Overlay

S_IFDIR = stat.S_IFDIR


@dataclasses.dataclass(slots=True)
class Entry:
    """A name in a directory's merged lowers: where it is and what it is.

    lower_index: the index of the lower layer holding the object; lower_indices:
    for a directory, those where a directory of that name may merge (opaque
    markers inside them are applied when the child node is made).  Read-only
    once the merge that made it is done: the merge changes only entries of
    layers above the one it reads, so those made from the last layer it reads
    are never changed, and the equal ones share one object (`_shared`).
    """

    lower_index: int
    kind: int
    lower_indices: tuple[int, ...] = ()
    open: bool = True  # a directory still merging with lower layers


@dataclasses.dataclass(slots=True)
class UpperDir:
    names: dict[bytes, int]  # name -> S_IFMT of real entries
    whiteouts: set[bytes]  # names whited out here


class DirCache:
    def __init__(self, ovl: Overlay):
        self.ovl = ovl
        # lower index -> {S_IFMT: the Entry of a name found in that layer only}
        self._entries_of: dict[int, dict[int, Entry]] = {}

    def upper_entries(self, node: Node) -> UpperDir:
        if node.upper_entries is None:
            node.upper_entries = self.scan_upper(node.path())
        return node.upper_entries

    def lower_entries(self, node: Node) -> dict[bytes, Entry]:
        if node.lower_entries is None:
            node.lower_entries = self.merge_lowers(node.lower_indices, node.path())
        return node.lower_entries

    def merge_lowers(self, indices: tuple[int, ...], rel: bytes) -> dict[bytes, Entry]:
        """The merged listing of directory `rel` in the lower layers of `indices`."""
        return self._merge(indices, rel, False)[1]

    def merge_below(self, node: Node, candidates: tuple[int, ...], rel: bytes) -> None:
        """Set a new lower directory node's lower dirs: the candidates cut after the
        first opaque one (as merge_depth), and, when there are several, their
        merged listing in the same pass.  The scan of each dir that the listing
        needs anyway tells whether a `.wh..wh..opq` file marks it opaque and
        reads its xattr names through the descriptor it opened, so opacity costs
        a flistxattr per dir, not an lstat of the marker and a listxattr by path
        (through /proc) too: on a deep stack that is most of a cold lookup's
        system calls."""
        if len(candidates) < 2:
            node.lower_indices = candidates
        else:
            node.lower_indices, node.lower_entries = self._merge(candidates, rel, True)

    def _merge(self, indices: tuple[int, ...], rel: bytes, cut: bool) -> tuple[tuple[int, ...], dict[bytes, Entry]]:
        """The indices merged (with `cut`, up to the first opaque dir) and their listing."""
        merged: dict[bytes, Entry] = {}
        hidden: set[bytes] = set()
        last = len(indices) - 1
        for pos, index in enumerate(indices):
            layer = self.ovl.lowers[index]
            if pos == last:
                names = scan_dir(layer, rel)[0]
                merged = self._merge_last(merged, hidden, names, index)
                break
            names, whiteouts, marker_file, attrs = scan_dir(layer, rel, xattrs=cut)
            for name, kind in names.items():
                entry = merged.get(name)
                if entry is None:
                    if name not in hidden:
                        is_dir = kind == S_IFDIR
                        merged[name] = Entry(index, kind, (index,) if is_dir else (), is_dir)
                elif entry.open:
                    if kind == S_IFDIR:
                        entry.lower_indices += (index,)
                    else:
                        entry.open = False
            for name in whiteouts:
                entry = merged.get(name)
                if entry is None:
                    hidden.add(name)
                else:
                    entry.open = False
            if cut and dir_is_opaque(layer, rel, attrs, marker_file):
                return indices[:pos + 1], merged
        return indices, merged

    def _merge_last(self, merged: dict[bytes, Entry], hidden: set[bytes], names: dict[bytes, int],
                    index: int) -> dict[bytes, Entry]:
        """`merged` with the names of the last layer read (`index`) under it: a
        name new here gets the shared Entry of its layer and kind; its whiteouts
        hide nothing further down.  A directory in one layer only, the
        commonest, costs one dict insert per name."""
        shared = self._entries_of.get(index)
        if shared is None:
            shared = self._entries_of[index] = {}
        if not merged and not hidden:
            return {name: shared.get(kind) or self._shared(index, kind) for name, kind in names.items()}
        for name, kind in names.items():
            entry = merged.get(name)
            if entry is None:
                if name not in hidden:
                    merged[name] = shared.get(kind) or self._shared(index, kind)
            elif entry.open and kind == S_IFDIR:
                entry.lower_indices += (index,)
        return merged

    def _shared(self, index: int, kind: int) -> Entry:
        """The one Entry of a name of kind found in lower `index` only."""
        is_dir = kind == S_IFDIR
        entry = self._entries_of[index][kind] = Entry(index, kind, (index,) if is_dir else (), is_dir)
        return entry

    def scan_upper(self, rel: bytes) -> UpperDir:
        names, whiteouts, _, _ = scan_dir(self.ovl.upper, rel)
        return UpperDir(names, whiteouts)

    def merge_depth(self, candidates: tuple[int, ...], rel: bytes) -> tuple[int, ...]:
        """Cut the candidate lower dirs after the first opaque one."""
        for pos, index in enumerate(candidates[:-1]):
            if dir_is_opaque(self.ovl.lowers[index], rel):
                return candidates[:pos + 1]
        return candidates

    def lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether removing the upper entry `name` would uncover something below."""
        if parent.opaque or not parent.lower_indices:
            return False
        return name in self.lower_entries(parent)

    def merged_names(self, node: Node) -> Collection[bytes]:
        """Every name of a merged directory, markers applied, the upper's first.
        Where one side has them all, a view of its cached listing: read it
        before the directory changes."""
        upper = self.upper_entries(node) if node.upper else None
        if not node.lower_indices:
            return upper.names.keys() if upper is not None else ()
        lower = self.lower_entries(node)
        if upper is None:
            return lower.keys()
        names, whiteouts = upper.names, upper.whiteouts
        return [*names, *(name for name in lower if name not in names and name not in whiteouts)]

    # --- kept exact by every change of an upper directory ---------------------------

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
