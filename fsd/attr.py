"""Attributes and xattrs of merged objects: getattr, setattr, access, statfs.

An object's attributes are those of its real object (the upper one when it has
been copied up), with fsd's inode number.  A directory merged from several
layers reports st_nlink 1 as the kernel overlay does (counting subdirectories of
every layer is not worth it; `find` accepts 1).  Changing anything copies the
object up first, or only its metadata under metacopy=on.  Overlay markers are
never shown; a user's own `trusted.overlay.*` xattrs are stored escaped, as the
kernel does.

Set-id bits go when an unprivileged caller writes, truncates or chowns a file,
by the kernel's 6.x rule (`setattr_should_drop_suidgid`): setuid always; setgid
when group-exec is set, or when the caller is neither in the file's group nor
root.  fsd takes this on itself (FUSE_HANDLE_KILLPRIV_V2): the kernel then sends
a write with its kill flag, a setattr with no field when its own rule says the
bits go, a truncate or chown as such, and an open with O_TRUNC (atomic, as libfuse
asks) with no removal; fsd applies the rule on each.  See `privs_to_remove`.  An
access ACL set by a caller outside the file's group removes setgid when the kernel
says so (FUSE_SETXATTR_ACL_KILL_SGID), as the upper would for that caller.  A file
capability goes with any write or truncate: the kernel sends the removexattr.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
import os
import stat
from typing import NamedTuple

import pyfuse3

from .copy_up import CopyUp
from .errors import fail
from .inode import Node
from .layer import Layer, set_times
from .ondisk import (NAME_MAX, PRIVATE_PREFIXES, escape_xattr, format_override, is_private_xattr, parse_override,
                     visible_xattr)
from .overlay import Overlay

S_IFDIR = stat.S_IFDIR


class LowerXattrs(NamedTuple):
    """A lower object's xattr names, read once (`AttrOps._lower_xattrs`)."""
    index: int  # of the lower layer they were read from
    real: frozenset[bytes]  # as stored
    shown: list[bytes]  # as the mount shows them


def _visible(names: list[bytes]) -> list[bytes]:
    """The names of real xattrs that show through the mount, as they show."""
    shown = (visible_xattr(n) for n in names)
    return [n for n in shown if n is not None]


def _removes_privs(fields) -> bool:
    """Whether a setattr is one on which the kernel removes set-id bits: a
    truncate, a chown (also to -1:-1), or one with no field left (the kernel's
    FUSE setattr drops the removal it cannot express as a mode).  Not a chmod,
    which brings its own mode, nor a change of times."""
    if fields.update_mode:
        return False
    return bool(fields.update_size or fields.update_uid or fields.update_gid
                or not (fields.update_atime or fields.update_mtime or fields.update_ctime))


class AttrOps:
    """`sup_groups(pid)`: the supplementary groups of a caller (ops.py gives
    pyfuse3's reader of /proc/PID/status)."""

    def __init__(self, ovl: Overlay, copyup: CopyUp, sup_groups: Callable[[int], set[int]]):
        self.ovl = ovl
        self.idmap = ovl.idmap
        self.copyup = copyup
        self.timeout = ovl.timeout
        self.static_nlink = ovl.static_nlink
        self.metacopy = ovl.metacopy
        self._sup_groups = sup_groups
        # what `owner` gives is the stat's own: the entry reply of every walk takes it as is
        self._owner_as_stored = self.idmap.override_xattr is None and self.idmap.identity

    def _in_group(self, caller, gid: int) -> bool:
        """Whether caller's fsgid or one of its supplementary groups is gid.  The
        caller is blocked in its request, so /proc/PID/status is there; if it cannot
        be read (a pid outside fsd's pid namespace is 0), not a member - the kernel
        too removes unless membership is shown."""
        if caller.gid == gid:
            return True
        try:
            return gid in self._sup_groups(caller.pid)
        except (OSError, RuntimeError, ValueError):
            return False

    def location(self, node: Node) -> tuple[Layer, bytes]:
        """The layer and path of the real object that holds node's metadata."""
        if node.upper:
            return self.ovl.upper, node.path()
        index = node.lower_indices[0] if node.is_dir else node.lower_index
        return self.ovl.lowers[index], node.path()

    @staticmethod
    def open_fd(node: Node) -> int | None:
        """For a node with no name left: a descriptor of its real file, upper first."""
        return node.held_fd() if node.gone else None

    def real_stat(self, node: Node) -> os.stat_result:
        if node.gone:
            fd = self.open_fd(node)
            if fd is not None:
                return os.fstat(fd)
            if node.last_stat is not None:
                return node.last_stat
        if node.lower_stat is not None and not node.upper:
            return node.lower_stat  # lowers never change: most replies of a walk
        layer, rel = self.location(node)
        return layer.lstat(rel)

    def owner(self, node: Node, st: os.stat_result) -> tuple[int, int, int, int]:
        """(uid, gid, mode, rdev) as shown: override xattr, then id mapping."""
        uid, gid, mode, rdev = st.st_uid, st.st_gid, st.st_mode, st.st_rdev
        name = self.idmap.override_xattr
        if name is not None and not (node.gone and node.fds):
            layer, rel = self.location(node)
            value = layer.try_getxattr(rel, name)
            parsed = parse_override(value) if value is not None else None
            if parsed is not None:
                uid, gid, override_mode, override_rdev = parsed
                if stat.S_IFMT(override_mode):
                    mode, rdev = override_mode, override_rdev
                else:
                    mode = stat.S_IFMT(mode) | override_mode
        uid, gid = self.idmap.shown(uid, gid)
        return uid, gid, mode, rdev

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """"No such name", cached by the kernel: every change of the merged view
        goes through this mount, and the kernel drops a negative entry itself
        when it creates the name."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = 0
        attr.entry_timeout = self.timeout
        return attr

    def entry(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        """The attributes of node; `st`: its real stat, if the caller has just read it."""
        if st is None:
            st = self.real_stat(node)
        attr = pyfuse3.EntryAttributes()  # generation 0
        if self._owner_as_stored:
            attr.st_mode = st.st_mode
            attr.st_uid = st.st_uid
            attr.st_gid = st.st_gid
            attr.st_rdev = st.st_rdev
        else:
            attr.st_uid, attr.st_gid, attr.st_mode, attr.st_rdev = self.owner(node, st)
        attr.st_ino = node.ino
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        nlink = st.st_nlink
        if node.kind == S_IFDIR and (self.static_nlink or len(node.lower_indices) + node.upper > 1):
            nlink = 1
        elif node.gone:
            nlink = 0
        attr.st_nlink = nlink
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        if node.metacopy:
            lower = self.ovl.lowers[node.lower_index].lstat(node.path())
            attr.st_size, attr.st_blocks = lower.st_size, lower.st_blocks
        return attr

    async def setattr(self, node: Node, attr, fields, fd: int | None, caller) -> pyfuse3.EntryAttributes:
        """Change attributes for caller (a pyfuse3 RequestContext); a file with no
        name left (unlinked while open) is changed through its open descriptor on
        the upper.  A truncate, a chown, or a request with no field (what the
        kernel sends when it removes set-id bits before a write) also removes what
        `privs_to_remove` says, decided before the change (as the kernel does, on
        the group the file had)."""
        target = self._nameless_upper_fd(node)
        kill = 0
        if _removes_privs(fields) or caller.kill_suidgid:
            # Without a size: a chown, or no field (chown(-1, -1), whose kill flag
            # the kernel drops, or the removal before a non-root caller's write,
            # for whom both rules agree).
            kill = self.privs_to_remove(node, caller, chown=not fields.update_size)
        if target is None:
            if fields.update_size:
                await self.copyup.ensure(node, data=attr.st_size > 0)
            elif self.metacopy:
                await self.copyup.metadata(node)
            else:
                await self.copyup.ensure(node)
        node.inherits = None  # what a directory gives new objects may change (DirOps.inherited)
        upper = self.ovl.upper
        rel = node.path() if target is None else None
        override = self.idmap.override_xattr if target is None else None
        if override is not None and (fields.update_uid or fields.update_gid or fields.update_mode):
            new_uid, new_gid = self.idmap.on_disk(attr.st_uid if fields.update_uid else -1,
                                                  attr.st_gid if fields.update_gid else -1)
            self._set_override(node, new_uid, new_gid, attr.st_mode if fields.update_mode else None)
        elif fields.update_uid or fields.update_gid:
            if not self.idmap.squashed:
                uid, gid = self.idmap.on_disk(attr.st_uid if fields.update_uid else -1,
                                              attr.st_gid if fields.update_gid else -1)
                if target is not None:
                    os.fchown(target, uid, gid)
                else:
                    upper.chown(rel, uid, gid)
        if fields.update_mode and node.kind != stat.S_IFLNK and override is None:
            mode = stat.S_IMODE(attr.st_mode)
            if target is not None:
                os.fchmod(target, mode)
            else:
                upper.chmod(rel, mode)
        if fields.update_size:
            real = fd if fd is not None else target if target is not None else upper.open(rel, os.O_WRONLY)
            try:
                os.ftruncate(real, attr.st_size)
                if self.ovl.quota is not None:
                    self.ovl.quota.record(os.fstat(real))
            finally:
                if real not in (fd, target):
                    os.close(real)
        changes = (fields.update_uid or fields.update_gid or fields.update_mode or fields.update_size
                   or fields.update_atime or fields.update_mtime)
        if fields.update_atime or fields.update_mtime or not changes:
            # With no field (chown(-1, -1), a removal of set-id bits) the times are set
            # to what they are: the ctime changes, as the kernel's notify_change does.
            # Else a time not given stays as it is (tar gives the mtime only).
            if changes:
                times = (attr.st_atime_ns if fields.update_atime else None,
                         attr.st_mtime_ns if fields.update_mtime else None)
            else:
                now = os.fstat(target) if target is not None else upper.lstat(rel)
                times = (now.st_atime_ns, now.st_mtime_ns)
            if target is not None:
                set_times(target, None, times)
            else:
                upper.utime(rel, times)
        if kill:
            self._clear_mode_bits(node, kill, target)
        return self.entry(node)

    def privs_to_remove(self, node: Node, caller, chown: bool = False) -> int:
        """The set-id bits (S_ISUID, S_ISGID) that the kernel overlay removes from
        node when caller writes or truncates it: 0 for anything but a regular file
        and for root (taken as holding CAP_FSETID); else setuid, and setgid if
        group-exec is set or caller is in neither the file's group nor, by
        /proc/PID/status, its supplementary groups.  A chown (of anything but a
        directory) removes them whoever calls: setuid, and setgid by the same
        rule, root counting as a member.  Ids are compared as the mount shows
        them, which is how the kernel compares them."""
        if node.is_dir or not chown and (node.kind != stat.S_IFREG or caller.uid == 0):
            return 0
        _, gid, mode, _ = self.owner(node, self.real_stat(node))
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not (caller.uid == 0 or self._in_group(caller, gid))):
            kill |= stat.S_ISGID
        return kill

    def remove_privs(self, node: Node, caller) -> None:
        """When caller writes node, or truncated it by opening it with O_TRUNC (the
        kernel removes nothing then): remove what `privs_to_remove` says.  node must
        be in the upper."""
        kill = self.privs_to_remove(node, caller)
        if kill:
            self._clear_mode_bits(node, kill, self.open_fd(node))

    def _clear_mode_bits(self, node: Node, bits: int, target: int | None) -> None:
        """Clear mode bits of an upper file, in the override xattr under
        xattr_permissions; through target, its descriptor, if it has no name."""
        _, _, mode, _ = self.owner(node, os.fstat(target) if target is not None else self.real_stat(node))
        if not mode & bits:
            return
        mode &= ~bits
        if target is not None:
            os.fchmod(target, stat.S_IMODE(mode))
        elif self.idmap.override_xattr is not None:
            self._set_override(node, -1, -1, mode)
        else:
            self.ovl.upper.chmod(node.path(), stat.S_IMODE(mode))

    def _set_override(self, node: Node, new_uid: int, new_gid: int, new_mode: int | None) -> None:
        """xattr_permissions: owner (on-disk ids, -1: unchanged) and mode (None:
        unchanged) go into the override xattr; the real file keeps what the
        daemon needs to reach it."""
        upper, rel = self.ovl.upper, node.path()
        st = upper.lstat(rel)
        uid, gid, mode, rdev = st.st_uid, st.st_gid, st.st_mode, st.st_rdev
        value = upper.try_getxattr(rel, self.idmap.override_xattr)
        parsed = parse_override(value) if value is not None else None
        if parsed is not None:
            uid, gid, override_mode, rdev = parsed
            mode = override_mode if stat.S_IFMT(override_mode) else stat.S_IFMT(mode) | override_mode
        uid = uid if new_uid == -1 else new_uid
        gid = gid if new_gid == -1 else new_gid
        if new_mode is not None:
            mode = stat.S_IFMT(mode) | stat.S_IMODE(new_mode)
        upper.setxattr(rel, self.idmap.override_xattr, format_override(uid, gid, mode, rdev))
        if new_mode is not None and node.kind != stat.S_IFLNK:
            upper.chmod(rel, stat.S_IMODE(new_mode) | (0o700 if node.is_dir else 0o600))

    # --- xattrs ---------------------------------------------------------------------

    # A file with no name left (unlinked while open, or made with O_TMPFILE) has
    # its xattrs read and changed through its open descriptor, as fgetxattr does.
    #
    # A lower object's xattrs never change (layers are immutable; a lazy layer's
    # fetcher changes only its own marker, which is never shown), so a node that
    # has not been copied up answers from its object's names, listed once on
    # the first xattr request: a name not among them is ENODATA with no system
    # call, and LISTXATTR is answered from memory.  The upper's are read each
    # time.  The names are those of lower `index` (`location`'s): a node whose
    # layer is another is listed again.

    def getxattr(self, node: Node, name: bytes) -> bytes:
        real = self._real_xattr(name, errno.ENODATA)
        if node.gone:
            fd = node.held_fd()
            if fd is not None:
                return os.getxattr(fd, real)
        elif not node.upper:
            names = self._lower_xattrs(node)
            if names is not None and real not in names.real:
                raise pyfuse3.FUSEError(errno.ENODATA)
        layer, rel = self.location(node)
        return layer.getxattr(rel, real)

    def listxattr(self, node: Node) -> list[bytes]:
        if node.gone:
            fd = node.held_fd()
            if fd is not None:
                return _visible([os.fsencode(n) for n in os.listxattr(fd)])
        elif not node.upper:
            names = self._lower_xattrs(node)
            if names is not None:
                return names.shown
        layer, rel = self.location(node)
        return _visible(layer.listxattr(rel))

    def _lower_xattrs(self, node: Node) -> LowerXattrs | None:
        """The xattr names of the lower object of a node not in the upper, read
        once; None if its filesystem refuses to list them
        (the requests then go to it, for its own answer, as before)."""
        index = node.lower_indices[0] if node.is_dir else node.lower_index
        known = node.lower_xattrs
        if known is not None and known.index == index:
            return known
        try:
            names = self.ovl.lowers[index].listxattr(node.path(), strict=True)
        except OSError:
            return None
        known = LowerXattrs(index, frozenset(names), _visible(names))
        node.lower_xattrs = known
        return known

    def _nameless_upper_fd(self, node: Node) -> int | None:
        """The upper descriptor of a node with no name left, to change it through;
        ENOENT if it has only a lower one (nothing of that may change)."""
        fd = self.open_fd(node)
        if fd is not None and not node.fds[fd]:
            raise fail(errno.ENOENT)
        return fd

    async def setxattr(self, node: Node, name: bytes, value: bytes, kill_sgid: bool = False) -> None:
        """kill_sgid: the kernel asks that set-group-ID go with this change (an
        access ACL set by a caller neither in the file's group nor holding
        CAP_FSETID); the upper, changed by fsd, would keep it."""
        real = self._real_xattr(name, errno.EPERM)
        fd = self._nameless_upper_fd(node)
        if fd is None:
            await self._copy_for_metadata(node)
        node.inherits = None  # a default ACL, or the mode with an access ACL (DirOps.inherited)
        if fd is not None:
            os.setxattr(fd, real, value)
        else:
            self.ovl.upper.setxattr(node.path(), real, value)
        if kill_sgid:
            self._clear_mode_bits(node, stat.S_ISGID, fd)

    async def removexattr(self, node: Node, name: bytes) -> None:
        real = self._real_xattr(name, errno.ENODATA)
        fd = self._nameless_upper_fd(node)
        if fd is not None:
            os.removexattr(fd, real)
            return
        layer, rel = self.location(node)
        layer.getxattr(rel, real)  # ENODATA before any copy-up
        await self._copy_for_metadata(node)
        node.inherits = None  # see setxattr
        self.ovl.upper.removexattr(node.path(), real)

    @staticmethod
    def _real_xattr(name: bytes, refusal: int) -> bytes:
        """The real name for a user-given one; fsd's markers are off limits."""
        if not name.startswith(PRIVATE_PREFIXES):  # nearly every name: neither escaped nor refused
            return name
        real = escape_xattr(name)
        if real == name and is_private_xattr(name):
            raise fail(refusal, name)
        return real

    async def _copy_for_metadata(self, node: Node) -> None:
        if self.metacopy:
            await self.copyup.metadata(node)
        else:
            await self.copyup.ensure(node)

    # --- permission and space ---------------------------------------------------

    def access(self, node: Node, mode: int, uid: int, groups: set[int]) -> bool:
        """The classic owner/group/other check (root may do all but execute a
        file no one may execute); used only when the kernel asks, which it does
        not under default_permissions."""
        st = self.real_stat(node)
        if mode == os.F_OK:
            return True
        if uid == 0:
            return not (mode & os.X_OK) or bool(st.st_mode & 0o111) or stat.S_ISDIR(st.st_mode)
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in groups:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return mode & bits == mode

    def statfs(self) -> pyfuse3.StatvfsData:
        layer = self.ovl.upper if self.ovl.upper is not None else self.ovl.lowers[0]
        sv = os.fstatvfs(layer.fd)
        out = pyfuse3.StatvfsData()
        out.f_bsize = sv.f_bsize
        out.f_frsize = sv.f_frsize
        out.f_blocks = sv.f_blocks
        out.f_bfree = sv.f_bfree
        out.f_bavail = sv.f_bavail
        out.f_files = sv.f_files
        out.f_ffree = sv.f_ffree
        out.f_favail = sv.f_favail
        out.f_namemax = NAME_MAX
        if self.ovl.quota is not None:
            self.ovl.quota.statfs(out, sv.f_frsize)
        return out
