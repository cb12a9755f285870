"""The mount registry: which containers are mounted, where, how many times,
served by which daemon.  One JSON file in the store's runtime dir.

The runtime dir is on tmpfs (`/run`, `$XDG_RUNTIME_DIR`): after a reboot the
registry is gone together with the mounts it described.  Writes happen under
the store lock; a stale entry (daemon dead, mount gone) is `storecore`'s to
clean, with the driver's help.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from . import fsutil
from .digest import check_id
from .errors import CorruptRecord


@dataclass(frozen=True)
class MountEntry:
    container: str
    mountpoint: str
    count: int
    pid: int | None
    driver: str


class MountRegistry:
    def __init__(self, path: str):
        self.path = path

    def load(self) -> dict[str, MountEntry]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            return {check_id(cid): MountEntry(**entry) for cid, entry in doc.items()}
        except Exception as e:  # any defect of a file we own → one error
            raise CorruptRecord(self.path, f"bad mount registry ({e})") from None

    def save(self, entries: dict[str, MountEntry]) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        doc = {cid: asdict(e) for cid, e in sorted(entries.items())}
        fsutil.atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)

    def get(self, container_id: str) -> MountEntry | None:
        return self.load().get(container_id)

    def put(self, entry: MountEntry) -> None:
        entries = self.load()
        entries[entry.container] = entry
        self.save(entries)

    def remove(self, container_id: str) -> None:
        entries = self.load()
        if entries.pop(container_id, None) is not None:
            self.save(entries)
