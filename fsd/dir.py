"""Operations that change names: create, mkdir, mknod, symlink, link, unlink,
rmdir, rename.  Whiteouts and opaque directories are made here.

The upper is changed so that a crash between two steps never loses data: an
object that replaces a whiteout is built in the work area and renamed (or
exchanged) over it; a `.wh.NAME` file is created before the entry it hides is
removed, and removed only after its replacement is in place (within one layer a
real entry wins over its whiteout).  Errnos are those of the kernel overlay.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat

from .copy_up import CopyUp
from .dircache import DirCache
from .errors import fail
from .inode import Node
from .layer import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT
from .namei import Namei
from .ondisk import (ACL_DEFAULT, NAME_MAX, WH_PREFIX, format_override, is_reserved_name,
                     is_whiteout_dev, set_opaque, whiteout_fits, write_whiteout)
from .overlay import Overlay
from .workarea import discard_tree


class DirOps:
    def __init__(self, ovl: Overlay, dircache: DirCache, namei: Namei, copyup: CopyUp):
        self.ovl = ovl
        self.table = ovl.table
        self.markers = ovl.markers
        self.idmap = ovl.idmap
        self.dircache = dircache
        self.namei = namei
        self.copyup = copyup

    # --- markers ------------------------------------------------------------------

    def make_whiteout(self, dir_rel: bytes, name: bytes) -> None:
        """Create a whiteout of `name` directly in the upper dir (name must be free)."""
        write_whiteout(self.ovl.upper, dir_rel, name, self.markers, self.ovl.work.link_whiteout)

    def _work_whiteout(self) -> bytes:
        """A character-device whiteout in the work area, to be renamed over a name."""
        work = self.ovl.work
        tmp = work.tmp_name()
        work.link_whiteout(work.layer, tmp)
        return tmp

    def set_opaque(self, layer, rel: bytes) -> None:
        set_opaque(layer, rel, self.markers)

    # --- checks -------------------------------------------------------------------

    def _check_new_name(self, parent: Node, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG, name)
        if is_reserved_name(name):
            raise fail(errno.EINVAL, name)
        if self.namei.find(parent, name) is not None:
            raise fail(errno.EEXIST, name)

    # --- creating -----------------------------------------------------------------

    async def create(self, parent: Node, name: bytes, mode: int, uid: int, gid: int,
                     rdev: int = 0, target: bytes | None = None, umask: int = 0,
                     open_flags: int | None = None) -> tuple[Node, os.stat_result, int | None]:
        """Make a new object of S_IFMT(mode); returns its node, its real stat (for
        the entry reply: not read again) and, for a regular file asked with
        open_flags (real open flags), the descriptor it was created with, open
        so (the caller's now; None where it was made in the work area).  EEXIST
        if taken; EPERM for a character device 0/0, which is a whiteout here (as
        the kernel).  umask: the caller's (see `_creation_mode`)."""
        if is_whiteout_dev(stat.S_IFMT(mode), rdev):
            raise fail(errno.EPERM, name)
        self._check_new_name(parent, name)
        if await self._copied_up(parent):
            self._check_new_name(parent, name)  # re-check: the copy-up awaited
        kind = stat.S_IFMT(mode)
        if self.ovl.quota is not None:
            self.ovl.quota.check(4096 if kind == stat.S_IFDIR else 0, inodes=1)
        rel = parent.child_path(name)
        group, default_acl = self.inherited(parent)
        if group is not None:
            gid = group
            if kind == stat.S_IFDIR:
                mode |= stat.S_ISGID
        mode = self._creation_mode(mode, umask, default_acl)
        entries = self.dircache.upper_entries(parent)
        st = fd = None
        if name not in entries.whiteouts:
            st, fd = self._make(self.ovl.upper, rel, mode, rdev, target, uid, gid, open_flags)
        else:
            work = self.ovl.work.layer
            tmp = self.ovl.work.tmp_name()
            made = tmp
            try:
                if default_acl is not None:
                    # made in a directory with the parent's default ACL, so that
                    # it inherits what it would have inherited in the parent
                    work.mkdir(tmp, 0o700)
                    work.setxattr(tmp, ACL_DEFAULT, default_acl)
                    made = tmp + b"/new"
                self._make(work, made, mode, rdev, target, uid, gid)  # closed: opened by name once in place
                if kind == stat.S_IFDIR:
                    self.set_opaque(work, made)
                self._replace_whiteout(made, parent, name, kind)
            except BaseException:
                self.ovl.discard(tmp)
                raise
            if made != tmp:
                work.rmdir(tmp)
        try:
            self.dircache.upper_added(parent, name, kind)
            self._account(rel, parent)
            if st is None:  # made in the work area, renamed over a whiteout: looked up as any name
                node = self.namei.lookup(parent, name)
                return node, self.ovl.upper.lstat(rel), None
            # new, so without xattrs of fsd's (origin, metacopy) or markers, and nothing
            # below its name (no whiteout of it): none read
            return self.namei.upper_child(parent, name, None, st, ()), st, fd
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    def inherited(self, parent: Node) -> tuple[int | None, bytes | None]:
        """What an object made in parent (in the upper) takes from its upper
        directory: its group, when the directory is set-group-id (else None),
        and its default ACL (or None).  Read once and kept on the node: the
        upper changes only through this mount, and every change of a
        directory's mode, owner or xattrs forgets it (attr.py), as does a tree
        move that replaces the directory (`_move_merged_dir`)."""
        inherits = parent.inherits
        if inherits is None:
            rel = parent.path()
            st = self.ovl.upper.lstat(rel)
            inherits = parent.inherits = (st.st_gid if st.st_mode & stat.S_ISGID else None,
                                          self.ovl.upper.try_getxattr(rel, ACL_DEFAULT))
        return inherits

    @staticmethod
    def _creation_mode(mode: int, umask: int, default_acl: bytes | None) -> int:
        """The mode to make a new object with.  The caller's umask applies only
        where no default ACL is inherited: one replaces the umask (POSIX), and
        the upper's filesystem gives the object its mode and ACLs from it (the
        kernel leaves both to fsd, see Operations.enable_dont_mask)."""
        return mode & ~umask if default_acl is None else mode

    def _account(self, *places) -> None:
        """Take the usage of changed upper objects (paths or directory nodes)."""
        if self.ovl.quota is not None:
            for place in places:
                self.ovl.account(place if isinstance(place, bytes) else place.path())

    def _make(self, layer, rel: bytes, mode: int, rdev: int, target: bytes | None, uid: int,
              gid: int, open_flags: int | None = None) -> tuple[os.stat_result, int | None]:
        """Create one object owned by (uid, gid) as given through the mount; its
        stat, and for a regular file with open_flags the descriptor it was
        created with, open so.  Under xattr_permissions the owner and mode go to
        the override xattr, and a device node the daemon may not make is a
        regular file carrying its type."""
        kind = stat.S_IFMT(mode)
        perm = stat.S_IMODE(mode)
        override = self.idmap.override_xattr
        fd = None
        if kind == stat.S_IFDIR:
            layer.mkdir(rel, perm)
        elif kind == stat.S_IFREG:
            fd = layer.open(rel, (os.O_WRONLY if open_flags is None else open_flags) | os.O_CREAT | os.O_EXCL, perm)
            if open_flags is None:
                os.close(fd)
                fd = None
        elif kind == stat.S_IFLNK:
            layer.symlink(target, rel)
        else:
            try:
                layer.mknod(rel, mode, rdev)
            except PermissionError:
                if override is None or kind not in (stat.S_IFCHR, stat.S_IFBLK):
                    raise
                os.close(layer.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            made = os.fstat(fd) if fd is not None else layer.lstat(rel)
            if self._set_owner(made, mode, rdev, uid, gid, functools.partial(layer.chown, rel),
                               functools.partial(layer.setxattr, rel), functools.partial(layer.chmod, rel)):
                made = os.fstat(fd) if fd is not None else layer.lstat(rel)
        except BaseException:
            if fd is not None:
                os.close(fd)
            (layer.rmdir if kind == stat.S_IFDIR else layer.unlink)(rel)
            raise
        return made, fd

    def _set_owner(self, made: os.stat_result, mode: int, rdev: int, uid: int, gid: int,
                   chown, setxattr, chmod) -> bool:
        """Give a new object (made: its stat) the owner (uid, gid) as given through
        the mount, through its chown(uid, gid), setxattr(name, value) and
        chmod(mode); whether it called one of them (made is then stale).  Its permission bits stay those its filesystem gave it (a
        default ACL of the directory shapes them, and its ACLs); its set-id and
        sticky bits are those of mode.  Under xattr_permissions a daemon that
        may not chown keeps the owner and mode in the override xattr."""
        kind = stat.S_IFMT(mode)
        perm = stat.S_IMODE(mode)
        if stat.S_IFMT(made.st_mode) == kind:
            perm = stat.S_IMODE(made.st_mode) & 0o777 | perm & 0o7000
        override = self.idmap.override_xattr
        disk_uid, disk_gid = self.idmap.on_disk(uid, gid)
        chowned = (made.st_uid, made.st_gid) == (disk_uid, disk_gid)
        cleared = False  # by the chown: set-id bits
        if not chowned:
            try:
                chown(disk_uid, disk_gid)
                chowned = cleared = True
            except PermissionError:
                pass  # rootless: the caller's ids are the daemon's own
        changed = cleared
        if override is not None and kind != stat.S_IFLNK and not chowned:
            setxattr(override, format_override(disk_uid, disk_gid, kind | perm, rdev))
            changed = True
        if kind != stat.S_IFLNK and (stat.S_IMODE(made.st_mode) != perm or cleared and perm & 0o6000):
            chmod(perm)  # mkdir drops set-id bits, chown clears them
            changed = True
        return changed

    async def tmpfile(self, parent: Node, mode: int, flags: int, uid: int, gid: int,
                      umask: int = 0) -> tuple[Node, int]:
        """A regular file with no name, for open(2) with O_TMPFILE in parent:
        its node (with no link) and a descriptor open on it as flags ask.  It is
        made with O_TMPFILE in parent's upper directory, as the kernel overlay
        makes it (so it takes that directory's group and default ACL as a
        created file does), and nowhere else: `link` gives it a name, and a file
        never linked goes with its last descriptor, also when the daemon dies -
        nothing of it stays in the upper or the work area.  It counts against
        quota_inodes from the start and quota_bytes as it is written.
        EOPNOTSUPP where the upper's filesystem has no O_TMPFILE."""
        await self.copyup.ensure_all(parent)
        quota = self.ovl.quota
        if quota is not None:
            quota.check(0, inodes=1)
        group, default_acl = self.inherited(parent)
        mode = self._creation_mode(stat.S_IFREG | stat.S_IMODE(mode), umask, default_acl)
        if group is not None:
            gid = group
        fd = self.ovl.upper.open(parent.path(), os.O_TMPFILE | (flags & (os.O_ACCMODE | os.O_APPEND)),
                                 stat.S_IMODE(mode))
        try:
            self._set_owner(os.fstat(fd), mode, 0, uid, gid, functools.partial(os.fchown, fd),
                            functools.partial(os.setxattr, fd), functools.partial(os.fchmod, fd))
            st = os.fstat(fd)
            node = self.table.add(self.table.key_for(st.st_dev, st.st_ino), stat.S_IFREG)
        except BaseException:
            os.close(fd)
            raise
        node.upper = True
        node.gone = True  # no name until `link`
        if quota is not None:
            quota.record(st)
        return node, fd

    def _replace_whiteout(self, tmp: bytes, parent: Node, name: bytes, kind: int) -> None:
        """Move work-area object tmp to parent/name, where a whiteout now is."""
        work, upper = self.ovl.work.layer, self.ovl.upper
        rel = parent.child_path(name)
        old = upper.try_lstat(rel) if self.markers.whiteout == "chardev" else None
        if old is not None:
            if kind == stat.S_IFDIR:
                work.rename(tmp, upper, rel, RENAME_EXCHANGE)
                work.unlink(tmp)  # now the old whiteout
            else:
                work.rename(tmp, upper, rel)
            self.ovl.released(old)
        else:
            work.rename(tmp, upper, rel, RENAME_NOREPLACE)
            self._drop_whiteout_file(parent, name)

    def _drop_whiteout_file(self, parent: Node, name: bytes) -> None:
        rel = parent.child_path(WH_PREFIX + name)
        old = self.ovl.upper.try_lstat(rel)
        if old is not None:
            self.ovl.upper.unlink(rel)
            self.ovl.released(old)

    async def link(self, node: Node, parent: Node, name: bytes) -> Node:
        if node.is_dir:
            raise fail(errno.EPERM, name)
        self._check_new_name(parent, name)
        await self.copyup.ensure_all(node, parent)
        upper, work = self.ovl.upper, self.ovl.work.layer
        if node.gone:
            # A file with no name links only from its descriptor: one made with
            # O_TMPFILE (else the upper's filesystem answers ENOENT, as the kernel).
            fd = next((fd for fd, on_upper in node.fds.items() if on_upper), None)
            if fd is None:
                raise fail(errno.ENOENT)

            def make_link(dst, rel):
                dst.link_fd(fd, rel)
        else:
            def make_link(dst, rel):
                upper.link(node.path(), dst, rel)
        self._check_new_name(parent, name)
        if name in self.dircache.upper_entries(parent).whiteouts:
            tmp = self.ovl.work.tmp_name()
            make_link(work, tmp)
            try:
                self._replace_whiteout(tmp, parent, name, node.kind)
            except BaseException:
                self.ovl.discard(tmp)
                raise
        else:
            make_link(upper, parent.child_path(name))
        self.dircache.upper_added(parent, name, node.kind)
        self._account(parent)
        node.add_link(parent, name)
        return node

    # --- removing -----------------------------------------------------------------

    async def unlink(self, parent: Node, name: bytes) -> None:
        node, st = self._node_to_remove(parent, name, is_dir=False)
        if await self._copied_up(parent, *self._counted_in_upper(node)):
            node, st = self._node_to_remove(parent, name, is_dir=False)  # again: the copy-up awaited
        self._remove(parent, name, node, st)

    async def rmdir(self, parent: Node, name: bytes) -> None:
        node, st = self._node_to_remove(parent, name, is_dir=True)
        if await self._copied_up(parent):
            node, st = self._node_to_remove(parent, name, is_dir=True)  # again: the copy-up awaited
        self._remove(parent, name, node, st)

    async def _copied_up(self, *nodes: Node) -> bool:
        """`CopyUp.ensure_all(*nodes)`; whether it had anything to do.  When it
        had not, it did not await either: what the caller looked up before still
        holds and need not be looked up again (a name in the upper costs an lstat
        and a listxattr)."""
        if self.copyup.upper_and_no_tree_move(*nodes):
            return False
        await self.copyup.ensure_all(*nodes)
        return True

    @staticmethod
    def _counted_in_upper(node: Node | None) -> tuple[Node, ...]:
        """(node,) for a lower file with several names, else ().  Its link count
        is what the merged view shows only once it is in the upper, where every
        name still showing it is a link to the copy: so it is copied up before
        one of its names goes, as the kernel with index=on does (ovl_nlink_start)."""
        if node is None or node.upper or node.kind != stat.S_IFREG or node.lower_stat is None:
            return ()
        return (node,) if node.lower_stat.st_nlink > 1 else ()

    def _node_to_remove(self, parent: Node, name: bytes, is_dir: bool) -> tuple[Node, os.stat_result | None]:
        """The node `name` stands for, if rmdir (is_dir) or unlink may remove it,
        and the stat of its upper object (None if it has none); else ENOENT,
        EISDIR, ENOTDIR or ENOTEMPTY, as the kernel overlay says.  A lower
        name is most often known already: the kernel looked it up first."""
        node, st = self.namei.known_lower(parent, name), None
        if node is None:
            node, st = self.namei.lookup_stat(parent, name)
        if node.is_dir and not is_dir:
            raise fail(errno.EISDIR, name)
        if is_dir and not node.is_dir:
            raise fail(errno.ENOTDIR, name)
        if is_dir and self.dircache.merged_names(node):
            raise fail(errno.ENOTEMPTY, name)
        return node, st

    def _remove(self, parent: Node, name: bytes, node: Node, st: os.stat_result | None = None) -> None:
        """Take name out of the merged view: remove its upper entry and, when a
        lower has the name, leave a whiteout.  st: the upper object's stat, if
        just read."""
        upper, work = self.ovl.upper, self.ovl.work.layer
        whiteout = self.dircache.lower_has(parent, name)
        in_upper = name in self.dircache.upper_entries(parent).names
        nlink = 1
        last = node.lower_stat
        if in_upper:
            rel = parent.child_path(name)
            before = last = st if st is not None else upper.lstat(rel)
            nlink = before.st_nlink
            if not whiteout:
                if node.is_dir:
                    tmp = self.ovl.work.tmp_name()
                    upper.rename(rel, work, tmp)
                    self.ovl.discard(tmp, from_upper=True)  # may hold whiteouts
                else:
                    upper.unlink(rel)
            elif self.markers.whiteout == "chardev":
                tmp = self._work_whiteout()
                if node.is_dir:
                    work.rename(tmp, upper, rel, RENAME_EXCHANGE)
                    self.ovl.discard(tmp, from_upper=True)
                else:
                    work.rename(tmp, upper, rel)
            else:
                self.make_whiteout(parent.path(), name)
                if node.is_dir:
                    tmp = self.ovl.work.tmp_name()
                    upper.rename(rel, work, tmp)
                    self.ovl.discard(tmp, from_upper=True)
                else:
                    upper.unlink(rel)
            if self.ovl.quota is not None and not node.is_dir:
                self.ovl.quota.released(before)
        else:
            if node.lower_stat is not None:
                nlink = node.lower_stat.st_nlink
            self.make_whiteout(parent.path(), name)
        if self.ovl.quota is not None:
            if whiteout:
                self._account(parent.child_path(self.markers.whiteout_name(name)))
            self._account(parent)
        self.dircache.upper_removed(parent, name, whiteout)
        node.drop_link(parent, name)
        if node.gone and nlink > 1 and not node.is_dir:
            node.gone = False  # other names of the file remain, not yet looked up
        if node.gone:
            node.last_stat = last
            self.table.retire(node)

    # --- rename -------------------------------------------------------------------

    async def rename(self, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise fail(errno.EINVAL)  # the kernel overlay's answer to RENAME_WHITEOUT
        if len(n2) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG, n2)
        if is_reserved_name(n2):
            raise fail(errno.EINVAL, n2)
        async with contextlib.AsyncExitStack() as hard_links:
            src, dst = await self._settle_rename(p1, n1, p2, n2, flags, hard_links)
            if dst is not src:
                await self._rename(p1, n1, src, p2, n2, dst, flags)

    async def _settle_rename(self, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int,
                             hard_links: contextlib.AsyncExitStack) -> tuple[Node, Node | None]:
        """The source and destination, once what the rename changes is in the
        upper and no tree move is under way.  A directory move (a tree copy)
        holds the lock on copying lower hard links in hard_links, from here on."""
        held = False
        while True:
            src, dst = self._rename_pair(p1, n1, p2, n2, flags)
            if dst is src:
                return src, dst  # two names of one file: POSIX says do nothing
            moves_tree = src.is_dir and bool(src.lower_indices)
            if moves_tree and not held:
                await hard_links.enter_async_context(self.copyup.copying_hard_links())
                held = True
                continue  # it awaited: look the names up again
            if held and not moves_tree:
                await hard_links.aclose()  # src changed: no tree move now
                held = False
            needed = [p1, p2, src, dst] if flags & RENAME_EXCHANGE else [p1, p2, *self._counted_in_upper(dst)]
            if not moves_tree and not flags & RENAME_EXCHANGE:
                needed.append(src)
            if self.copyup.upper_and_no_tree_move(*needed):
                return src, dst
            # Each round that gets here awaits a copy-up or the end of a tree
            # move; the names are looked up again after it.
            await self.copyup.ensure_all(*needed)

    async def _rename(self, p1: Node, n1: bytes, src: Node, p2: Node, n2: bytes, dst: Node | None,
                      flags: int) -> None:
        # From here on the upper is settled; only the tree copy below awaits, and
        # it is marked as a tree move, which every other change waits for.
        if flags & RENAME_EXCHANGE:
            self._exchange(p1, n1, src, p2, n2, dst)
            return
        # what fstat shows through a descriptor of the object replaced at n2
        replaced = None
        if dst is not None:
            replaced = self.ovl.upper.lstat(p2.child_path(n2)) if dst.upper else dst.lower_stat
        hard_links = []
        if src.is_dir and src.lower_indices:
            with self.ovl.moving_tree(src):
                hard_links = await self._move_merged_dir(p1, n1, src, p2, n2)
        else:
            self._move_upper(p1, n1, src, p2, n2, dst)
        if dst is not None:
            dst.drop_link(p2, n2)
            if dst.gone:
                dst.last_stat = replaced
                self.table.retire(dst)
        src.drop_link(p1, n1)
        src.add_link(p2, n2)
        for index, st_ino, entry in hard_links:
            await self.copyup.link_other_names(index, st_ino, self.ovl.work.layer, entry)
            self.ovl.work.layer.unlink(entry)

    def _rename_pair(self, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int) -> tuple[Node, Node | None]:
        """The source and destination nodes, after the checks rename(2) makes;
        ENAMETOOLONG before any change when the old name must be whited out and
        its whiteout cannot be written (`.wh.NAME` past NAME_MAX)."""
        src = self.namei.lookup(p1, n1)
        if src.is_dir and (p2 is src or p2.is_below(src)):
            # the kernel's answer, which it gives itself; but a merged directory
            # moved below itself would be copied there, then removed with it
            raise fail(errno.EINVAL, n2)
        if not flags & RENAME_EXCHANGE and self.dircache.lower_has(p1, n1) \
                and not whiteout_fits(n1, self.markers):
            raise fail(errno.ENAMETOOLONG, n1)
        dst = self.namei.find(p2, n2)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise fail(errno.EEXIST, n2)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise fail(errno.ENOENT, n2)
            if dst is not src and any(n.is_dir and n.lower_indices for n in (src, dst)):
                raise fail(errno.EXDEV)  # as the kernel overlay
        elif dst is not None and dst is not src:
            if src.is_dir and not dst.is_dir:
                raise fail(errno.ENOTDIR, n2)
            if dst.is_dir and not src.is_dir:
                raise fail(errno.EISDIR, n2)
            if dst.is_dir and self.dircache.merged_names(dst):
                raise fail(errno.ENOTEMPTY, n2)
        return src, dst

    def _clear_dir(self, rel: bytes) -> None:
        """Remove the whiteouts left in an upper dir that is empty in the merged view."""
        upper = self.ovl.upper
        release = self.ovl.released if self.ovl.quota is not None else None
        for name, _, _ in upper.scandir(rel):
            discard_tree(upper, rel + b"/" + name if rel else name, release)

    def _move_upper(self, p1: Node, n1: bytes, src: Node, p2: Node, n2: bytes, dst: Node | None) -> None:
        """Rename an object that lives wholly in the upper (a file, or a directory
        without lower parts)."""
        upper = self.ovl.upper
        rel1, rel2 = p1.child_path(n1), p2.child_path(n2)
        leave_whiteout = self.dircache.lower_has(p1, n1)
        dst_entries = self.dircache.upper_entries(p2)
        dst_in_upper = n2 in dst_entries.names
        dst_whiteout = n2 in dst_entries.whiteouts
        if src.is_dir and not src.opaque and self.dircache.lower_has(p2, n2):
            self.set_opaque(upper, rel1)  # must not merge with what lies below n2
            src.opaque = True
        if dst_in_upper and dst.is_dir:
            self._clear_dir(rel2)
        replaced = upper.try_lstat(rel2) if self.ovl.quota is not None else None
        chardev = self.markers.whiteout == "chardev"
        if dst_whiteout and chardev and src.is_dir:
            upper.rename(rel1, upper, rel2, RENAME_EXCHANGE)  # the whiteout lands at rel1
            if not leave_whiteout:
                upper.unlink(rel1)
            else:
                replaced = None  # the whiteout lives on at rel1
            leave_whiteout = False
        elif leave_whiteout and chardev and self.markers.rename_whiteout:
            upper.rename(rel1, upper, rel2, RENAME_WHITEOUT)
            leave_whiteout = False
        else:
            upper.rename(rel1, upper, rel2)
        if dst_whiteout and not chardev:
            self._drop_whiteout_file(p2, n2)
        if leave_whiteout:
            self.make_whiteout(p1.path(), n1)
        whiteout_left = self.dircache.lower_has(p1, n1)
        self.dircache.upper_removed(p1, n1, whiteout_left)
        self.dircache.upper_added(p2, n2, src.kind)
        if replaced is not None:
            self.ovl.released(replaced)
        if whiteout_left:
            self._account(p1.child_path(self.markers.whiteout_name(n1)))
        self._account(p1, p2)

    async def _move_merged_dir(self, p1: Node, n1: bytes, src: Node, p2: Node, n2: bytes) -> list:
        """Rename a directory with lower parts: copy its merged tree into the work
        area, make it opaque, switch it in at n2, then remove n1.  The kernel says
        EXDEV here (without redirect_dir); programs such as apt and npm then fail.
        Returns the lower hard links inside the tree (see CopyUp.build_tree)."""
        upper, work = self.ovl.upper, self.ovl.work.layer
        rel1, rel2 = p1.child_path(n1), p2.child_path(n2)  # ENOENT for a parent removed: nothing built yet
        tmp, hard_links = await self.copyup.build_tree(src)
        try:
            self.set_opaque(work, tmp)
            self.ovl.work.write_journal(rel1, rel2, src.key)
            dst_entries = self.dircache.upper_entries(p2)
            if n2 in dst_entries.names:
                self._clear_dir(rel2)
                work.rename(tmp, upper, rel2, RENAME_EXCHANGE)
                self.ovl.discard(tmp, from_upper=True)
            elif n2 in dst_entries.whiteouts:
                self._replace_whiteout(tmp, p2, n2, stat.S_IFDIR)
            else:
                work.rename(tmp, upper, rel2, RENAME_NOREPLACE)
        except BaseException:
            self.ovl.discard(tmp)
            raise
        self.dircache.upper_added(p2, n2, stat.S_IFDIR)
        self.remove_moved_source(p1, n1, src)
        self.ovl.work.clear_journal()
        if self.ovl.quota is not None:
            self.ovl.account_tree(rel2)
            self._account(p1, p2)
        # Every object of the tree is another now (copies, or upper files that
        # had the copy's link for a while): what the kernel cached of it, link
        # counts included, is stale.
        for node in self.table.all_below(src):
            node.upper, node.lower_indices, node.metacopy = True, (), False
            node.lower_entries = node.upper_entries = node.lower_stat = node.inherits = None
            self.table.attrs_changed(node)
        src.upper, src.lower_indices, src.opaque = True, (), True
        src.lower_entries = src.upper_entries = src.inherits = None
        self.table.attrs_changed(src)
        return hard_links

    def remove_moved_source(self, p1: Node, n1: bytes, src: Node) -> None:
        upper, work = self.ovl.upper, self.ovl.work.layer
        rel1 = p1.child_path(n1)
        whiteout = self.dircache.lower_has(p1, n1)
        if n1 in self.dircache.upper_entries(p1).names:
            if whiteout and self.markers.whiteout == "chardev":
                tmp = self._work_whiteout()
                work.rename(tmp, upper, rel1, RENAME_EXCHANGE)
            else:
                if whiteout:
                    self.make_whiteout(p1.path(), n1)
                tmp = self.ovl.work.tmp_name()
                upper.rename(rel1, work, tmp)
            self.ovl.discard(tmp, from_upper=True)
        elif whiteout:
            self.make_whiteout(p1.path(), n1)
        self.dircache.upper_removed(p1, n1, whiteout)
        if whiteout:
            self._account(p1.child_path(self.markers.whiteout_name(n1)))

    def _exchange(self, p1: Node, n1: bytes, a: Node, p2: Node, n2: bytes, b: Node) -> None:
        """RENAME_EXCHANGE of two names wholly in the upper."""
        upper = self.ovl.upper
        for node, parent, name in ((a, p2, n2), (b, p1, n1)):
            if node.is_dir and not node.opaque and self.dircache.lower_has(parent, name):
                self.set_opaque(upper, node.path())
                node.opaque = True
        upper.rename(p1.child_path(n1), upper, p2.child_path(n2), RENAME_EXCHANGE)
        self.dircache.upper_added(p1, n1, b.kind)
        self.dircache.upper_added(p2, n2, a.kind)
        a.drop_link(p1, n1)
        b.drop_link(p2, n2)
        a.add_link(p2, n2)
        b.add_link(p1, n1)
