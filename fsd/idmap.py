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

from .ondisk import OVERRIDE_XATTRS
from .params import IdMapping, OverlayParams

OVERFLOW_ID = 65534


def _lookup(ranges: tuple[IdMapping, ...], value: int, forward: bool) -> int | None:
    """forward: container (disk) id -> host id; else host id -> container id."""
    for r in ranges:
        start, target = (r.container, r.host) if forward else (r.host, r.container)
        if start <= value < start + r.size:
            return target + value - start
    return None


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

    @property
    def identity(self) -> bool:
        """Whether every id shows as it is stored (no mapping, no squash)."""
        return not self.uids and not self.gids and not self.squashed

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
