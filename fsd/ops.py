"""The pyfuse3 Operations: one thin method per request, no logic of its own.

Every handler is wrapped by `errors.translate`, the one place where OSError
becomes FUSEError and an unexpected exception becomes a logged EIO.  Every
handler that changes the upper passes `self.gate` (`freeze.WriteGate`), so
that the upper can be frozen for a reader.  Every request is in
`self.requests` while in flight, for the watchdog (`watchdog.track_requests`).
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from .attr import AttrOps
from .dir import DirOps
from .errors import fail, translate
from .file import FileOps
from .freeze import WriteGate
from .inode import InodeTable
from .layer import Stack
from .namei import Namei
from .readdir import ReaddirOps
from .watchdog import Requests, track_requests


@track_requests
class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True  # the kernel checks POSIX ACLs (system.posix_acl_*) too; noacl turns it off
    # fsd removes set-id bits itself (attr.py), so the kernel need not ask for
    # security.capability before every write (FUSE_HANDLE_KILLPRIV_V2); it still
    # removes a capability it knows of itself.
    handle_killpriv_v2 = True

    def __init__(self, stack: Stack, table: InodeTable, namei: Namei, attrs: AttrOps,
                 dirs: DirOps, files: FileOps, listings: ReaddirOps, writable: bool, noacl: bool,
                 on_init=None, gate: WriteGate | None = None):
        super().__init__()
        self.stack = stack
        self.table = table
        self.namei = namei
        self.attrs = attrs
        self.dirs = dirs
        self.files = files
        self.listings = listings
        self.writable = writable
        self._on_init = on_init
        self.gate = gate or WriteGate()
        self.requests = Requests()
        if noacl:
            self.enable_acl = False

    def init(self) -> None:
        self.table.serving = True
        if self._on_init is not None:
            self._on_init()

    def _writable(self) -> None:
        if not self.writable:
            raise fail(errno.EROFS)

    def _reply(self, node) -> pyfuse3.EntryAttributes:
        """Attributes of a node handed to the kernel, which now holds one lookup."""
        try:
            attr = self.attrs.entry(node)
        except BaseException:
            self.table.unused(node)
            raise
        node.lookups += 1
        return attr

    @translate
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            node = self.namei.lookup(self.table[parent_inode], name)
        except FileNotFoundError:
            return self.attrs.negative_entry()
        return self._reply(node)

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.table.forget(inode, count)

    @translate
    async def getattr(self, inode, ctx=None):
        return self.attrs.entry(self.table[inode])

    @translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        fd = self.files.fd(fh) if fh is not None and fh in self.files.handles else None
        async with self.gate:
            return await self.attrs.setattr(self.table[inode], attr, fields, fd, ctx)

    @translate
    async def readlink(self, inode, ctx):
        layer, rel = self.attrs.location(self.table[inode])
        return layer.readlink(rel)

    @translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable()
        async with self.gate:
            node = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid,
                                          rdev=rdev)
        return self._reply(node)

    @translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable()
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        async with self.gate:
            node = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid)
        return self._reply(node)

    @translate
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        async with self.gate:
            node = await self.dirs.create(self.table[parent_inode], name, stat.S_IFLNK | 0o777,
                                          ctx.uid, ctx.gid, target=target)
        return self._reply(node)

    @translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable()
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        async with self.gate:
            node = await self.dirs.create(self.table[parent_inode], name, mode, ctx.uid, ctx.gid)
            attr = self._reply(node)
            return await self.files.open(node, flags), attr

    @translate
    async def tmpfile(self, parent_inode, mode, flags, ctx):
        self._writable()
        async with self.gate:
            node, fd = await self.dirs.tmpfile(self.table[parent_inode], mode, flags, ctx.uid, ctx.gid)
        info = self.files.adopt(node, fd, flags)
        try:
            return info, self._reply(node)
        except BaseException:
            self.files.release(info.fh)
            raise

    @translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable()
        async with self.gate:
            node = await self.dirs.link(self.table[inode], self.table[new_parent_inode], new_name)
        return self._reply(node)

    @translate
    async def unlink(self, parent_inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.unlink(self.table[parent_inode], name)

    @translate
    async def rmdir(self, parent_inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.rmdir(self.table[parent_inode], name)

    @translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable()
        async with self.gate:
            await self.dirs.rename(self.table[parent_inode_old], name_old,
                                   self.table[parent_inode_new], name_new, flags)

    @translate
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

    @translate
    async def read(self, fh, off, size):
        return self.files.read(fh, off, size)

    @translate
    async def write(self, fh, off, buf, ctx=None):
        async with self.gate:
            if ctx is not None and ctx.kill_suidgid:
                self.attrs.remove_privs(self.files.handles[fh].node, ctx)
            return self.files.write(fh, off, buf)

    @translate
    async def fallocate(self, fh, mode, offset, length):
        self._writable()
        async with self.gate:
            self.files.fallocate(fh, mode, offset, length)

    @translate
    async def lseek(self, fh, offset, whence):
        return self.files.lseek(fh, offset, whence)

    @translate
    async def release(self, fh):
        self.files.release(fh)

    @translate
    async def fsync(self, fh, datasync):
        await self.files.fsync(fh, datasync)

    @translate
    async def opendir(self, inode, ctx):
        # Every change of a listing goes through this mount, and the kernel
        # drops a cached listing itself when it makes one: let it keep them.
        fh = self.listings.opendir(self.table[inode])
        return pyfuse3.FileInfo(fh=fh, cache_readdir=True, keep_cache=True)

    @translate
    async def readdir(self, fh, start_id, token):
        self.listings.readdir(fh, start_id, token)

    @translate
    async def releasedir(self, fh):
        self.listings.releasedir(fh)

    @translate
    async def fsyncdir(self, fh, datasync):
        await self.files.fsync_dir(self.listings.handles[fh].node)

    @translate
    async def statfs(self, ctx):
        return self.attrs.statfs()

    @translate
    async def getxattr(self, inode, name, ctx):
        return self.attrs.getxattr(self.table[inode], name)

    @translate
    async def listxattr(self, inode, ctx):
        return self.attrs.listxattr(self.table[inode])

    @translate
    async def setxattr(self, inode, name, value, ctx):
        self._writable()
        async with self.gate:
            await self.attrs.setxattr(self.table[inode], name, value, kill_sgid=ctx.kill_sgid)

    @translate
    async def removexattr(self, inode, name, ctx):
        self._writable()
        async with self.gate:
            await self.attrs.removexattr(self.table[inode], name)

    @translate
    async def access(self, inode, mode, ctx):
        groups = pyfuse3.get_sup_groups(ctx.pid) | {ctx.gid}
        return self.attrs.access(self.table[inode], mode, ctx.uid, groups)
