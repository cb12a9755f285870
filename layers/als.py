"""Images of the store served to podman as an additional layer store (ALS),
so that `podman pull`/`run` takes their layers from here instead of pulling
the blobs: a lazy layer (`pull --lazy`) then reaches podman still lazy, and
its files are fetched when fsd, podman's mount program, opens them.

What podman 4.3 reads (containers/storage 1.43 `drivers/overlay/overlay.go`,
containers/image 5.23 `storage/storage_dest.go`):
- storage.conf `[storage.options] additionallayerstores = ["DIR"]` (the
  overlay driver only).  Before copying a layer, podman stats
  `DIR/<blob digest>/diff`, `info` and `blob` (with `DIR:ref`,
  `DIR/<base64 of the image reference>/<blob digest>/`: not used here, since
  the store knows each layer by its blob digest whatever name podman pulls it
  by).  All three there: the blob is not pulled; podman records a layer
  whose `diff` is a symlink to `DIR/<digest>/diff` and mounts that as a
  lowerdir.  A plain directory does: nothing has to answer lookups.
- `info`: JSON of containers/storage's layer record; podman takes
  `diff-digest` (the diffID: the layer's id is computed from it),
  `diff-size`, `compressed-diff-digest`, `compressed-size`, `compression`.
- `blob`: read only when podman reads the layer back out (`push`, `save`)
  as the layer's blob in the `compression` `info` names.  The store keeps
  no blob, so `blob` is an empty directory: such a `push` or `save` fails
  reading it ("is a directory") instead of sending wrong bytes.
- On each use podman creates and removes `DIR/<digest>/use`, and when done
  with a handle rmdirs `DIR/<digest>` (ENOTEMPTY here, which it logs as a
  warning); these are GC hints for an ALS that counts users, which this one
  does not: an image stays served until `layers als rm`.

A layer's diff dir is read as it is by whoever mounts it, so what may be
served depends on podman's driver; there is one `DIR` per kind of reader,
under `<graphroot>/als/` (`layout.StorePaths.als`):
- `fsd/`, for a podman whose mount_program is fsd: every layer.  fsd reads
  both marker forms and fetches a lazy layer's files when they are opened.
- `kernel/`, for the kernel overlay (or another mount program): only
  complete layers the kernel reads as the layer, i.e. of a store keeping the
  overlay form, or holding no `.wh.` marker.  The kernel would read a lazy
  file as zeros and a `.wh.` file as a file; podman pulls those layers
  itself.
Each holds one entry per blob digest, `diff` a symlink to the layer's diff
dir.  Which images are served is the record `als.json` (image ids); the
entries are made to match it under the store lock (`_sync`), each built
under a temporary name and renamed into place.  `rmi` refuses a served image
and `prune` keeps it (podman's layers point into it).  A lazy layer completed later reaches
`kernel/` at the next `als` command.
"""

from __future__ import annotations

import errno
import json
import os
import secrets

from . import fsutil, layout
from .digest import Digest
from .errors import CorruptRecord, ImageServed, LayersError
from .records import Image, Layer
from .storecore import StoreCore

# containers/storage's archive.Compression: the `info` field `compression`.
UNCOMPRESSED = 0
# The readers, each with its dir under als/: see above.
FSD, KERNEL = "fsd", "kernel"
READERS = (FSD, KERNEL)


class NotServable(LayersError):
    def __init__(self, image: str, reason: str):
        self.image, self.reason = image, reason
        super().__init__(f"image {image} cannot be served to podman: {reason}")


def reader_dir(store: StoreCore, reader: str) -> str:
    return os.path.join(store.paths.als, reader)


def storage_conf_line(store: StoreCore, reader: str) -> str:
    """What podman's storage.conf needs, under `[storage.options]`."""
    return f'additionallayerstores = ["{reader_dir(store, reader)}"]'


def add(store: StoreCore, ref: str) -> list[str]:
    """Serve the image `ref`: an entry for each of its layers.  NotServable
    when a layer has no blob digest (imported from a plain tar): podman asks
    for a layer by the digest of its blob."""
    with store.lock:
        image = store.images.resolve(ref)
        layers = _layers_of(store, image)
        missing = [str(layer.id) for layer in layers if layer.compressed_digest is None]
        if missing:
            raise NotServable(ref, f"layer {missing[0]} has no blob digest, which is "
                                   "what podman asks for")
        served = _load(store)
        if image.id not in served:
            _save(store, sorted(served | {image.id}))
        _sync(store)
        kernel = sum(1 for layer in layers if _kernel_reads(store, layer))
    return [f"serving {ref}: {len(layers)} layers to podman with fsd as mount_program: "
            f"{storage_conf_line(store, FSD)}",
            f"{kernel} of them to the kernel overlay or another mount program: "
            f"{storage_conf_line(store, KERNEL)}"]


def remove(store: StoreCore, ref: str) -> list[str]:
    """Serve the image `ref` no more: the entries of its layers that no other
    served image has go (podman's layers made from them break)."""
    with store.lock:
        image = store.images.resolve(ref)
        served = _load(store)
        if image.id not in served:
            return [f"{ref} was not served"]
        _save(store, sorted(served - {image.id}))
        _sync(store)
    return [f"no longer serving {ref}"]


def served(store: StoreCore) -> list[tuple[Image, list[Layer]]]:
    """The served images and their layers, bottom first."""
    with store.lock:
        out = []
        for image_id in sorted(_load(store)):
            image = store.images.get(image_id)
            if image is not None:
                out.append((image, _layers_of(store, image)))
        return out


def served_ids(store: StoreCore) -> set[str]:
    """Ids of the served images (the caller holds the lock): `prune` keeps them."""
    return _load(store)


def refuse_served(store: StoreCore, image: Image, ref: str) -> None:
    """ImageServed when `image` is served (the caller holds the lock)."""
    if image.id in _load(store):
        raise ImageServed(ref)


def entry_dir(store: StoreCore, reader: str, blob: Digest) -> str:
    return os.path.join(reader_dir(store, reader), str(blob))


def info_json(layer: Layer) -> bytes:
    """The `info` file: containers/storage's layer record, as much of it as
    podman takes from an ALS (`blob` holds nothing to decompress)."""
    doc = {"compressed-diff-digest": str(layer.compressed_digest),
           "diff-digest": str(layer.diff_id), "diff-size": layer.tar_size,
           "compression": UNCOMPRESSED}
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


# -- under the lock ---------------------------------------------------------------

def _layers_of(store: StoreCore, image: Image) -> list[Layer]:
    out = []
    for lid in image.layers:
        layer = store.layers.get(lid)
        if layer is None:
            raise CorruptRecord(store.paths.als_record, f"image {image.id}: layer {lid} is missing")
        out.append(layer)
    return out


def _load(store: StoreCore) -> set[str]:
    try:
        with open(store.paths.als_record, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return set()
    except ValueError as e:
        raise CorruptRecord(store.paths.als_record, str(e)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not all(isinstance(i, str) for i in doc["images"]):
        raise CorruptRecord(store.paths.als_record, "expected {\"images\": [ids]}")
    return set(doc["images"])


def _save(store: StoreCore, image_ids: list[str]) -> None:
    fsutil.atomic_write(store.paths.als_record,
                        json.dumps({"images": image_ids}).encode() + b"\n", mode=0o600)


def _sync(store: StoreCore) -> None:
    """Make the entries under `als/` those of the served images' layers, for
    each reader those it reads right: missing ones built aside and renamed
    in, others (and leftovers of an interrupted build) removed.  A served
    image removed behind our back is dropped."""
    served = _load(store)
    present = {i for i in served if store.images.get(i) is not None}
    if present != served:
        _save(store, sorted(present))
    layers: dict[str, Layer] = {}
    for image_id in present:
        for layer in _layers_of(store, store.images.get(image_id)):
            if layer.compressed_digest is not None:
                layers[str(layer.compressed_digest)] = layer
    os.makedirs(store.paths.als, mode=0o755, exist_ok=True)
    for reader in READERS:
        directory = reader_dir(store, reader)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        wanted = {name: layer for name, layer in layers.items()
                  if reader == FSD or _kernel_reads(store, layer)}
        for name in os.listdir(directory):
            if name not in wanted:
                fsutil.remove_tree(os.path.join(directory, name))
        for name, layer in sorted(wanted.items()):
            if not os.path.lexists(os.path.join(directory, name)):
                _build_entry(store, directory, layer)
        fsutil.fsync_dir(directory)


def _kernel_reads(store: StoreCore, layer: Layer) -> bool:
    """Whether the kernel overlay reads the layer's diff dir as the layer:
    complete (its root without the lazy mark), and in the overlay form or
    holding no `.wh.` marker (what fsd and the store's other drivers read)."""
    diff = store.layers.diff_dir(layer.id)
    try:
        os.getxattr(diff, layout.LAZY_XATTR)
        return False
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    if store.driver.form == layout.FORM_OVERLAY:
        return True
    for _, dirs, files in os.walk(diff):
        if any(n.startswith(layout.WHITEOUT_PREFIX) for n in dirs + files):
            return False
    return True


def _build_entry(store: StoreCore, directory: str, layer: Layer) -> None:
    final = os.path.join(directory, str(layer.compressed_digest))
    tmp = os.path.join(directory, f".{layer.compressed_digest.hex}.tmp-"
                                  f"{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp, 0o755)
    try:
        os.symlink(store.layers.diff_dir(layer.id), os.path.join(tmp, "diff"))
        fsutil.atomic_write(os.path.join(tmp, "info"), info_json(layer))
        os.mkdir(os.path.join(tmp, "blob"), 0o755)
        os.rename(tmp, final)
    except BaseException:
        fsutil.remove_tree(tmp)
        raise
