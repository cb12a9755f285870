"""`layers commit`: a container's changes as a new layer on its image."""

from __future__ import annotations

import contextlib
import os
import time

from . import fsutil, layout
from .archive import build_layer
from .digest import Digest, chain_ids
from .drivers.base import Mounted
from .errors import ContainerMounted, ContainerUnknown, DriverError, ImageUnknown
from .imagestore import committed_config
from .progress import Progress, counted_entries
from .records import Container, Image, Layer, parse_image_name, replace
from .storecore import StoreCore
from .tarentries import UpperNeedsLower


def commit(store: StoreCore, ref: str, name: str | None = None,
           epoch: int | None = None, progress: Progress | None = None) -> Image:
    """A new image: the container's image plus one layer of its changes.

    A mounted container is committed as it was at one instant: the
    driver holds its upper still while it is read (`Driver.frozen`: fsd
    lets the changes in flight end and makes new ones wait, so the layer
    holds every write that had returned then and none that had not; the
    processes in the container only wait).  A driver that cannot do that
    refuses (ContainerMounted).  The container is marked busy (its record
    carries this command's lease) so that nothing mounts or removes it
    while its changes are read, outside the store lock.  The
    layer is built from the upper in one pass (`archive.build_layer`):
    its diffID is the hash of the changeset tar, its content cloned from
    the upper.  `epoch` (SOURCE_DATE_EPOCH) clamps timestamps and sets the
    image's creation time, so that the same changes give the same image.
    """
    names = [parse_image_name(name)] if name else []
    with store.lease() as lease:
        with store.lock:
            c = store.containers.resolve(ref)
            store.refuse_busy(c)
            entry = store.mounts.get(c.id)
            if entry is not None and not store.driver.can_freeze:
                raise ContainerMounted(c.name, entry.count,
                                       f"umount it before commit (the {store.driver.name} "
                                       "driver cannot hold a mounted container still)")
            image = store.images.get(c.image)
            if image is None:
                raise ImageUnknown(c.image)
            store.containers.save(c.id, replace(c, lease=lease.token))
        try:
            mounted = Mounted(entry.mountpoint, entry.pid) if entry else None
            return _commit(store, c, mounted, image, names, epoch, lease, progress)
        finally:
            with store.lock:
                now = store.containers.load(c.id)
                if now is not None and now.lease == lease.token:
                    store.containers.save(c.id, replace(now, lease=None))


def _commit(store: StoreCore, c: Container, mounted: Mounted | None, image: Image,
            names: list[str], epoch: int | None, lease: fsutil.Lease,
            progress: Progress | None) -> Image:
    staged = os.path.join(lease.path, "commit")
    diff = os.path.join(staged, "diff")
    os.makedirs(diff, mode=0o755)
    cdir = store.containers.container_dir(c.id)
    if progress:
        progress.layer_start(0, 1, c.name, None)
    held = store.driver.frozen(cdir, mounted) if mounted else contextlib.nullcontext()
    try:
        with held:
            fsutil.crash_point("commit-reading")
            entries = store.driver.changeset(cdir, store.lowers_of(c), epoch)
            result = build_layer(counted_entries(entries, progress), diff,
                                 store.extract_options(),
                                 os.path.join(staged, layout.SPLIT))
    except UpperNeedsLower as e:
        raise DriverError(store.driver.name, f"{e.path} {e.what}: its content is in a "
                          "lower layer; mount without that option to commit") from None
    if progress:
        progress.layer_done(c)
    fsutil.crash_point("commit-built")
    parent = image.top_layer
    layer_id = chain_ids([result.diff_id] if parent is None
                         else [parent, result.diff_id])[-1]
    created = time.time() if epoch is None else float(epoch)
    layer = Layer(id=layer_id, diff_id=result.diff_id, parent=parent,
                  compressed_digest=None, created=created,
                  tar_size=result.tar_size, size=fsutil.allocated_size(staged))
    config = committed_config(image.config, result.diff_id, created)
    image_id = Digest.of_bytes(config).hex
    with store.lock:
        if store.containers.get_complete(c.id) is None:
            raise ContainerUnknown(c.name)
        if store.layers.get(layer_id) is None:
            store.layers.publish(layer, staged, lease.token)
        fsutil.crash_point("commit-layer-published")
        new = store.images.get(image_id)
        if new is None:
            new = Image(id=image_id, names=(), layers=image.layers + (layer_id,),
                        config=config.decode(), manifest_digest=None, created=created)
            store.images.save(image_id, new)
        return store.images.claim_names(new, names)
