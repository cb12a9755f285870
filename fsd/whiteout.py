"""The one description of overlay markers on disk.

Read in every layer, in every format the kernel, fuse-overlayfs and OCI layers use:
whiteouts are a character device 0/0 or an empty file `.wh.NAME`; a directory is
opaque when it carries `trusted.overlay.opaque`, `user.overlay.opaque` or
`user.fuseoverlayfs.opaque` = "y", or holds a `.wh..wh..opq` file.  Written in the
kernel's formats, chosen per mount by probing the upper (see `Markers`).
"""

from __future__ import annotations

import dataclasses
import os
import stat

WH_PREFIX = b".wh."
OPAQUE_FILE = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque")
# xattrs that describe the overlay itself: never copied up, shown or changed.
MARKER_PREFIXES = (b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs.")
# ...and those that describe an object's owner for rootless mounts (see idmap.py):
# copied up with the object, but never shown or changed directly.
PRIVATE_PREFIXES = MARKER_PREFIXES + (b"security.fuseoverlayfs.", b"user.containers.override_stat")
NAME_MAX = 255


def is_whiteout_dev(kind: int, rdev: int) -> bool:
    """A character device 0/0: the kernel's whiteout."""
    return kind == stat.S_IFCHR and rdev == 0


def whiteout_target(name: bytes) -> bytes | None:
    """For `.wh.NAME` the hidden NAME; None for other names and the opaque marker."""
    if name.startswith(WH_PREFIX) and name != OPAQUE_FILE and len(name) > len(WH_PREFIX):
        return name[len(WH_PREFIX):]
    return None


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
