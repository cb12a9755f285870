"""Who owns what, as seen through the mount and as kept on disk.

Options as fuse-overlayfs defines them, so that stores written by one read
correctly in the other:

- `uidmapping=`/`gidmapping=` (`C:H:N` triples): an id C+i on disk (as an image
  stores it) shows as the host id H+i, which the container's user namespace in
  turn shows as C+i; a disk id outside every range shows as the overflow id
  65534.  podman passes `uidmapping=:0:300000:65536` for a container whose root
  is host id 300000.
- `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`: every object shows that
  owner; chown succeeds and changes nothing on disk.
- `xattr_permissions=1|2`: owner, group, mode (and file type of special files)
  are kept in `security.fuseoverlayfs.override_stat` (1) or
  `user.containers.override_stat` (2) as `uid:gid:mode[:type]`, for a rootless
  daemon that cannot chown; the real file keeps the daemon's owner.
"""

from __future__ import annotations

import os
import stat

from .params import IdMapping, OverlayParams

OVERFLOW_ID = 65534
OVERRIDE_XATTRS = {1: b"security.fuseoverlayfs.override_stat", 2: b"user.containers.override_stat"}
_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
          "pipe": stat.S_IFIFO, "socket": stat.S_IFSOCK}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


def _lookup(ranges: tuple[IdMapping, ...], value: int, forward: bool) -> int | None:
    """forward: container (disk) id -> host id; else host id -> container id."""
    for r in ranges:
        start, target = (r.container, r.host) if forward else (r.host, r.container)
        if start <= value < start + r.size:
            return target + value - start
    return None


def parse_override(value: bytes) -> tuple[int, int, int, int] | None:
    """(uid, gid, mode with file type, rdev) from an override xattr, or None if malformed."""
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


class IdMap:
    def __init__(self, params: OverlayParams):
        self.uids = params.uidmapping
        self.gids = params.gidmapping
        self.squash_uid = params.squash_to_uid
        self.squash_gid = params.squash_to_gid
        self.override_xattr = OVERRIDE_XATTRS.get(params.xattr_permissions)

    @property
    def squashed(self) -> bool:
        return self.squash_uid is not None or self.squash_gid is not None

    def shown(self, uid: int, gid: int) -> tuple[int, int]:
        """Disk ids as the mount shows them."""
        if self.uids:
            uid = _lookup(self.uids, uid, forward=True)
            uid = OVERFLOW_ID if uid is None else uid
        if self.gids:
            gid = _lookup(self.gids, gid, forward=True)
            gid = OVERFLOW_ID if gid is None else gid
        if self.squash_uid is not None:
            uid = self.squash_uid
        if self.squash_gid is not None:
            gid = self.squash_gid
        return uid, gid

    def on_disk(self, uid: int, gid: int) -> tuple[int, int]:
        """Ids given through the mount (-1: unchanged) as they are stored; an id
        outside the mapping is stored as the overflow id, as fuse-overlayfs does
        (podman's `--uidmap` creates files as ids it does not map)."""
        if self.uids and uid != -1:
            mapped = _lookup(self.uids, uid, forward=False)
            uid = OVERFLOW_ID if mapped is None else mapped
        if self.gids and gid != -1:
            mapped = _lookup(self.gids, gid, forward=False)
            gid = OVERFLOW_ID if mapped is None else mapped
        return uid, gid
