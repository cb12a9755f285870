"""Limits of containers and of users: what a create asks, what a user holds.

A container's limits (`records.Quota`) come from `layers create --size/--inodes`,
else from storage.conf `size`/`inodes`, and are kept in its record; the driver
enforces them (only `fuse` can: see `drivers/base.py`).

`[storage.options] user_quota` bounds the bytes of all of one user's
containers in the store, and is checked when a container is created (the
`containers` measures, then calls `check_user_quota` under the store lock).  Each of
the user's containers counts for its byte limit — what fsd lets it grow to —
or for what it has written when that is more (a container without a byte
limit, or made before the limit was lowered).  The new container asks for its
byte limit.  A create that would pass the quota is refused (`QuotaExceeded`,
naming the limit and the usage); one without a byte limit is refused only
once the quota is used up.  So when every container has a byte limit, fsd
keeps the user within the quota; without, the quota is a create-time check.

A container's user is the uid that created it (`Container.owner`); records
made before owners were kept belong to the store's owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .config import Config
from .errors import QuotaExceeded
from .records import Container, Quota


def container_quota(config: Config, size: int | None = None,
                    inodes: int | None = None) -> Quota:
    """The limits of a new container: flags beat storage.conf."""
    return Quota(bytes=size if size is not None else config.size,
                 inodes=inodes if inodes is not None else config.inodes)


def owner_of(c: Container, store_owner: int) -> int:
    return store_owner if c.owner is None else c.owner


@dataclass(frozen=True)
class UserUsage:
    uid: int
    limit: int | None           # user_quota, None: no limit
    used: int                   # bytes counted against it
    containers: int             # how many of the user's containers


def user_usage(containers: Iterable[Container], uid: int, store_owner: int,
               limit: int | None, written: dict[str, int]) -> UserUsage:
    """What `uid`'s containers count against `limit` (see the module doc);
    `written` maps a container id to the bytes its writable layer holds
    (missing: nothing written yet)."""
    used = count = 0
    for c in containers:
        if owner_of(c, store_owner) == uid:
            used += max(c.quota.bytes or 0, written.get(c.id, 0))
            count += 1
    return UserUsage(uid, limit, used, count)


def check_user_quota(usage: UserUsage, quota: Quota) -> None:
    """QuotaExceeded when a new container with `quota` would take the user
    past the limit, or, with no byte limit of its own, once it is used up."""
    if usage.limit is None:
        return
    asked = quota.bytes or 0
    if usage.used + asked > usage.limit or (not asked and usage.used >= usage.limit):
        raise QuotaExceeded(usage.uid, usage.limit, usage.used, usage.containers, asked)
