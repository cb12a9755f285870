"""Every on-disk format fsd reads or writes, in one place: readers and writers.

- Markers, read in every layer in every format the kernel, fuse-overlayfs and OCI
  layers use: whiteouts are a character device 0/0 or an empty file `.wh.NAME`;
  a directory is opaque when it carries `trusted.overlay.opaque`,
  `user.overlay.opaque` or `user.fuseoverlayfs.opaque` = "y", or holds a
  `.wh..wh..opq` file.  Written in the kernel's formats, chosen per mount by
  probing the upper (`probe_markers`, `Markers`).
- fsd's private xattrs: the origin inode number of a copied-up object and the
  metacopy flag (under the probed private prefix), and the owner override of
  rootless mounts (`xattr_permissions=`, fuse-overlayfs' format).
- The store's marks of a lazy layer (`user.strata.lazy`, read by lazy.py): on
  its root, the path of the fetch socket; on a regular file, that its content
  is not there yet.
- The work area: fsd's directory inside the workdir, its lock, its scratch
  directory, the hard-link index and the directory-move journal (names and
  record formats here; what is done with them is workarea.py's).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from .layer import RENAME_WHITEOUT, Layer

WH_PREFIX = b".wh."
OPAQUE_FILE = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque")
# A lazy layer's marks, written and removed by the store's fetcher only: the
# layer root's value is the fetch socket's path, while any file in the layer is
# incomplete; a regular file carries it (empty) until its content is in place.
LAZY_XATTR = b"user.strata.lazy"
# xattrs that describe the overlay or a layer itself: never copied up, shown or changed.
MARKER_PREFIXES = (b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs.", b"user.strata.")
# The owner override of rootless mounts, by `xattr_permissions=` value (idmap.py):
# copied up with the object, but never shown or changed directly.
OVERRIDE_XATTRS = {1: b"security.fuseoverlayfs.override_stat", 2: b"user.containers.override_stat"}
PRIVATE_PREFIXES = MARKER_PREFIXES + (b"security.fuseoverlayfs.", OVERRIDE_XATTRS[2])
NAME_MAX = 255
ACL_DEFAULT = b"system.posix_acl_default"  # a directory's ACL for what is made in it


def is_whiteout_dev(kind: int, rdev: int) -> bool:
    """A character device 0/0: the kernel's whiteout."""
    return kind == stat.S_IFCHR and rdev == 0


def is_reserved_name(name: bytes) -> bool:
    """Names that can never be looked up or created through the mount."""
    return name.startswith(WH_PREFIX)


ESCAPED_PREFIX = b"trusted.overlay.overlay."  # how the kernel stores a user's trusted.overlay.X


def is_private_xattr(name: bytes) -> bool:
    return name.startswith(PRIVATE_PREFIXES)


def is_marker_xattr(name: bytes) -> bool:
    return name.startswith(MARKER_PREFIXES) and not name.startswith(ESCAPED_PREFIX)


def escape_xattr(name: bytes) -> bytes:
    """The real name of an xattr as set through the mount: `trusted.overlay.X` is
    stored as `trusted.overlay.overlay.X` (kernel 6.7+), so users may set
    overlay xattrs, e.g. for a nested overlay, without confusing this one."""
    if name.startswith(b"trusted.overlay."):
        return b"trusted.overlay.overlay." + name[len(b"trusted.overlay."):]
    return name


def visible_xattr(real: bytes) -> bytes | None:
    """The name a real xattr shows through the mount, or None if it is private."""
    if real.startswith(ESCAPED_PREFIX):
        return b"trusted.overlay." + real[len(ESCAPED_PREFIX):]
    return None if is_private_xattr(real) else real


def opaque_by_xattr(names: list[bytes], get) -> bool:
    """True if one of the opaque xattrs present in `names` reads "y"; `get(name)` reads one."""
    for attr in OPAQUE_XATTRS:
        if attr in names and get(attr) == b"y":
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Markers:
    """The marker formats fsd writes into this mount's upper.

    whiteout: 'chardev' (mknod 0/0, what the kernel writes) or 'file' (`.wh.NAME`).
    opaque_xattr: the xattr set on opaque dirs, or None to write `.wh..wh..opq`.
    private_prefix: the namespace for fsd's own bookkeeping xattrs (origin inode).
    """

    whiteout: str
    opaque_xattr: bytes | None
    private_prefix: bytes | None
    rename_whiteout: bool

    @property
    def origin_xattr(self) -> bytes | None:
        return None if self.private_prefix is None else self.private_prefix + b"fsd.ino"

    @property
    def metacopy_xattr(self) -> bytes | None:
        """Marks an upper file holding metadata only; its data is in the lower."""
        return None if self.private_prefix is None else self.private_prefix + b"fsd.metacopy"

    def whiteout_name(self, name: bytes) -> bytes:
        """The directory entry that records a whiteout of `name`."""
        return name if self.whiteout == "chardev" else WH_PREFIX + name


def whiteout_mode() -> tuple[int, int]:
    return stat.S_IFCHR | 0o000, os.makedev(0, 0)


def _join(base: bytes, name: bytes) -> bytes:
    return base + b"/" + name if base else name


# --- reading a real directory -------------------------------------------------------

def scan_dir(layer: Layer, rel: bytes, xattrs: bool = False
             ) -> tuple[dict[bytes, int], set[bytes], bool, list[bytes] | None]:
    """One real directory: its entries (name -> S_IFMT), the names it whites out,
    whether a `.wh..wh..opq` file makes it opaque, and with `xattrs` its xattr
    names (for dir_is_opaque; else None).  Reserved `.wh.` names are never
    entries; a real entry of the same layer wins over its whiteout."""
    names: dict[bytes, int] = {}
    whiteouts: set[bytes] = set()
    opaque = False
    if xattrs:
        entries, attrs = layer.scandir_and_xattrs(rel)
    else:
        entries, attrs = layer.scandir(rel), None
    # Once per listed entry of every directory read: the ordinary name (not
    # `.wh.`, not a character device) costs two tests and the insert.
    for name, kind, rdev in entries:
        if name.startswith(WH_PREFIX):
            if name == OPAQUE_FILE:
                opaque = True
            elif len(name) > len(WH_PREFIX):
                whiteouts.add(name[len(WH_PREFIX):])  # `.wh.NAME` hides NAME
            elif is_whiteout_dev(kind, rdev):
                whiteouts.add(name)
        elif kind == stat.S_IFCHR and is_whiteout_dev(kind, rdev):
            whiteouts.add(name)
        else:
            names[name] = kind
    whiteouts.difference_update(names)
    return names, whiteouts, opaque, attrs


def dir_is_opaque(layer: Layer, rel: bytes, attrs: list[bytes] | None = None,
                  marker_file: bool | None = None) -> bool:
    """Opaque by a `.wh..wh..opq` file or by xattr.  `attrs`: its xattr names, and
    `marker_file`: whether the file is there (scan_dir's answer), if known; each
    one not known costs a system call."""
    if marker_file is None:
        marker_file = layer.try_lstat(_join(rel, OPAQUE_FILE)) is not None
    if marker_file:
        return True
    if attrs is None:
        attrs = layer.listxattr(rel)
    return opaque_by_xattr(attrs, lambda a: layer.try_getxattr(rel, a))


# --- writing markers into the upper (or an object being built in the work area) ------

def whiteout_fits(name: bytes, markers: Markers) -> bool:
    """Whether a whiteout of `name` can be written in the mount's format
    (`.wh.NAME` must fit in NAME_MAX)."""
    return markers.whiteout == "chardev" or len(name) + len(WH_PREFIX) <= NAME_MAX


def write_whiteout(layer: Layer, dir_rel: bytes, name: bytes, markers: Markers, make_dev) -> None:
    """Create a whiteout of `name` in directory dir_rel, in the mount's format;
    the name must be free.  ENAMETOOLONG when `.wh.NAME` does not fit.
    make_dev(layer, rel) makes a character-device whiteout (the work area's
    `link_whiteout`, a link of its shared one)."""
    if markers.whiteout == "chardev":
        make_dev(layer, _join(dir_rel, name))
        return
    if not whiteout_fits(name, markers):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
    os.close(layer.open(_join(dir_rel, WH_PREFIX + name), os.O_WRONLY | os.O_CREAT, 0))


def write_whiteout_dev(layer: Layer, rel: bytes) -> None:
    """A kernel whiteout (char device 0/0) at rel, to be renamed over an entry."""
    mode, rdev = whiteout_mode()
    layer.mknod(rel, mode, rdev)


def set_opaque(layer: Layer, rel: bytes, markers: Markers) -> None:
    """Mark directory rel opaque in the mount's format."""
    if markers.opaque_xattr is not None:
        layer.setxattr(rel, markers.opaque_xattr, b"y")
    else:
        os.close(layer.open(_join(rel, OPAQUE_FILE), os.O_WRONLY | os.O_CREAT, 0))


def probe_markers(work: Layer, scratch: bytes, forced_whiteout: str | None) -> Markers:
    """Find out, in a scratch dir of the work area, what the upper's filesystem
    lets fsd write: chardev whiteouts, trusted.* or user.* xattrs, RENAME_WHITEOUT."""
    probe = scratch + b"/probe"
    work.mkdir(probe, 0o700)
    try:
        chardev = True
        try:
            write_whiteout_dev(work, probe + b"/wh")
        except OSError:
            chardev = False
        opaque = prefix = None
        for candidate in (b"trusted.overlay.", b"user.overlay."):
            try:
                work.setxattr(probe, candidate + b"fsd.probe", b"y")
            except OSError:
                continue
            opaque, prefix = candidate + b"opaque", candidate
            break
        rename_whiteout = False
        if chardev:
            os.close(work.open(probe + b"/a", os.O_WRONLY | os.O_CREAT, 0o600))
            try:
                work.rename(probe + b"/a", work, probe + b"/b", RENAME_WHITEOUT)
                rename_whiteout = True
            except OSError:
                pass
    finally:
        for name, _, _ in work.scandir(probe):
            work.unlink(probe + b"/" + name)
        work.rmdir(probe)
    whiteout = forced_whiteout or ("chardev" if chardev else "file")
    return Markers(whiteout=whiteout, opaque_xattr=opaque, private_prefix=prefix,
                   rename_whiteout=rename_whiteout and whiteout == "chardev")


# --- fsd's origin number of a copied-up object --------------------------------------

def format_origin(key: int) -> bytes:
    return b"%d" % key


def parse_origin(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


# --- the owner override of rootless mounts (fuse-overlayfs' format) -----------------

_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "pipe": stat.S_IFIFO, "socket": stat.S_IFSOCK}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


def parse_override(value: bytes) -> tuple[int, int, int, int] | None:
    """(uid, gid, mode with file type, rdev) from an override xattr `uid:gid:mode[:type]`,
    or None if malformed."""
    try:
        fields = value.decode().split(":")
        uid, gid, mode = int(fields[0]), int(fields[1]), int(fields[2], 8)
        rdev = 0
        if len(fields) > 3:
            kind = fields[3]
            if kind.startswith(("block-", "char-")):
                name, major, minor = kind.split("-")
                mode = stat.S_IMODE(mode) | (stat.S_IFBLK if name == "block" else stat.S_IFCHR)
                rdev = os.makedev(int(major), int(minor))
            elif kind in _TYPES:
                mode = stat.S_IMODE(mode) | _TYPES[kind]
        return uid, gid, mode, rdev
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def format_override(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    kind = stat.S_IFMT(mode)
    text = f"{uid}:{gid}:0{stat.S_IMODE(mode):o}"
    if kind in (stat.S_IFBLK, stat.S_IFCHR):
        name = "block" if kind == stat.S_IFBLK else "char"
        text += f":{name}-{os.major(rdev)}-{os.minor(rdev)}"
    elif kind in _TYPE_NAMES and kind != stat.S_IFREG:
        text += f":{_TYPE_NAMES[kind]}"
    return text.encode()


# --- the work area's layout ----------------------------------------------------------

WORK_AREA = "fsd"  # fsd's own directory inside the workdir
LOCK = "lock"  # flock'd by the mount that owns the work area
TMP_DIR = b"tmp"  # objects being built; emptied at every mount
INDEX_DIR = b"index"  # copies of lower hard-linked files until all their names link them
JOURNAL = b"moving"  # a directory move under way
# a character device 0/0 of which every whiteout fsd makes is a hard link (as
# the kernel overlay shares one in its workdir); made again at its filesystem's
# link limit, and at every mount
SHARED_WHITEOUT = b"whiteout"
# the freeze protocol (freeze.py): pid files, each written whole (temp + rename)
REQUEST = "freeze"  # the reader's pid, written before SIGUSR1
FROZEN = "frozen"  # the same pid, written by fsd once the gate is closed


def index_name(index: int, st_ino: int) -> bytes:
    """The index entry of lower file (layer index, st_ino)."""
    return b"%s/%d-%d" % (INDEX_DIR, index, st_ino)


def parse_index_name(entry: bytes) -> tuple[int, int] | None:
    """(layer index, st_ino) of an index entry's name, None if it is not one."""
    try:
        index, st_ino = (int(x) for x in entry.split(b"-"))
    except ValueError:
        return None
    return index, st_ino


def format_journal(src: bytes, dst: bytes, key: int) -> bytes:
    """The move journal's record: a merged directory src is being moved to dst,
    and the new tree carries the origin number key."""
    import json  # on first use: not at every daemon's start
    return json.dumps({"src": src.hex(), "dst": dst.hex(), "key": key}).encode()


def parse_journal(data: bytes) -> tuple[bytes, bytes, int]:
    import json  # on first use: not at every daemon's start
    record = json.loads(data)
    return bytes.fromhex(record["src"]), bytes.fromhex(record["dst"]), int(record["key"])
