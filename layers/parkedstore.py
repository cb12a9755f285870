"""Parked layers: extracted and verified by a pull, not yet in the store.

A pull extracts each missing layer into its staging dir (`ingest`: blob
digest and diffID verified, content synced), then parks it (`park`) as
`registry/parked/<chainid-hex>/` with its Layer record beside it as
`<chainid-hex>.json`, by the protocol of every record store: record
written `incomplete` with the pull's lease → dir renamed into place →
record rewritten complete.  When every layer of the image is there, the
pull publishes the parked ones (`LayerStore.publish` renames the dir into
`layers/`, then `forget` drops the parked record) and records the image, in
one hold of the store lock.

So an interrupted pull (an error, ^C, kill -9) leaves no layer and no image
visible: what it had finished stays parked, outside every other record, for
the next pull of an image that has these layers; an incomplete parked record
whose lease is dead is removed by the store's repair.  A parked layer is
used only when its record is complete, parses and names the same ChainID,
diffID and parent the image asks for; anything else there is removed.
Parked layers older than `MAX_AGE` are removed by the next pull (`expire`).

Unlike the other record stores, parking runs on a pull's transfer threads
without the store lock: a writer holds the layer's extraction lock
(`StorePaths.layer_extract_lock`) instead, and readers and `expire` leave
alone an incomplete record whose lease is alive.
"""

from __future__ import annotations

import os
import time

from . import fsutil
from .digest import Digest
from .errors import CorruptRecord, LayersError
from .layout import StorePaths
from .records import Layer, replace
from .recordstore import RecordStore

MAX_AGE = 7 * 86400
GRACE = 3600                 # a dir alone for longer than a park or publish takes


class ParkedStore(RecordStore[Layer]):
    kind = Layer

    def __init__(self, paths: StorePaths):
        super().__init__(paths.parked)
        self.paths = paths

    def content_dir(self, layer_id: Digest) -> str:
        return os.path.join(self.dir, layer_id.hex)

    def park(self, layer: Layer, staged: str, lease: str) -> None:
        """Move the extracted, synced `staged` dir aside as `layer`."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.drop(layer.id)
        self.save(layer.id.hex, replace(layer, incomplete=True, lease=lease))
        os.rename(staged, self.content_dir(layer.id))
        fsutil.fsync_dir(self.dir)
        self.save(layer.id.hex, replace(layer, incomplete=False, lease=None))

    def find(self, layer_id: Digest, diff_id: Digest, parent: Digest | None) -> Layer | None:
        """The parked layer when it is the one wanted, else None (and a parked
        one that is not what its name says, or whose pull died while parking
        it, is removed)."""
        try:
            layer = self.load(layer_id.hex)
            if layer is None:
                return None
        except (CorruptRecord, LayersError):
            layer = None
        if layer is not None and layer.incomplete and self._in_flight(layer):
            return None           # being parked by another pull
        if layer is None or layer.incomplete or layer.id != layer_id or not os.path.isdir(
                os.path.join(self.content_dir(layer_id), "diff")):
            self.drop(layer_id)
            return None
        if layer.diff_id != diff_id or layer.parent != parent:
            return None           # a ChainID collision cannot happen; keep it anyway
        return layer

    def drop(self, layer_id: Digest) -> None:
        """Remove the parked layer, content first (a record without its dir is
        never used)."""
        fsutil.remove_tree(self.content_dir(layer_id))
        self.delete(layer_id.hex)

    def forget(self, layer_id: Digest) -> None:
        """After the content was published: the record goes."""
        self.delete(layer_id.hex)

    def remove_leftover(self, layer: Layer) -> None:
        """Undo a park interrupted with its pull (the store's repair)."""
        self.drop(layer.id)

    def _in_flight(self, layer: Layer) -> bool:
        return fsutil.lease_alive(self.paths.staging, layer.lease)

    def expire(self, max_age: float = MAX_AGE, now: float | None = None) -> list[str]:
        """Remove parked layers older than `max_age`, parks whose pull died,
        and records or dirs left alone by a crash in the middle of `drop` or
        `publish`; what went."""
        now = time.time() if now is None else now
        done = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return done
        for name in names:
            base = name[:-5] if name.endswith(".json") else name
            try:
                layer_id = Digest(base)
            except LayersError:
                if fsutil.is_tmp_name(name) and _age(os.path.join(self.dir, name), now) > GRACE:
                    fsutil.remove_file(os.path.join(self.dir, name))
                continue
            record = self._path(layer_id.hex)
            content = self.content_dir(layer_id)
            record_age, content_age = _age(record, now), _age(content, now)
            if record_age is None and content_age is None:
                continue                   # both went with an earlier name of the pair
            if record_age is not None and not self._expired(layer_id, record_age, max_age,
                                                            content_age is not None):
                continue
            if record_age is None and content_age <= GRACE:
                continue
            self.drop(layer_id)
            done.append(f"removed parked layer {layer_id.short}")
        return done

    def _expired(self, layer_id: Digest, record_age: float, max_age: float,
                 has_content: bool) -> bool:
        """A record goes when its park died, when it is complete but its dir
        is gone, or when it is older than `max_age`."""
        try:
            layer = self.load(layer_id.hex)
        except (CorruptRecord, LayersError):
            return True
        if layer is None:
            return False                   # went meanwhile
        if layer.incomplete:
            return not self._in_flight(layer)
        return not has_content or record_age > max_age


def _age(path: str, now: float) -> float | None:
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return None
