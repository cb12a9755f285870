"""`Overlay`: everything one mount owns (the kernel's `struct ovl_fs`).

Built once from checked params before the mount goes live: the layers opened
(lowers top first, the upper), the lazy lowers found (lazy.py), the work area taken and emptied, the marker
formats probed on the upper's filesystem, the id mapping, the quota measured,
the inode table with its root.  Every mechanism (dircache, namei, copy_up and
the operations) takes the Overlay and reaches the mount's state through it;
no mechanism carries another's state.

A directory tree being moved (dir.py) is the one thing across the mount that
others wait for: no copy-up or name change may land in the tree being copied
(`moving_tree`, `wait_tree_move`).  Besides, copies of lower files with several
names take turns, directory moves with them (copy_up.py, `copying_hard_links`).
"""

from __future__ import annotations

import contextlib
import stat

import trio

from .freeze import WriteGate
from .idmap import IdMap
from .inode import InodeTable, Node
from .layer import UPPER, Layer
from .lazy import LazyLayers
from .ondisk import Markers, probe_markers
from .params import OverlayParams
from .quota import Quota
from .watchdog import waiting
from .workarea import WorkArea


class Overlay:
    def __init__(self, params: OverlayParams):
        self.lowers = [Layer(p, i) for i, p in enumerate(params.lowerdirs)]
        self.lazy = LazyLayers(self.lowers)  # every open of a lower file's content goes through it
        self.upper: Layer | None = None
        self.work: WorkArea | None = None
        self.quota: Quota | None = None
        self.markers = Markers("chardev", None, None, False)
        try:
            if params.upperdir is not None:
                self.upper = Layer(params.upperdir, UPPER)
                self.work = WorkArea.open(params.workdir, params.upperdir)
                self.markers = probe_markers(self.work.layer, self.work.scratch, params.whiteout)
            if params.quota_bytes is not None or params.quota_inodes is not None:
                self.quota = Quota(params.quota_bytes, params.quota_inodes)
                self.quota.scan(self.upper.fd)  # before serving: no request waits for it
        except BaseException:
            self.close()
            raise
        self.idmap = IdMap(params)
        self.writable = params.writable
        self.fsync = params.fsync and not params.volatile
        self.timeout = params.timeout
        self.static_nlink = params.static_nlink
        self.metacopy = params.metacopy
        self.upper_passthrough = params.upper_passthrough  # FUSE passthrough (file.py)
        self.noatime = params.noatime  # reads move no atime in the upper (O_NOATIME)
        self.dir_atime = not (params.noatime or params.nodiratime)
        self.gate = WriteGate()  # every change of the upper passes it (freeze.py)
        self.table = InodeTable(self.lowers, self.upper, self.markers)
        self._tree_move: trio.Event | None = None  # set while a tree is being moved
        self._tree_moved = ""  # which directory, for the watchdog
        self._moving: Node | None = None  # the directory whose tree is being moved
        self._root()

    def _root(self) -> Node:
        """The root node: the upper root merged with every lower root.  An opaque
        marker on a layer's root means nothing, as for the kernel overlay (a
        root is never looked up)."""
        node = self.table.make_root(stat.S_IFDIR)
        node.upper = self.upper is not None
        node.lower_indices = tuple(range(len(self.lowers)))
        return node

    def close(self) -> None:
        for layer in [*self.lowers, self.upper]:
            if layer is not None:
                layer.close()
        if self.work is not None:
            self.work.close()

    # --- a directory tree being moved -------------------------------------------------

    def tree_moving(self) -> bool:
        return self._tree_move is not None

    @contextlib.contextmanager
    def moving_tree(self, node: Node):
        """Mark the move of directory node's tree under way for the block.  The
        caller has just seen none under way (`tree_moving`), with no await since."""
        if self._tree_move is not None:
            raise RuntimeError("a tree move began while another was under way")
        self._tree_move = moved = trio.Event()
        self._tree_moved = f"the move of directory inode {node.ino}"
        self._moving = node
        try:
            yield
        finally:
            self._tree_move = self._moving = None
            moved.set()

    def moves_tree_over(self, node: Node) -> bool:
        """Whether node is in the tree being moved: a copy of it published now
        would land in the old tree after the move copied it, and be lost."""
        moving = self._moving
        return moving is not None and (node is moving or node.is_below(moving))

    async def wait_tree_move(self) -> None:
        """Return at a moment when no tree move is under way.  Waiters hold
        nothing: a trio Lock taken only to wait for its holder passes from one
        waiter straight to the next, so that with two waiters it never looked
        free to either and they spun.  Each round here waits for a move that
        ends; another may begin before this task runs again."""
        while self._tree_move is not None:
            with waiting(self._tree_moved):
                await self._tree_move.wait()

    # --- usage of the upper ------------------------------------------------------------

    def account(self, rel: bytes) -> None:
        """Take the usage of an upper object that was made or changed."""
        if self.quota is not None:
            self.quota.record(self.upper.lstat(rel))

    def account_tree(self, rel: bytes) -> None:
        """Take the usage of an upper tree that was moved into place."""
        if self.quota is not None:
            for st in self.upper.walk(rel):
                self.quota.record(st)

    def released(self, st) -> None:
        """A name of an upper object (st, taken before) went away."""
        if self.quota is not None:
            self.quota.released(st)

    def discard(self, rel: bytes, from_upper: bool = False) -> None:
        """Remove a work-area object (file or tree); `from_upper`: it was moved out
        of the upper, so its usage is freed."""
        self.work.discard(rel, self.released if from_upper and self.quota is not None else None)
