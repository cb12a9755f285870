"""Parked layers: extracted and verified by a pull, not yet in the store.

Level 1 of the registry package: imports `layers.digest`, `layers.fsutil`,
`layers.records`, `layers.errors`.

A pull extracts each missing layer into its staging dir (the store's
`_extract`: blob digest and diffID verified, content synced), then parks
it: the dir is renamed to `registry/parked/<chainid-hex>/` and its Layer
record written beside it as `<chainid-hex>.json`.  When every layer of the
image is there, the facade publishes the parked ones (`LayerStore.publish`
renames the dir into `layers/`) and records the image, in one hold of the
store lock; then the parked record is dropped.

So an interrupted pull (an error, ^C, kill -9) leaves no layer and no image
visible: the store's repair removes its staging dir and its incomplete image
record, and what it had finished stays parked, outside every record, for the
next pull of an image that has these layers.  A parked layer is used only
when its record parses and names the same ChainID, diffID and parent the
image asks for; anything else there is removed.  Parked layers older than
`MAX_AGE` are removed by the next pull (`expire`).

Writers hold the layer's extraction lock (`StorePaths.layer_extract_lock`).
"""

from __future__ import annotations

import os
import time

from .. import fsutil
from ..digest import Digest
from ..errors import CorruptRecord, LayersError
from ..records import Layer, decode, encode

MAX_AGE = 7 * 86400
GRACE = 3600                 # a park or publish in flight takes less


def _record(parked: str, layer_id: Digest) -> str:
    return os.path.join(parked, layer_id.hex + ".json")


def content_dir(parked: str, layer_id: Digest) -> str:
    return os.path.join(parked, layer_id.hex)


def park(parked: str, layer: Layer, staged: str) -> None:
    """Move the extracted, synced `staged` dir aside as `layer` (dir first,
    then its record: a dir without a record is never used)."""
    os.makedirs(parked, mode=0o700, exist_ok=True)
    dest = content_dir(parked, layer.id)
    fsutil.remove_tree(dest)
    fsutil.remove_file(_record(parked, layer.id))
    os.rename(staged, dest)
    fsutil.fsync_dir(parked)
    fsutil.atomic_write(_record(parked, layer.id), encode(layer))


def find(parked: str, layer_id: Digest, diff_id: Digest,
         parent: Digest | None) -> Layer | None:
    """The parked layer when it is the one wanted, else None (and a parked
    one that is not what its name says is removed)."""
    path = _record(parked, layer_id)
    try:
        with open(path, "rb") as f:
            layer = decode(Layer, f.read(), path)
    except FileNotFoundError:
        return None
    except (OSError, CorruptRecord, LayersError):
        layer = None
    if layer is None or layer.id != layer_id or not os.path.isdir(
            os.path.join(content_dir(parked, layer_id), "diff")):
        drop(parked, layer_id)
        return None
    if layer.diff_id != diff_id or layer.parent != parent:
        return None           # a ChainID collision cannot happen; keep it anyway
    return layer


def drop(parked: str, layer_id: Digest) -> None:
    fsutil.remove_file(_record(parked, layer_id))
    fsutil.remove_tree(content_dir(parked, layer_id))


def forget(parked: str, layer_id: Digest) -> None:
    """After the content was published: the record goes."""
    fsutil.remove_file(_record(parked, layer_id))


def expire(parked: str, max_age: float = MAX_AGE, now: float | None = None) -> list[str]:
    """Remove parked layers older than `max_age` and records or dirs left
    alone by a crash in the middle of `park` or `publish`; what went."""
    now = time.time() if now is None else now
    done = []
    try:
        names = os.listdir(parked)
    except FileNotFoundError:
        return done
    for name in names:
        base = name[:-5] if name.endswith(".json") else name
        try:
            layer_id = Digest(base)
        except LayersError:
            if fsutil.is_tmp_name(name) and _age(os.path.join(parked, name), now) > GRACE:
                fsutil.remove_file(os.path.join(parked, name))
            continue
        record, content = _record(parked, layer_id), content_dir(parked, layer_id)
        record_age, content_age = _age(record, now), _age(content, now)
        if record_age is None and content_age is None:
            continue                   # both went with an earlier name of the pair
        if record_age is not None and record_age <= max_age and content_age is not None:
            continue
        # A record without its dir, or a dir without its record for longer
        # than a `park` takes, or too old.
        if record_age is None and content_age <= GRACE:
            continue
        drop(parked, layer_id)
        done.append(f"removed parked layer {layer_id.short}")
    return done


def _age(path: str, now: float) -> float | None:
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return None
