"""The pyfuse3 Operations: one thin method per request, no logic of its own.

Every handler is wrapped once, by `request`: tracked for the watchdog, its
errors answered as `errors.fuse_error` says (the one place where OSError
becomes FUSEError and an unexpected exception becomes a logged EIO).  This is the
only module that calls pyfuse3 (replies, invalidation, supplementary groups) and
the only one that counts the kernel's lookups of a node: a node handed to the
kernel in an entry reply (lookup, create, mkdir, mknod, symlink, link,
readdirplus) holds one more.  `Operations(ovl)` puts the mechanisms together on
one mount's `Overlay`.  Every
handler that changes the upper passes the write gate (`freeze.WriteGate`), so
that the upper can be frozen for a reader.  Every request is in
`self.requests` while in flight, for the watchdog.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat

import pyfuse3
import trio

from .attr import AttrOps
from .copy_up import CopyUp
from .dir import DirOps
from .dircache import DirCache
from .errors import fail, fuse_error, log
from .file import FileOps
from .inode import Node
from .namei import Namei
from .overlay import Overlay
from .readdir import ReaddirOps
from .recovery import recover
from . import watchdog
from .watchdog import Request, Requests


def request(method):
    """A handler, wrapped once (the hot path of every request): it is in
    `self.requests` while in flight, for the watchdog; what it raises becomes
    the FUSEError `errors.fuse_error` says; afterwards the kernel is told of the
    cached attributes that went stale during the request (a copy-up changes the
    ctime of the object and of the directory it lands in)."""
    name = method.__name__
    about = watchdog.about(method)

    @functools.wraps(method)
    async def handler(self, *args):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s%r", name, args)
        request = Request(name, about, args[0] if about else None, trio.current_time())
        token = self.requests.begin(request)
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise fuse_error(name, args, exc) from None
        finally:
            self.requests.end(request, token)
            if self.table.stale:
                self._invalidate_stale()

    return handler


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # The kernel's writeback cache stays off.  Measured with scripts/bench (3
    # reps, fsd requests per run): untar 40 MB 27.1k -> 20.4k (WRITE 8.9k ->
    # 2.0k; daemon CPU 1.9 -> 1.5 s), but copy-up of 2,000 files 12.2k ->
    # 18.2k (per file a READ of the partial page before the append, a GETATTR
    # and an mtime SETATTR; CPU 1.8-2.0 -> 2.4-2.6 s).  It would also move
    # EDQUOT from the write(2) that crosses the quota to a later close or
    # fsync, make the freeze flush dirty pages (syncfs) before it closes its
    # gate (freeze.py), and need O_WRONLY handles opened O_RDWR and without
    # O_APPEND (the kernel then reads pages and places appends itself).
    enable_writeback_cache = False
    enable_acl = True  # the kernel checks POSIX ACLs (system.posix_acl_*) too; noacl turns it off
    # fsd removes set-id bits itself (attr.py), so the kernel need not ask for
    # security.capability before every write (FUSE_HANDLE_KILLPRIV_V2); it still
    # removes a capability it knows of itself.
    handle_killpriv_v2 = True
    # no OPENDIR and RELEASEDIR (two of a warm walk's three requests per
    # directory): readdir.py keeps listings by directory, not by handle
    enable_no_opendir = True
    # one READLINK per symlink, not one per path walk through it (every exec
    # reads the loader's and libraries' links): a symlink's target never
    # changes under its node (a new link or a rename over it is another node)
    enable_cache_symlinks = True
    enable_dont_mask = True  # the umask is fsd's to apply: not where a default ACL is inherited

    def __init__(self, ovl: Overlay, noacl: bool = False, on_init=None):
        super().__init__()
        self.ovl = ovl
        self.table = ovl.table
        dircache = DirCache(ovl)
        self.namei = Namei(ovl, dircache)
        self.copyup = CopyUp(ovl, dircache, self.namei)
        self.attrs = AttrOps(ovl, self.copyup, pyfuse3.get_sup_groups)
        self.dirs = DirOps(ovl, dircache, self.namei, self.copyup)
        self.files = FileOps(ovl, self.copyup)
        # where file.py may use passthrough: lower files never change without an upper
        self.enable_passthrough = ovl.upper is None or ovl.upper_passthrough
        self.listings = ReaddirOps(ovl, dircache, self.namei, self.attrs)
        self.writable = ovl.writable
        self.gate = ovl.gate
        self._on_init = on_init
        self.requests = Requests()
        if noacl:
            self.enable_acl = False

    async def recover(self) -> None:
        """Finish or drop what a crash left in the work area (recovery.py)."""
        if self.ovl.work is not None:
            await recover(self.ovl, self.namei, self.dirs, self.copyup)

    def init(self) -> None:
        if self._on_init is not None:
            self._on_init()

    def _invalidate_stale(self) -> None:
        for node in self.table.take_stale():
            try:
                pyfuse3.invalidate_inode(node.ino, attr_only=True)
            except OSError:
                pass  # the kernel has just forgotten it (ENOENT): nothing to drop

    def _writable(self) -> None:
        if not self.writable:
            raise fail(errno.EROFS)

    def _entry(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        """The entry reply for node (st: its real stat, if just read), which the
        kernel then holds one lookup of; a node made for this reply and not
        handed over leaves the table."""
        try:
            attr = self.attrs.entry(node, st)
        except BaseException:
            self.table.unused(node)
            raise
        node.lookups += 1
        return attr

    @request
    async def lookup(self, parent_inode, name, ctx=None):
        node, st = self.namei.named(self.table[parent_inode], name)
        if node is None:
            return self.attrs.negative_entry()
        return self._entry(node, st)

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.table.forget(inode, count)

    @request
    async def getattr(self, inode, ctx=None):
        return self.attrs.entry(self.table[inode])

    @request
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        fd = self.files.fd(fh) if fh is not None and fh in self.files.handles else None
        async with self.gate:
            return await self.attrs.setattr(self.table[inode], attr, fields, fd, ctx)

    @request
    async def readlink(self, inode, ctx):
        layer, rel = self.attrs.location(self.table[inode])
        return layer.readlink(rel)

    @request
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable()
        async with self.gate:
            node, st, _ = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid,
                                              rdev=rdev, umask=ctx.umask)
        return self._entry(node, st)

    @request
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable()
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        async with self.gate:
            node, st, _ = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid,
                                              umask=ctx.umask)
        return self._entry(node, st)

    @request
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        async with self.gate:
            node, st, _ = await self.dirs.create(self.table[parent_inode], name, stat.S_IFLNK | 0o777,
                                              ctx.uid, ctx.gid, target=target)
        return self._entry(node, st)

    @request
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable()
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        async with self.gate:
            node, st, fd = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid,
                                                  umask=ctx.umask, open_flags=self.files.create_flags(flags))
            try:
                attr = self._entry(node, st)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            if fd is None:
                return await self.files.open(node, flags), attr
            return self.files.adopt(node, fd, flags), attr

    @request
    async def tmpfile(self, parent_inode, mode, flags, ctx):
        self._writable()
        async with self.gate:
            node, fd = await self.dirs.tmpfile(self.table[parent_inode], mode, flags, ctx.uid, ctx.gid,
                                               umask=ctx.umask)
        info = self.files.adopt(node, fd, flags)
        try:
            return info, self._entry(node)
        except BaseException:
            self.files.release(info.fh)
            raise

    @request
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable()
        async with self.gate:
            node = await self.dirs.link(self.table[inode], self.table[new_parent_inode], new_name)
        return self._entry(node)

    @request
    async def unlink(self, parent_inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.unlink(self.table[parent_inode], name)

    @request
    async def rmdir(self, parent_inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.rmdir(self.table[parent_inode], name)

    @request
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.rename(self.table[parent_inode_old], name_old,
                                   self.table[parent_inode_new], name_new, flags)

    @request
    async def open(self, inode, flags, ctx):
        node = self.table[inode]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):     # may copy up
            async with self.gate:
                return await self._open(node, flags, ctx)
        return await self._open(node, flags, ctx)

    async def _open(self, node, flags, ctx):
        info = await self.files.open(node, flags)
        if flags & os.O_TRUNC:
            # an atomic O_TRUNC brings no setattr, so none of the kernel's set-id removal
            try:
                self.attrs.remove_privs(node, ctx)
            except BaseException:
                self.files.release(info.fh)
                raise
        return info

    @request
    async def read(self, fh, off, size):
        return self.files.read(fh, off, size)

    @request
    async def write(self, fh, off, buf, ctx=None):
        async with self.gate:
            if ctx is not None and ctx.kill_suidgid:
                self.attrs.remove_privs(self.files.handles[fh].node, ctx)
            return self.files.write(fh, off, buf)

    @request
    async def fallocate(self, fh, mode, offset, length):
        self._writable()
        async with self.gate:
            self.files.fallocate(fh, mode, offset, length)

    @request
    async def lseek(self, fh, offset, whence):
        return self.files.lseek(fh, offset, whence)

    @request
    async def release(self, fh):
        self.files.release(fh)

    @request
    async def fsync(self, fh, datasync):
        await self.files.fsync(fh, datasync)

    @request
    async def opendir(self, inode, ctx):
        # Only from a kernel without FUSE_NO_OPENDIR_SUPPORT (enable_no_opendir):
        # listings are kept by directory (readdir.py), so the handle is the inode.
        # Every change of a listing goes through this mount, and the kernel
        # drops a cached listing itself when it makes one: let it keep them
        # (what it does without OPENDIR).
        return pyfuse3.FileInfo(fh=inode, cache_readdir=True, keep_cache=True)

    @request
    async def readdir(self, inode, start_id, token):
        """pyfuse3 passes the directory's inode in place of a handle
        (enable_no_opendir; opendir's handle is the inode too)."""
        reply = pyfuse3.readdir_reply
        for name, attr, next_id, child in self.listings.entries(self.table[inode], start_id):
            if not reply(token, name, attr, next_id):
                if child is not None:
                    self.table.unused(child)
                return
            if child is not None:
                child.lookups += 1

    @request
    async def releasedir(self, fh):
        pass  # nothing is kept per open directory

    @request
    async def fsyncdir(self, inode, datasync):
        await self.files.fsync_dir(self.table[inode])  # as for readdir

    @request
    async def statfs(self, ctx):
        return self.attrs.statfs()

    @request
    async def getxattr(self, inode, name, ctx):
        return self.attrs.getxattr(self.table[inode], name)

    @request
    async def listxattr(self, inode, ctx):
        return self.attrs.listxattr(self.table[inode])

    @request
    async def setxattr(self, inode, name, value, ctx):
        self._writable()
        async with self.gate:
            await self.attrs.setxattr(self.table[inode], name, value, kill_sgid=ctx.kill_sgid)

    @request
    async def removexattr(self, inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.attrs.removexattr(self.table[inode], name)

    @request
    async def access(self, inode, mode, ctx):
        groups = pyfuse3.get_sup_groups(ctx.pid) | {ctx.gid}
        return self.attrs.access(self.table[inode], mode, ctx.uid, groups)
