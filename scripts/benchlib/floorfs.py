"""The pyfuse3 floor: a bare passthrough filesystem, a measuring instrument of
the bench (not product code, not an overlay).

    floorfs.py [-f] -o upperdir=DIR[,...] MOUNTPOINT    (or lowerdir=DIR alone)

It serves one directory (the upperdir, else the one lowerdir) as it is: every
request is answered straight from that directory, inode number = st_ino, no
layers, no whiteouts, no lookup counting, no error translation beyond
OSError -> FUSEError; only a file opened for writing that it did not make is
first copied, as an overlay must copy it up (`_copy_up`), so that the floor
of copy-up (w4) includes the copy.  It runs on the same patched pyfuse3 and receive
loop as fsd and asks the kernel for what fsd asks (default_permissions, POSIX
ACLs, HANDLE_KILLPRIV_V2, cached symlinks, no writeback cache, the same entry and attribute
timeouts, cached listings, keep_cache on open), so that the kernel sends it
the requests it sends fsd. What fsd spends per request above what this spends
is fsd's overlay logic; what this spends is the floor of any Python
filesystem on pyfuse3 and trio (scripts/bench's "pyfuse3 floor" column).

Its code shares nothing with fsd's, on purpose (an attribute reply is built
here as fsd builds it): it must not measure fsd.  Not a filesystem to use: it
ignores forget (inode numbers of deleted files that the backing filesystem
reuses get the new file's path), renames with flags fail EINVAL, and set-id
bits are left to the backing filesystem.
Imports nothing of the bench: it runs as the FUSE daemon, with the repo's venv.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio
from pyfuse3 import FUSEError

TIMEOUT = 3600.0  # fsd's default entry and attribute timeout
ROOT = pyfuse3.ROOT_INODE


class Floor(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True
    handle_killpriv_v2 = True
    enable_no_opendir = True  # as fsd: readdir gets the directory's inode
    enable_cache_symlinks = True  # as fsd: one READLINK per symlink

    def __init__(self, root: bytes):
        super().__init__()
        self.root_ino = os.lstat(root).st_ino
        self.paths: dict[int, bytes] = {ROOT: root}  # inode -> absolute path
        self.dirs: dict[int, list[bytes]] = {}  # directory inode -> its names, taken at offset 0
        self.euid, self.egid = os.geteuid(), os.getegid()
        self.own: set[int] = set()  # inodes of files it made or copied: written in place

    def _entry(self, st: os.stat_result, path: bytes) -> pyfuse3.EntryAttributes:
        """The reply for the object at path; its inode leads to path from now on."""
        ino = ROOT if st.st_ino == self.root_ino else st.st_ino
        self.paths[ino] = path
        return self._attr(st, ino)

    @staticmethod
    def _attr(st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.entry_timeout = TIMEOUT
        attr.attr_timeout = TIMEOUT
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _own(self, path: bytes, ctx) -> None:
        """A new object belongs to its creator, as on a local filesystem."""
        if ctx.uid != self.euid or ctx.gid != self.egid:
            os.lchown(path, ctx.uid, ctx.gid)

    async def lookup(self, parent_inode, name, ctx=None):
        path = self.paths[parent_inode] + b"/" + name
        try:
            return self._entry(os.lstat(path), path)
        except FileNotFoundError:
            attr = pyfuse3.EntryAttributes()
            attr.st_ino = 0
            attr.entry_timeout = TIMEOUT
            return attr
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def getattr(self, inode, ctx=None):
        path = self.paths[inode]
        try:
            return self._entry(os.lstat(path), path)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self.paths[inode]
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode), follow_symlinks=False)
            if fields.update_uid or fields.update_gid:
                os.lchown(path, attr.st_uid if fields.update_uid else -1,
                          attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
            return self._entry(os.lstat(path), path)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def readlink(self, inode, ctx):
        try:
            return os.readlink(self.paths[inode])
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    def _make(self, parent_inode, name, ctx, make):
        """The entry of a new object that make(path) creates at name."""
        path = self.paths[parent_inode] + b"/" + name
        try:
            make(path)
            self._own(path, ctx)
            return self._entry(os.lstat(path), path)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._make(parent_inode, name, ctx, lambda path: os.mknod(path, mode, rdev))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._make(parent_inode, name, ctx, lambda path: os.mkdir(path, mode))

    async def symlink(self, parent_inode, name, target, ctx):
        return self._make(parent_inode, name, ctx, lambda path: os.symlink(target, path))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self.paths[new_parent_inode] + b"/" + new_name
        try:
            os.link(self.paths[inode], path, follow_symlinks=False)
            return self._entry(os.lstat(path), self.paths[inode])
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def unlink(self, parent_inode, name, ctx):
        try:
            os.unlink(self.paths[parent_inode] + b"/" + name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(self.paths[parent_inode] + b"/" + name)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise FUSEError(errno.EINVAL)
        old = self.paths[parent_inode_old] + b"/" + name_old
        new = self.paths[parent_inode_new] + b"/" + name_new
        try:
            os.rename(old, new)
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        prefix = old + b"/"
        for ino, path in list(self.paths.items()):
            if path == old:
                self.paths[ino] = new
            elif path.startswith(prefix):
                self.paths[ino] = new + path[len(old):]

    @staticmethod
    def _copy_up(path: bytes, data: bool) -> None:
        """The least a copy-up that loses nothing does, as the kernel overlay
        and fsd make one: a new file (beside path: no work area, no xattrs,
        owner or times to copy), the data (none before an O_TRUNC), fsync, and
        only then the rename that publishes it.  What w4 pays above this is
        the overlay's logic, not the durability."""
        tmp = path + b".floor-copy"
        st = os.lstat(path)
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode))
        try:
            if data and st.st_size:
                src = os.open(path, os.O_RDONLY)
                try:
                    done = 0
                    while done < st.st_size:
                        step = os.copy_file_range(src, dst, st.st_size - done, done, done)
                        if not step:
                            break
                        done += step
                finally:
                    os.close(src)
            os.fsync(dst)
        finally:
            os.close(dst)
        os.rename(tmp, path)

    async def open(self, inode, flags, ctx):
        try:
            if inode not in self.own and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
                self._copy_up(self.paths[inode], not flags & os.O_TRUNC)
                self.own.add(inode)
            fd = os.open(self.paths[inode], flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        except OSError as exc:
            raise FUSEError(exc.errno) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self.paths[parent_inode] + b"/" + name
        try:
            fd = os.open(path, (flags | os.O_CREAT) & ~os.O_NOCTTY, mode)
            self._own(path, ctx)
            entry = self._entry(os.fstat(fd), path)
            self.own.add(entry.st_ino)
            return pyfuse3.FileInfo(fh=fd, keep_cache=True), entry
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def read(self, fh, off, size):
        return pyfuse3.FdRange(fh, off, size)  # libfuse reads it into the reply

    async def write(self, fh, off, buf, ctx=None):
        try:
            return os.pwrite(fh, buf, off)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def release(self, fh):
        os.close(fh)

    async def fsync(self, fh, datasync):
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def opendir(self, inode, ctx):
        # only from a kernel without FUSE_NO_OPENDIR_SUPPORT: the handle is the inode
        return pyfuse3.FileInfo(fh=inode, cache_readdir=True, keep_cache=True)

    async def readdir(self, fh, start_id, token):
        path = self.paths[fh]  # fh: the directory's inode
        try:
            names = self.dirs.get(fh) if start_id else None
            if names is None:
                names = self.dirs[fh] = [b".", b"..", *os.listdir(path)]
            if start_id >= len(names):
                del self.dirs[fh]  # read to its end
                return
            for pos in range(start_id, len(names)):
                name = names[pos]
                if pos < 2:  # . and ..: the kernel takes no inode from them
                    st = os.lstat(path if pos == 0 else path + b"/..")
                    attr = self._attr(st, ROOT if st.st_ino == self.root_ino else st.st_ino)
                else:
                    child = path + b"/" + name
                    try:
                        attr = self._entry(os.lstat(child), child)
                    except FileNotFoundError:
                        continue
                if not pyfuse3.readdir_reply(token, name, attr, pos + 1):
                    return
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        fd = os.open(self.paths[fh], os.O_RDONLY | os.O_DIRECTORY)
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)

    async def statfs(self, ctx):
        sv = os.statvfs(self.paths[ROOT])
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(out, name, getattr(sv, name))
        return out

    async def getxattr(self, inode, name, ctx):
        try:
            return os.getxattr(self.paths[inode], name, follow_symlinks=False)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def listxattr(self, inode, ctx):
        try:
            return [os.fsencode(n) for n in os.listxattr(self.paths[inode], follow_symlinks=False)]
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def setxattr(self, inode, name, value, ctx):
        try:
            os.setxattr(self.paths[inode], name, value, follow_symlinks=False)
        except OSError as exc:
            raise FUSEError(exc.errno) from None

    async def removexattr(self, inode, name, ctx):
        try:
            os.removexattr(self.paths[inode], name, follow_symlinks=False)
        except OSError as exc:
            raise FUSEError(exc.errno) from None


def _backing_dir(options: str) -> str:
    values = dict(o.partition("=")[::2] for o in options.split(","))
    if values.get("upperdir"):
        return values["upperdir"]
    lowers = values.get("lowerdir", "")
    if not lowers or ":" in lowers:
        raise SystemExit("floorfs: needs upperdir=DIR or a single lowerdir=DIR")
    return lowers


def main(argv: list[str]) -> int:
    """Mount and serve until unmounted; the process ends here."""
    options, mountpoint = None, None
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options = next(args, "")
        elif arg != "-f":
            mountpoint = arg
    if options is None or mountpoint is None:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    root = os.fsencode(os.path.abspath(_backing_dir(options)))
    os.umask(0)
    fuse_opts = {"fsname=floorfs", "subtype=floorfs", "default_permissions"}
    if os.geteuid() == 0:
        fuse_opts.update(("allow_other", "dev", "suid"))
    pyfuse3.init(Floor(root), mountpoint, fuse_opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    # as fsd does: no interpreter teardown once the mount is gone
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
