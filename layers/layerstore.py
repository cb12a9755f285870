"""Layer records and their content dirs, named by ChainID.

Knows nothing of images or containers (`storecore` decides which layers
may go).

Publishing a layer extracted in staging (`publish`), under the store lock:
record written `incomplete` with the lease → staging dir renamed to
`layers/<hex>/` → record rewritten complete.  Removing (`begin_delete`):
record marked `incomplete` → content renamed into the caller's staging dir
(removed later, outside the lock) → record deleted.  A crash at any step
leaves an incomplete record whose lease is dead: `remove_leftover` finishes
the job.
"""

from __future__ import annotations

import os

from . import fsutil
from .digest import Digest
from .layout import StorePaths
from .records import Layer, replace
from .recordstore import RecordStore


class LayerStore(RecordStore[Layer]):
    kind = Layer

    def __init__(self, paths: StorePaths):
        super().__init__(paths.layers)
        self.paths = paths

    def get(self, layer_id: Digest) -> Layer | None:
        """The complete layer, or None."""
        layer = self.load(layer_id.hex)
        return layer if layer is not None and not layer.incomplete else None

    def diff_dir(self, layer_id: Digest) -> str:
        return self.paths.layer_diff(layer_id)

    def split_file(self, layer_id: Digest) -> str | None:
        """The layer's tar-split, None when it has none."""
        path = self.paths.layer_split(layer_id)
        return path if os.path.exists(path) else None

    def publish(self, layer: Layer, staged_dir: str, lease: str) -> None:
        """Move `staged_dir` (holding `diff/`, synced) into place as `layer`."""
        self.save(layer.id.hex, replace(layer, incomplete=True, lease=lease))
        fsutil.crash_point("layer-recorded")
        os.rename(staged_dir, self.paths.layer_dir(layer.id))
        fsutil.fsync_dir(self.paths.layers)
        fsutil.crash_point("layer-moved")
        self.save(layer.id.hex, replace(layer, incomplete=False, lease=None))

    def begin_delete(self, layer_id: Digest, trash_dir: str, lease: str) -> None:
        """Take the layer out of the store; its content lands in `trash_dir`."""
        layer = self.load(layer_id.hex)
        if layer is None:
            return
        self.save(layer_id.hex, replace(layer, incomplete=True, lease=lease))
        fsutil.crash_point("layer-delete-marked")
        self._move_content(layer_id, trash_dir)
        self.delete(layer_id.hex)

    def remove_leftover(self, layer: Layer) -> None:
        """Undo an interrupted publish or finish an interrupted delete."""
        fsutil.remove_tree(self.paths.layer_dir(layer.id))
        self.delete(layer.id.hex)

    def _move_content(self, layer_id: Digest, trash_dir: str) -> None:
        try:
            os.rename(self.paths.layer_dir(layer_id),
                      os.path.join(trash_dir, layer_id.hex))
        except FileNotFoundError:
            pass

    def orphan_dirs(self) -> list[str]:
        """Content dirs without a record (a crash between rename and record)."""
        out = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if os.path.isdir(path) and not os.path.exists(path + ".json"):
                out.append(path)
        return out
