"""Copy-up: make a lower object exist in the upper, atomically.

Every object is built under a temporary name in the work area (data, then
xattrs, owner, mode, times; a regular file all through one descriptor, then
fsynced unless fsync is off) and renamed into the upper, so a crash leaves
either nothing in the upper (the lower stays visible) or the complete copy; the
work area is emptied at the next mount.
Ancestors are copied first.  One copy runs per node: concurrent requests that
need the same copy-up wait on the node's lock and find it done.  Big data and
whole trees are copied in a worker thread, off the trio loop.  A lower file's
data is read through lazy.py: in a lazy layer it is fetched first.

Outcomes: None, or the OSError of the real filesystem (ENOSPC, EDQUOT, EIO ...)
with nothing left behind in the upper or the work area.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat

import trio

from .dircache import DirCache
from .errors import fail
from .idmap import IdMap
from .inode import Node
from .layer import RENAME_NOREPLACE, UPPER, Layer, Named, Opened
from .namei import Namei
from .ondisk import dir_is_opaque, format_override, is_marker_xattr
from .overlay import Overlay
from .watchdog import waiting

log = logging.getLogger("fsd")

FICLONE = 0x40049409
BIG = 1 << 20  # files larger than this are copied in a worker thread
_CHUNK = 1 << 24
CAPS_XATTR = b"security.capability"  # a file capability, dropped by every chown(2)


# FICLONE's answers for two filesystems that cannot share extents, now or later
_NO_CLONE = (errno.EOPNOTSUPP, errno.EXDEV, errno.ENOTTY)


def copy_data(src_fd: int, dst_fd: int, size: int, clone: bool = True, dense: bool = False) -> bool:
    """Copy `size` bytes into the empty dst_fd, sharing extents (FICLONE) when
    `clone` and the filesystems can, otherwise copying only the data extents
    so that holes stay holes (all of it when `dense`: a file with no holes
    needs no look for them).  Whether cloning is worth trying again between
    these filesystems: False once they refused it."""
    if clone:
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return True
        except OSError as exc:
            clone = exc.errno not in _NO_CLONE
    if dense:
        if _copy_range(src_fd, dst_fd, 0, size) < size:
            os.ftruncate(dst_fd, size)
        return clone
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole is left
            if exc.errno != errno.EINVAL:
                raise
            start = offset  # no SEEK_DATA support: copy everything
            end = size
        else:
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        _copy_range(src_fd, dst_fd, start, end)
        offset = end
    os.ftruncate(dst_fd, size)
    return clone


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> int:
    """Copy bytes start..end at the same offsets; where the copy stopped (end,
    unless the source ended first)."""
    pos = start
    while pos < end:
        count = min(_CHUNK, end - pos)
        try:
            done = os.copy_file_range(src_fd, dst_fd, count, pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            done = 0
        if done == 0:
            data = os.pread(src_fd, min(count, 1 << 20), pos)
            if not data:
                return pos
            done = os.pwrite(dst_fd, data, pos)
        pos += done
    return pos


def copy_xattrs(src: Named | Opened, dst: Named | Opened) -> list[bytes]:
    """Copy src's xattrs but fsd's markers to dst; the names copied."""
    copied = []
    for name in src.listxattr():
        if is_marker_xattr(name):
            continue
        value = src.try_getxattr(name)
        if value is None:
            continue
        try:
            dst.setxattr(name, value)
        except OSError as exc:
            # security.* and trusted.* may be refused to an unprivileged daemon.
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                raise
        else:
            copied.append(name)
    return copied


def copy_owner_mode_times(dst: Named | Opened, st: os.stat_result, idmap: IdMap,
                          made: tuple[int, int, int] | None = None, caps: bool = True) -> None:
    """Owner before mode (chown clears set-id bits), times last.  chown(2) also
    drops a file capability, which the copy keeps (the kernel overlay sets the
    owner without chown's removal): it is set again (`caps`: whether dst may
    have one).  A daemon that may not chown keeps the owner in the override
    xattr, when enabled.  `made`: the (uid, gid, permission bits) dst was made
    with, when known: a chown or chmod that would change nothing is skipped."""
    chown = made is None or made[:2] != (st.st_uid, st.st_gid)
    if chown:
        caps = dst.try_getxattr(CAPS_XATTR) if caps and stat.S_ISREG(st.st_mode) else None
        try:
            dst.chown(st.st_uid, st.st_gid)
        except PermissionError:
            name = idmap.override_xattr
            if name is not None and not stat.S_ISLNK(st.st_mode) and dst.try_getxattr(name) is None:
                dst.setxattr(name, format_override(st.st_uid, st.st_gid, st.st_mode, st.st_rdev))
        if caps is not None and dst.try_getxattr(CAPS_XATTR) is None:
            dst.setxattr(CAPS_XATTR, caps)
    if not stat.S_ISLNK(st.st_mode) and (chown or made[2] != stat.S_IMODE(st.st_mode)):
        dst.chmod(stat.S_IMODE(st.st_mode))
    dst.utime((st.st_atime_ns, st.st_mtime_ns))


class CopyUp:
    def __init__(self, ovl: Overlay, dircache: DirCache, namei: Namei):
        self.ovl = ovl
        self.table = ovl.table
        self.dircache = dircache
        self.namei = namei
        self._hardlinks: dict[int, dict[int, list[bytes]]] = {}  # lower index -> st_ino -> paths
        # Held by the copy-up of a lower file with several names until its other
        # names are linked to the copy, and by a directory move (whose tree copy
        # copies such files) until it has linked theirs: two copies of one lower
        # file made at once (through two of its names, or a name in a moved
        # tree) became two files, each linking what the other had not.
        self._hard_link_lock = trio.Lock()
        # lower indices whose files FICLONE cannot share with the work area
        self._no_clones: set[int] = set()

    def upper_and_no_tree_move(self, *nodes: Node) -> bool:
        """Whether nodes are fully in the upper and no tree is being moved."""
        return not self.ovl.tree_moving() and all(self._copied(n) for n in nodes)

    @staticmethod
    def _copied(node: Node) -> bool:
        """Whether node's copy-up is complete: in the upper with its data, and
        no copy-up of it still under way (one that published the copy goes on
        to link the file's other names: until then they are missing)."""
        return node.upper and not node.metacopy and not node.linking_names

    async def ensure_all(self, *nodes: Node) -> None:
        """Copy up nodes and return at a moment when no tree move is under way, so
        that the caller's next synchronous steps act on a settled upper.  A node
        once in the upper stays there (a tree move keeps its nodes there), so
        waiting for a move last is enough: nothing to retry."""
        for node in nodes:
            await self.ensure(node)
        await self.ovl.wait_tree_move()

    @contextlib.contextmanager
    def _times_kept(self, parent: Node):
        """A copy-up is no change of the directory it lands in: keep its times,
        as the kernel overlay does."""
        upper, rel = self.ovl.upper, parent.path()
        before = upper.lstat(rel)
        yield
        upper.utime(rel, (before.st_atime_ns, before.st_mtime_ns))
        self.table.attrs_changed(parent)  # its ctime (and a merged one's nlink) did change

    def _publish(self, tmp: bytes, parent: Node, rel: bytes, flags: int = 0) -> None:
        """Rename a finished work-area object into the upper at rel."""
        with self._times_kept(parent):
            self.ovl.work.layer.rename(tmp, self.ovl.upper, rel, flags)

    async def ensure(self, node: Node, data: bool = True) -> None:
        """Make node exist in the upper; with data=False a regular file gets no data
        (it is about to be truncated).  Ancestors are copied first, top-down, in a
        loop: trees can be thousands of levels deep."""
        if self._copied(node):
            return
        await self.ovl.wait_tree_move()
        missing = []
        ancestor = node.parent
        while ancestor is not None and not ancestor.upper:
            missing.append(ancestor)
            ancestor = ancestor.parent
        for ancestor in reversed(missing):
            await self._ensure_one(ancestor, True)
        await self._ensure_one(node, data)

    @contextlib.asynccontextmanager
    async def _copy_lock(self, node: Node):
        """Hold node's lock, so that one copy runs per node: a request that
        needs the same copy-up waits here and finds it done."""
        if node.lock is None:
            node.lock = trio.Lock()
        # Always through trio's scheduler (acquire checkpoints even when the lock
        # is free), never acquire_nowait: a caller that loops until a copy-up
        # it waits for is done (dir.py's _settle_rename) makes progress only
        # because each round lets the other tasks run.  Taken without it, the
        # namespace stress test hung the daemon in such a loop.
        with waiting(f"the copy-up of inode {node.ino}"):
            await node.lock.acquire()
        try:
            yield
        finally:
            node.lock.release()

    @contextlib.asynccontextmanager
    async def copying_hard_links(self):
        """Hold the mount's lock on copying lower files with several names (see
        __init__).  No directory move is under way while it is held."""
        with waiting("another copy of a lower file with several names"):
            await self._hard_link_lock.acquire()
        try:
            yield
        finally:
            self._hard_link_lock.release()

    def _hard_links_of(self, node: Node):
        """What a copy-up of node holds besides node's lock: the lock on copying
        lower hard links, for a lower file with several names, and to wait for
        the linking of its names by a directory move."""
        if node.linking_names or (not node.upper and node.kind == stat.S_IFREG and self._lower_nlink(node) > 1):
            return self.copying_hard_links()
        return contextlib.nullcontext()

    async def _ensure_one(self, node: Node, data: bool) -> None:
        if self._copied(node):
            return
        async with self._copy_lock(node), self._hard_links_of(node):
            if node.upper and not node.metacopy:
                return  # copied, or linked to a copy made meanwhile
            if node.metacopy:
                await self._fill_data(node)
            else:
                await self._copy(node, data)

    async def _copy(self, node: Node, data: bool, metadata_only: bool = False) -> None:
        parent = node.parent
        while parent is not None and not parent.upper:
            # Copied after we waited (a lookup of another name of a lower hard
            # link moves its path there): each copy awaits, and a lookup may
            # have moved it again.  The copy goes where the path is now.
            await self.ensure(parent)
            parent = node.parent
        if parent is None:
            raise fail(errno.ENOENT)
        metadata_only = metadata_only and self.ovl.markers.metacopy_xattr is not None
        rel = node.path()
        src = self.ovl.lowers[node.lower_indices[0] if node.is_dir else node.lower_index]
        if self.ovl.quota is not None and node.kind == stat.S_IFREG and data and not metadata_only:
            await self.ovl.lazy.complete(src, rel)  # a placeholder takes no blocks: its content does
        st = node.lower_stat
        if st is None or src.index in self.ovl.lazy.sockets:
            st = src.lstat(rel)  # a lazy layer's files change as their content arrives
        if self.ovl.quota is not None:
            full = stat.S_ISREG(st.st_mode) and data and not metadata_only
            self.ovl.quota.check(st.st_blocks * 512 if full or stat.S_ISDIR(st.st_mode) else 0, inodes=1)
        work = self.ovl.work.layer
        tmp = self.ovl.work.tmp_name()
        linked = None  # its index entry, for a file with several links
        try:
            if stat.S_ISREG(st.st_mode):
                await self._copy_file(src, rel, tmp, st, node.key, st.st_size if data else 0,
                                      metadata_only=metadata_only)
            else:
                if stat.S_ISDIR(st.st_mode):
                    work.mkdir(tmp, 0o700)
                elif stat.S_ISLNK(st.st_mode):
                    work.symlink(src.readlink(rel), tmp)
                else:
                    work.mknod(tmp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
                self._finish(Named(src, rel), Named(work, tmp), st, node.key)
            if node.gone or node.upper or node.path() != rel or self.ovl.moves_tree_over(node):
                # Changed while the data was copied (removed, renamed, or in a
                # tree being moved): this copy no longer belongs at rel.  After
                # a tree move the node is in the upper (the move copied it).
                self.ovl.discard(tmp)
                if node.gone:
                    raise fail(errno.ENOENT)
                await self.ovl.wait_tree_move()
                if not node.upper:
                    await self._copy(node, data, metadata_only)
                return
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                # In the index first, so that a crash before every name links
                # the copy is finished at the next mount.
                linked = self.ovl.work.index_entry(tmp, node.lower_index, st.st_ino)
            try:
                self._publish(tmp, parent, rel, RENAME_NOREPLACE)
            except FileExistsError:
                # Never over an upper entry: there, the name is already a link
                # to this file's copy (made through another of its names).
                log.warning("copy-up of %r: already in the upper; that copy is kept", rel)
                self.ovl.discard(tmp)
                if linked is not None:
                    self.ovl.discard(linked)
                    linked = None
        except BaseException:
            self.ovl.discard(tmp)
            if linked is not None and not node.upper:
                self.ovl.discard(linked)
            raise
        self.ovl.account(rel)
        node.upper = True
        node.metacopy = metadata_only
        node.lower_stat = None
        if node.is_dir:
            node.upper_entries = self.dircache.scan_upper(rel)
        self.dircache.upper_added(parent, node.name, node.kind)
        if linked is not None:
            await self.link_other_names(node.lower_index, st.st_ino, work, linked, node)
            work.unlink(linked)
        self.table.attrs_changed(node)  # the copy has its own ctime

    async def link_other_names(self, index: int, st_ino: int, src: Layer, src_rel: bytes,
                               node: Node | None = None) -> None:
        """Keep a lower file's hard links: every name of it that the merged view
        still shows from the lower becomes a link to its upper copy, src_rel in
        src (fuse-overlayfs and the kernel without index=on break them).  Until
        then the file's node (node, else the one of its lower number) says so:
        a lookup of another name gets it, a copy-up of it waits (namei.py)."""
        key = self.table.key_for(self.ovl.lowers[index].dev, st_ino)
        node = node or self.table.holder(key)
        if node is not None:
            node.linking_names = True
        try:
            await self._link_other_names(index, st_ino, src, src_rel)
        finally:
            if node is not None:
                node.linking_names = False
        # The names share one node, which may have been left out (a tree move
        # marks the nodes whose last name is inside the tree): it is upper now.
        node = self.table.holder(key)
        if node is not None and not node.upper:
            node.upper, node.metacopy, node.lower_index, node.lower_stat = True, False, UPPER, None

    async def _link_other_names(self, index: int, st_ino: int, src: Layer, src_rel: bytes) -> None:
        names = self._hardlinks.get(index)
        if names is None:
            layer = self.ovl.lowers[index]
            with waiting(f"a worker thread listing the hard links of lower layer {index}"):
                names = await trio.to_thread.run_sync(_hardlinked_files, layer)
            self._hardlinks[index] = names
        upper = self.ovl.upper
        for other in names.get(st_ino, ()):
            parent = self.namei.lower_parent(other, index)
            if parent is None:
                continue
            try:
                await self.ensure(parent)
                name = other.rsplit(b"/", 1)[-1]
                if self.namei.lower_parent(other, index) is not parent:
                    continue  # changed while the parent was copied up
                with self._times_kept(parent):
                    src.link(src_rel, upper, other)
                self.dircache.upper_added(parent, name, stat.S_IFREG)
            finally:
                self.table.unused(parent)

    async def _copy_file(self, src: Layer, rel: bytes, tmp: bytes, st: os.stat_result, key: int,
                         size: int, meta: Named | None = None, metadata_only: bool = False) -> None:
        """Build regular file tmp in the work area from lower file rel of src
        (st: its stat): `size` bytes of its data (none and a sparse size of
        st's, marked, for `metadata_only`), then `_finish` with the xattrs of
        meta (else the lower file's).  Synced but for metadata only (no data
        to lose), as the kernel overlay does; a big file in a worker thread."""
        dst_fd, made = self._new_file(tmp, st)
        try:
            if metadata_only:
                os.ftruncate(dst_fd, st.st_size)  # sparse: no data blocks
                os.setxattr(dst_fd, self.ovl.markers.metacopy_xattr, b"y")
                self._finish(meta or Named(src, rel), Opened(dst_fd), st, key, made)
            elif not size:
                self._write_file(src, -1, dst_fd, 0, st, meta or Named(src, rel), key, made)
            else:
                src_fd = await self.ovl.lazy.open(src, rel, os.O_RDONLY | os.O_NOATIME)
                try:
                    args = (src, src_fd, dst_fd, size, st, meta or Opened(src_fd), key, made)
                    if size > BIG:
                        with waiting(f"a worker thread copying {size} bytes of {rel!r}"):
                            await trio.to_thread.run_sync(self._write_file, *args)
                    else:
                        self._write_file(*args)
                finally:
                    os.close(src_fd)
        finally:
            os.close(dst_fd)

    def _new_file(self, tmp: bytes, st: os.stat_result) -> tuple[int, tuple[int, int, int] | None]:
        """Make regular file tmp in the work area, with st's permission bits
        where the scratch directory says what they become (WorkArea.made_as):
        a descriptor open for writing, and the (uid, gid, permission bits) it
        has, when known."""
        work = self.ovl.work
        if work.made_as is None:
            return work.layer.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), None
        uid, gid, umask = work.made_as
        perm = stat.S_IMODE(st.st_mode) & 0o777  # set-id bits only once the owner is right
        return work.layer.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perm), (uid, gid, perm & ~umask)

    def _write_file(self, src: Layer, src_fd: int, dst_fd: int, size: int, st: os.stat_result,
                    meta: Named | Opened, key: int, made: tuple[int, int, int] | None) -> None:
        """Fill the new regular file dst_fd: `size` bytes of src_fd's (of lower
        src), then `_finish`, then fsync unless fsync is off.  Run in a worker
        thread for a big file: it touches no state of the mount but the set of
        layers that cannot clone."""
        if size:
            clone = src.index not in self._no_clones
            if not copy_data(src_fd, dst_fd, size, clone, dense=st.st_blocks * 512 >= size) and clone:
                self._no_clones.add(src.index)
        self._finish(meta, Opened(dst_fd), st, key, made)
        if self.ovl.fsync:
            os.fsync(dst_fd)

    def _finish(self, meta: Named | Opened, dst: Named | Opened, st: os.stat_result, key: int,
                made: tuple[int, int, int] | None = None) -> None:
        """What every copy gets after its data: meta's xattrs, the origin number
        key, then st's owner, mode and times (`made`: see copy_owner_mode_times)."""
        copied = copy_xattrs(meta, dst)
        self.table.record_origin(dst, key)
        copy_owner_mode_times(dst, st, self.ovl.idmap, made, caps=CAPS_XATTR in copied)

    async def metadata(self, node: Node) -> None:
        """metacopy=on: copy a lower regular file's metadata only; data on first write.
        A file with several names is copied whole: the later copy of the data
        would replace only the name written through, and its other names would
        keep the lower data."""
        if node.upper:
            return
        if node.kind != stat.S_IFREG or self._lower_nlink(node) > 1:
            return await self.ensure(node)
        async with self._copy_lock(node):
            if node.upper:
                return
            await self._copy(node, data=False, metadata_only=True)

    def _lower_nlink(self, node: Node) -> int:
        st = node.lower_stat
        if st is None:
            st = self.ovl.lowers[node.lower_index].lstat(node.path())
        return st.st_nlink

    async def _fill_data(self, node: Node) -> None:
        """Second half of a metacopy: build the full file in the work area with the
        upper's metadata, then rename it over the metadata-only copy."""
        rel = node.path()
        src = self.ovl.lowers[node.lower_index]
        upper = self.ovl.upper
        st = upper.lstat(rel)
        if self.ovl.quota is not None:
            await self.ovl.lazy.complete(src, rel)  # as in _copy
        lower = src.lstat(rel)
        if self.ovl.quota is not None:
            self.ovl.quota.check(lower.st_blocks * 512)
        tmp = self.ovl.work.tmp_name()
        try:
            await self._copy_file(src, rel, tmp, st, node.key, lower.st_size, meta=Named(upper, rel))
            if node.gone or not node.metacopy or node.path() != rel or self.ovl.moves_tree_over(node):
                # Changed while the data was copied: see _copy.
                self.ovl.discard(tmp)
                if node.gone:
                    raise fail(errno.ENOENT)
                await self.ovl.wait_tree_move()
                if node.metacopy:
                    await self._fill_data(node)
                return
            self._publish(tmp, node.parent, rel)
        except BaseException:
            self.ovl.discard(tmp)
            raise
        self.ovl.account(rel)
        node.metacopy = False
        self.table.attrs_changed(node)

    # --- whole trees, for renaming a directory that has lower parts ------------

    async def build_tree(self, node: Node) -> tuple[bytes, list[tuple[int, int, bytes]]]:
        """Build, in the work area, a full copy of a merged directory's content:
        lower objects copied, upper non-directories hard-linked (same inodes, so
        open files stay valid).  The original is not touched, so a crash leaves
        the old tree whole.  Returns the work-area name and, for each lower file
        with several links, (lower index, st_ino, index entry), so that its names
        outside the tree can be linked once the tree is in place."""
        tmp = self.ovl.work.tmp_name()
        rel = node.path()
        linked: dict[tuple[int, int], tuple[bytes, int]] = {}
        try:
            with waiting(f"a worker thread copying the tree of {rel!r}"):
                await trio.to_thread.run_sync(
                    self._tree, node.upper, node.lower_indices, rel, tmp, node.key, linked, abandon_on_cancel=False)
            if self.ovl.quota is not None:
                new = [st for st in self.ovl.work.layer.walk(tmp) if st.st_nlink == 1]
                self.ovl.quota.check(sum(st.st_blocks * 512 for st in new), inodes=len(new))
        except BaseException:
            self.ovl.discard(tmp)
            raise
        return tmp, [(index, ino, self.ovl.work.index_entry(dst, index, ino)) for (_, ino), (dst, index) in linked.items()]

    def _tree(self, in_upper: bool, lower_indices: tuple[int, ...], rel: bytes, dst: bytes, key: int,
              linked: dict[tuple[int, int], tuple[bytes, int]]) -> None:
        upper, work = self.ovl.upper, self.ovl.work.layer
        source = upper if in_upper else self.ovl.lowers[lower_indices[0]]
        work.mkdir(dst, 0o700)
        upper_dir = self.dircache.scan_upper(rel) if in_upper else None
        lower_map = self.dircache.merge_lowers(lower_indices, rel) if lower_indices else {}
        names: dict[bytes, tuple[bool, int]] = {}
        if upper_dir is not None:
            names.update((n, (True, k)) for n, k in upper_dir.names.items())
        for name, entry in lower_map.items():
            if name not in names and (upper_dir is None or name not in upper_dir.whiteouts):
                names[name] = (False, entry.kind)
        for name, (from_upper, kind) in names.items():
            child = rel + b"/" + name if rel else name
            child_dst = dst + b"/" + name
            entry = lower_map.get(name)
            if kind == stat.S_IFDIR:
                if from_upper:
                    below = () if dir_is_opaque(upper, child) else (
                        self.dircache.merge_depth(entry.lower_indices, child) if entry and entry.kind == stat.S_IFDIR else ())
                    child_key = self.table.dir_key(child, below)
                else:
                    below = self.dircache.merge_depth(entry.lower_indices, child)
                    low = self.ovl.lowers[below[0]]
                    child_key = self.table.key_for(low.dev, low.lstat(child).st_ino)
                self._tree(from_upper, below, child, child_dst, child_key, linked)
            elif from_upper and self._is_metacopy(child):
                self._copy_lower_object(self.ovl.lowers[entry.lower_index], child, child_dst, linked, meta=upper)
            elif from_upper:
                upper.link(child, work, child_dst)
            else:
                self._copy_lower_object(self.ovl.lowers[entry.lower_index], child, child_dst, linked)
        self._finish(Named(source, rel), Named(work, dst), source.lstat(rel), key)

    def _is_metacopy(self, rel: bytes) -> bool:
        attr = self.ovl.markers.metacopy_xattr
        return attr is not None and self.ovl.upper.try_getxattr(rel, attr) is not None

    def _copy_lower_object(self, src: Layer, rel: bytes, dst: bytes, linked: dict, meta: Layer | None = None) -> None:
        """Copy one lower object into the work area; with `meta`, take its
        metadata from that layer (a metadata-only upper copy) instead."""
        st = src.lstat(rel)
        work = self.ovl.work.layer
        ident = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and ident in linked:
            work.link(linked[ident][0], work, dst)
            return
        key = self.table.key_for(src.dev, st.st_ino)
        shown = Named(meta or src, rel)  # where its metadata comes from
        shown_st = st if meta is None else meta.lstat(rel)
        if stat.S_ISREG(st.st_mode):
            dst_fd, made = self._new_file(dst, shown_st)
            try:
                src_fd = self.ovl.lazy.open_in_thread(src, rel, os.O_RDONLY | os.O_NOATIME) if st.st_size else -1
                try:
                    self._write_file(src, src_fd, dst_fd, st.st_size, shown_st, shown, key, made)
                finally:
                    if src_fd >= 0:
                        os.close(src_fd)
            finally:
                os.close(dst_fd)
        else:
            if stat.S_ISLNK(st.st_mode):
                work.symlink(src.readlink(rel), dst)
            else:
                work.mknod(dst, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
            self._finish(shown, Named(work, dst), shown_st, key)
        if st.st_nlink > 1 and meta is None:
            linked[ident] = (dst, src.index)


def _hardlinked_files(layer: Layer) -> dict[int, list[bytes]]:
    """st_ino -> paths of the regular files with several links in a layer."""
    found: dict[int, list[bytes]] = {}
    for dirpath, _, filenames, dirfd in os.fwalk(b".", dir_fd=layer.fd):
        for name in filenames:
            st = os.lstat(name, dir_fd=dirfd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                path = os.path.normpath(os.path.join(dirpath, name))
                found.setdefault(st.st_ino, []).append(path)
    return found
