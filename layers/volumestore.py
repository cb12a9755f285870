"""Volume records and their data dirs, named by the user (or at random).

`volumes/<name>.json` is the record, `volumes/<name>/_data/` the data that
containers bind-mount.  A volume's life is its own: removing a container
leaves its volumes (but for `rm -v` of anonymous ones, decided by `containers.rm`,
which also refuses to remove a volume a container uses).

Creating: record `incomplete` with the lease → dir made → record complete.
Removing: record `incomplete` → dir renamed into the caller's staging dir
(removed outside the lock) → record deleted.  `remove_leftover` finishes
either after a crash.
"""

from __future__ import annotations

import os
import time

from . import fsutil
from .errors import BadReference
from .layout import StorePaths
from .records import Volume, replace
from .recordstore import RecordStore


class VolumeStore(RecordStore[Volume]):
    kind = Volume

    def __init__(self, paths: StorePaths):
        super().__init__(paths.volumes)
        self.paths = paths

    def _path(self, key: str) -> str:
        return self.paths.volume_record(key)

    def get(self, name: str) -> Volume | None:
        """The complete volume `name`, or None (also for a malformed name)."""
        try:
            v = self.load(name)
        except BadReference:
            return None
        return v if v is not None and not v.incomplete else None

    def data_dir(self, name: str) -> str:
        return self.paths.volume_data(name)

    def create(self, name: str, labels: tuple[tuple[str, str], ...], anonymous: bool,
               lease: str) -> Volume:
        """Make the volume (caller holds the store lock; `name` is free)."""
        volume = Volume(name=name, created=time.time(), labels=labels,
                        anonymous=anonymous, incomplete=True, lease=lease)
        self.save(name, volume)
        fsutil.crash_point("volume-recorded")
        os.makedirs(self.paths.volume_data(name), mode=0o755)
        fsutil.sync_tree(self.paths.volume_dir(name))
        volume = replace(volume, incomplete=False, lease=None)
        self.save(name, volume)
        return volume

    def begin_delete(self, volume: Volume, trash_dir: str, lease: str) -> None:
        self.save(volume.name, replace(volume, incomplete=True, lease=lease))
        fsutil.crash_point("volume-delete-marked")
        try:
            os.rename(self.paths.volume_dir(volume.name),
                      os.path.join(trash_dir, "volume-" + volume.name))
        except FileNotFoundError:
            pass
        self.delete(volume.name)

    def remove_leftover(self, volume: Volume) -> None:
        fsutil.remove_tree(self.paths.volume_dir(volume.name))
        self.delete(volume.name)

    def orphan_dirs(self) -> list[str]:
        """Volume dirs without a record (never left by us: put there by hand)."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if os.path.isdir(path) and not os.path.exists(path + ".json"):
                out.append(name)
        return out

    def adopt(self, name: str) -> Volume:
        """A record for an orphan dir (check --repair): its data is kept."""
        volume = Volume(name=name, created=os.stat(self.paths.volume_dir(name)).st_mtime)
        os.makedirs(self.paths.volume_data(name), mode=0o755, exist_ok=True)
        self.save(name, volume)
        return volume

