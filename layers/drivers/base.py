"""The driver interface and what every driver shares: reading the mount table.

Level 2: imports `errors`, `layout`, `changes`, `changeset`.

A driver is told, for one container, its own dir (`cdir`, created empty by
the store) and its image's layer content dirs TOP first (`lowers`).  It owns
what goes inside `cdir`.  Contract of each method:

- `create(cdir, lowers)`: prepare the container's dirs; may be slow (vfs
  copies), so the store calls it outside the lock.
- `mount(cdir, lowers) -> Mounted`: make the merged tree live; the store calls
  it only when the registry holds no live mount.  `MountFailed` on failure.
- `umount(cdir, mounted)`: undo `mount`; a mount already gone is not an error.
- `alive(cdir, mounted)`: whether the recorded mount still works (a dead fuse
  daemon leaves "transport endpoint is not connected").
- `clean_dead(cdir, mounted)`: detach what a dead mount left behind.
- `changes(cdir, lowers)`: the container's A/C/D list (see `changes.py`).
- `changeset(cdir, lowers, epoch)`: the entries of a layer holding the
  container's changes (see `changeset.py`); the container is not mounted.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterator

from .. import changes, changeset


@dataclass(frozen=True)
class Mounted:
    mountpoint: str
    pid: int | None = None


def _unescape_mountinfo(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_fstype(path: str) -> str | None:
    """The fs type mounted exactly at `path` (last one wins), or None."""
    path = os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and _unescape_mountinfo(fields[4]) == path:
                    found = right.split()[0]
    except OSError:
        return None
    return found


def reachable(path: str) -> bool:
    """False when the fs at `path` answers ENOTCONN (dead fuse daemon).
    statfs always reaches the daemon; stat may be answered from the cache."""
    try:
        os.statvfs(path)
        return True
    except OSError as e:
        return e.errno not in (errno.ENOTCONN, errno.ECONNABORTED)


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Driver:
    name = "base"
    form = "oci"                   # layout.FORM_*: marker form of layer dirs
    has_upper = True

    def check_usable(self) -> None:
        """DriverError when this driver cannot work here."""

    def create(self, cdir: str, lowers: list[str]) -> None:
        for sub in ("upper", "work", "merged"):
            os.mkdir(os.path.join(cdir, sub), 0o755)

    def mount(self, cdir: str, lowers: list[str]) -> Mounted:
        raise NotImplementedError

    def umount(self, cdir: str, mounted: Mounted) -> None:
        raise NotImplementedError

    def alive(self, cdir: str, mounted: Mounted) -> bool:
        return mount_fstype(mounted.mountpoint) is not None \
            and reachable(mounted.mountpoint) and pid_alive(mounted.pid)

    def clean_dead(self, cdir: str, mounted: Mounted) -> None:
        self.umount(cdir, mounted)

    def changes(self, cdir: str, lowers: list[str]) -> list[tuple[str, str]]:
        return changes.upper_changes(os.path.join(cdir, "upper"), lowers)

    def changeset(self, cdir: str, lowers: list[str],
                  epoch: int | None) -> Iterator[changeset.Entry]:
        return changeset.tree_entries(os.path.join(cdir, "upper"), markers=True,
                                      epoch=epoch)
