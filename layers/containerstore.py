"""Container records: an image's layers plus a writable layer, a name.

The container's own dirs live in `containers/<id>/`; the driver decides what
goes in there.  Removal mirrors layers: mark incomplete, move the dir into
the caller's staging, delete the record.
"""

from __future__ import annotations

import os

from . import fsutil
from .errors import AmbiguousReference, ContainerUnknown
from .layout import StorePaths
from .records import Container, replace
from .recordstore import RecordStore


class ContainerStore(RecordStore[Container]):
    kind = Container

    def __init__(self, paths: StorePaths):
        super().__init__(paths.containers)
        self.paths = paths

    def container_dir(self, container_id: str) -> str:
        return self.paths.container_dir(container_id)

    def resolve(self, ref: str) -> Container:
        """By name, full id or unambiguous id prefix (≥ 4 hex digits)."""
        containers = list(self.all())
        for c in containers:
            if c.name == ref or c.id == ref:
                return c
        if len(ref) >= 4 and all(ch in "0123456789abcdef" for ch in ref):
            matches = [c for c in containers if c.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousReference(ref, [m.id[:12] for m in matches])
        raise ContainerUnknown(ref)

    def get_complete(self, container_id: str) -> Container | None:
        c = self.load(container_id)
        return c if c is not None and not c.incomplete else None

    def name_taken(self, name: str) -> Container | None:
        for c in self.all(include_incomplete=True):
            if c.name == name:
                return c
        return None

    def begin_delete(self, container: Container, trash_dir: str, lease: str) -> None:
        self.save(container.id, replace(container, incomplete=True, lease=lease))
        fsutil.crash_point("container-delete-marked")
        try:
            os.rename(self.container_dir(container.id), os.path.join(trash_dir, container.id))
        except FileNotFoundError:
            pass
        self.delete(container.id)

    def remove_leftover(self, container: Container) -> None:
        fsutil.remove_tree(self.container_dir(container.id))
        self.delete(container.id)
