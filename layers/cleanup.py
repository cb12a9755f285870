"""Disk usage and cleanup: `layers df`, `prune`, removing stale lock
files, `reset` (the whole store)."""

from __future__ import annotations

import os
import secrets

from . import als, fsutil, gc, lazylayer
from .digest import Digest
from .storecore import StoreCore


def _snapshot(store: StoreCore) -> gc.Snapshot:
    """The records as gc sees them; caller holds the lock."""
    containers = list(store.containers.all(include_incomplete=True))
    images = list(store.images.all(include_incomplete=True))
    return gc.Snapshot(
        layers={layer.id: layer for layer in store.layers.all()},
        images=[i for i in images if not i.incomplete],
        containers=[c for c in containers if not c.incomplete],
        volumes=list(store.volumes.all()),
        in_flight=[r for r in containers + images if r.incomplete],
        mounted=set(store.mounts.load()),
        busy={c.id for c in containers if not c.incomplete
              and fsutil.lease_alive(store.paths.staging, c.lease)},
        container_dir=store.containers.container_dir,
        volume_dir=store.paths.volume_dir,
        served=als.served_ids(store))


def df(store: StoreCore) -> list[gc.Usage]:
    """Images, containers, volumes: total, active, size, reclaimable (bytes
    allocated on disk); the records are read under the lock, containers
    and volumes measured outside it."""
    with store.lock:
        snap = _snapshot(store)
    return gc.disk_usage(snap, _measure, store.writable_usage)


def prune(store: StoreCore, kinds: tuple[str, ...] = gc.KINDS, all: bool = False,
          dry_run: bool = False) -> list[tuple[str, int | None]]:
    """Remove what `gc.plan_prune` plans, in one hold of the lock (records
    taken out, content moved into this command's staging dir), then measure
    and delete the content outside the lock.  (label, bytes freed) per
    item; with `dry_run`, what would be removed and the bytes it holds now."""
    with store.lease() as lease:
        done: list[tuple[gc.Removal, str | None]] = []
        with store.lock:
            plan = gc.plan_prune(_snapshot(store), kinds, all,
                                 all_volumes=all and kinds == ("volumes",))
            for r in plan:
                if dry_run:
                    done.append((r, _content_path(store, r)))
                else:
                    done.append((r, _take_out(store, r, lease)))
                    fsutil.crash_point("pruning")
        return [(r.label, r.size if r.size is not None
                 else (_measure(path) if path else None)) for r, path in done]


def remove_stale_locks(store: StoreCore) -> list[str]:
    """Remove the per-image and per-layer lock files in staging that no
    command holds (imports leave one per image and layer); their names."""
    removed = []
    with store.lock:
        for name in sorted(os.listdir(store.paths.staging)):
            path = os.path.join(store.paths.staging, name)
            if name.endswith(".lock") and not fsutil.flock_held(path):
                fsutil.remove_file(path)
                removed.append(name)
    return removed


def _content_path(store: StoreCore, r: gc.Removal) -> str | None:
    if r.kind == "container":
        return store.containers.container_dir(r.key)
    if r.kind == "volume":
        return store.paths.volume_dir(r.key)
    return None


def _take_out(store: StoreCore, r: gc.Removal, lease: fsutil.Lease) -> str | None:
    """Remove one planned item's record; its content lands in the lease's
    dir (its path returned, to measure before the lease removes it)."""
    if r.kind == "container":
        store.containers.begin_delete(store.containers.load(r.key), lease.path,
                                      lease.token)
        return os.path.join(lease.path, r.key)
    if r.kind == "image":
        store.images.delete(r.key)
        return None
    if r.kind == "volume":
        store.volumes.begin_delete(store.volumes.load(r.key), lease.path, lease.token)
        return os.path.join(lease.path, "volume-" + r.key)
    store.layers.begin_delete(Digest(r.key), lease.path, lease.token)
    return None


def reset(store: StoreCore) -> list[str]:
    """Unmount every container and stop the fetcher, then remove the whole
    store.

    The root is first renamed aside in one step, so an interrupted reset
    leaves either the old store or none (and a `.strata-removing-*` dir
    beside it that a later reset removes)."""
    done = []
    root = store.paths.root
    parent, base = os.path.split(root)
    with store.lock:
        for c in store.containers.all(include_incomplete=True):
            if store.mounts.get(c.id) is not None:
                store.umount_all(c)
                done.append(f"unmounted {c.name}")
        als.unmount_all(store)
        lazylayer.stop_fetcher(store.paths, root)
        fsutil.remove_tree(store.paths.runroot)
        trash = os.path.join(parent, f".{base}.strata-removing-{secrets.token_hex(4)}")
        os.rename(root, trash)
        fsutil.fsync_dir(parent)
    for name in os.listdir(parent):
        if name.startswith(f".{base}.strata-removing-"):
            fsutil.remove_tree(os.path.join(parent, name))
    done.append(f"removed store {root}")
    return done


def _measure(path: str) -> int:
    try:
        return fsutil.allocated_size(path)
    except FileNotFoundError:      # removed meanwhile
        return 0
