"""Containers and the volumes they mount: create, mount, umount, rm,
bundle, diff, and the volume commands; the per-user quota they count against."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time

from . import fsutil, lazylayer, quota
from .bundle import runtime_config
from .changelist import RUNTIME_MOUNTPOINTS, without_mountpoints
from .drivers.base import Mounted
from .errors import ContainerMounted, NameInUse, UsageError, VolumeInUse
from .layout import check_volume_name
from .mounts import MountEntry
from .records import (Container, MountSpec, Volume, check_container_name, parse_tmpfs_spec,
                      parse_volume_spec, replace)
from .storecore import StoreCore


def create(store: StoreCore, image_ref: str, name: str | None = None,
           volumes: list[str] = (), tmpfs: list[str] = (),
           size: int | None = None, inodes: int | None = None) -> Container:
    """A container of the image: its record, its driver dirs, its mounts.

    `volumes` are podman's `-v` specs: a named volume is created when
    missing, `-v /path` makes an anonymous one; a bind source must exist.
    `tmpfs` are `--tmpfs` specs.  The mounts are recorded in the container
    (`layers bundle` turns them into a runtime's mounts).

    `size`/`inodes` limit its writable layer (default: storage.conf
    `size`/`inodes`); DriverError when the driver cannot enforce them.
    QuotaExceeded when it would take its user past `user_quota` (see
    `quota.py`): the user's containers are measured first, outside the
    lock, and the check is made under it with the records of that moment.
    """
    mounts = _parse_mounts(volumes, tmpfs)
    limits = quota.container_quota(store.config, size, inodes)
    store.driver.check_quota(limits)
    uid = os.geteuid()
    written = _written(store, uid) if store.config.user_quota is not None else {}
    with store.lease() as lease:
        made: list[str] = []
        with store.lock:
            image = store.images.resolve(image_ref)
            if name is not None:
                check_container_name(name)
                other = store.containers.name_taken(name)
                if other is not None:
                    raise NameInUse(name, f"container {other.id[:12]}")
            quota.check_user_quota(_user_usage(store, uid, written), limits)
            mounts = _provide_volumes(store, mounts, made, lease)
            cid = secrets.token_hex(32)
            name = name or f"strata-{cid[:12]}"
            container = Container(id=cid, name=name, image=image.id,
                                  layers=image.layers, driver=store.driver.name,
                                  created=time.time(), incomplete=True,
                                  lease=lease.token, mounts=mounts, quota=limits,
                                  owner=uid)
            store.containers.save(cid, container)
            cdir = store.containers.container_dir(cid)
            os.mkdir(cdir, 0o700)
        try:
            store.driver.create(cdir, store.lowers_of(container))
            fsutil.sync_tree(cdir)
            with store.lock:
                container = replace(container, incomplete=False, lease=None)
                store.containers.save(cid, container)
            return container
        except BaseException:
            with store.lock:
                store.containers.remove_leftover(container)
                for vname in made:
                    v = store.volumes.get(vname)
                    if v is not None and v.anonymous:
                        store.volumes.begin_delete(v, lease.path, lease.token)
            raise


def _parse_mounts(volumes: list[str], tmpfs: list[str]) -> tuple[MountSpec, ...]:
    mounts = [parse_volume_spec(v) for v in volumes] + [parse_tmpfs_spec(t) for t in tmpfs]
    seen: set[str] = set()
    for m in mounts:
        if m.destination in seen:
            raise UsageError(f"two mounts at {m.destination}")
        seen.add(m.destination)
        if m.type == "bind" and not os.path.exists(m.source):
            raise UsageError(f"bind source {m.source} does not exist")
    return tuple(mounts)


def _provide_volumes(store: StoreCore, mounts: tuple[MountSpec, ...], made: list[str],
                     lease: fsutil.Lease) -> tuple[MountSpec, ...]:
    """Create the volumes `mounts` name that do not exist yet, and an
    anonymous one for each `-v /path` (their names go into `made`).
    Caller holds the lock."""
    out = []
    for m in mounts:
        if m.type == "volume":
            vname = m.source or secrets.token_hex(32)
            existing = store.volumes.load(vname)
            if existing is not None and existing.incomplete:
                raise NameInUse(vname, "a volume being created or removed")
            if existing is None:
                store.volumes.create(vname, (), m.source is None, lease.token)
                made.append(vname)
            m = dataclasses.replace(m, source=vname)
        out.append(m)
    return tuple(out)


def _store_owner(store: StoreCore) -> int:
    return os.stat(store.paths.root).st_uid


def _written(store: StoreCore, uid: int) -> dict[str, int]:
    """Container id → bytes written, for the containers of `uid`."""
    owner = _store_owner(store)
    return {c.id: store.writable_usage(c)[0]
            for c in store.containers.all(include_incomplete=True)
            if quota.owner_of(c, owner) == uid}


def _user_usage(store: StoreCore, uid: int, written: dict[str, int]) -> quota.UserUsage:
    """What counts against `uid`'s user_quota now (caller holds the lock;
    containers of commands that died are not counted)."""
    live = [c for c in store.containers.all(include_incomplete=True) if not store.dead(c)]
    return quota.user_usage(live, uid, _store_owner(store), store.config.user_quota,
                            written)


def user_usage(store: StoreCore, uid: int | None = None) -> quota.UserUsage:
    """The user's (default: this process's) usage against user_quota."""
    uid = os.geteuid() if uid is None else uid
    written = _written(store, uid)
    with store.lock:
        return _user_usage(store, uid, written)


def mount(store: StoreCore, ref: str) -> str:
    """Mount the container (or count one more user); its mount point.  With
    lazy layers in its stack, the store's fetcher is started first (before
    the lock: it opens the store), so that fsd can ask it for their files."""
    lazylayer.start_fetcher(store.paths, store.config.root, store.config.runroot,
                            map(store.layers.get, store.containers.resolve(ref).layers))
    with store.lock:
        c = store.containers.resolve(ref)
        store.refuse_busy(c)
        cdir = store.containers.container_dir(c.id)
        entry = store.mounts.get(c.id)
        if entry is not None:
            if store.driver.alive(cdir, Mounted(entry.mountpoint, entry.pid)):
                store.mounts.put(dataclasses.replace(entry, count=entry.count + 1))
                return entry.mountpoint
            store.driver.clean_dead(cdir, Mounted(entry.mountpoint, entry.pid))
            store.mounts.remove(c.id)
        store.driver.check_usable()
        mounted = store.driver.mount(cdir, store.lowers_of(c), c.quota)
        store.mounts.put(MountEntry(container=c.id, mountpoint=mounted.mountpoint,
                                    count=1, pid=mounted.pid, driver=store.driver.name))
        return mounted.mountpoint


def umount(store: StoreCore, ref: str, force: bool = False) -> int:
    """One user fewer (all of them with `force`); the mount count left."""
    with store.lock:
        c = store.containers.resolve(ref)
        entry = store.mounts.get(c.id)
        if entry is None:
            return 0
        if entry.count > 1 and not force:
            store.mounts.put(dataclasses.replace(entry, count=entry.count - 1))
            return entry.count - 1
        store.umount_all(c)
        return 0


def rm(store: StoreCore, ref: str, force: bool = False, volumes: bool = False) -> Container:
    """Remove a container (mounted: only with `force`); with `volumes`, also
    its anonymous volumes that no other container uses."""
    with store.lease() as lease:
        with store.lock:
            c = store.containers.resolve(ref)
            store.refuse_busy(c)
            entry = store.mounts.get(c.id)
            if entry is not None and not force:
                raise ContainerMounted(c.name, entry.count)
            store.umount_all(c)
            store.containers.begin_delete(c, lease.path, lease.token)
            if volumes:
                users = store.volume_users()
                for vname in sorted(c.volumes()):
                    v = store.volumes.get(vname)
                    if v is not None and v.anonymous and not users.get(vname):
                        store.volumes.begin_delete(v, lease.path, lease.token)
        return c


def bundle(store: StoreCore, ref: str, directory: str, args: list[str] | None = None) -> str:
    """Write an OCI runtime bundle for the container into `directory`:
    `config.json` (see `bundle.py`) whose root is the container's merged
    mount.  The container is mounted for it (one more user: `umount` it
    when the runtime is done).  Returns the config's path."""
    c = store.containers.resolve(ref)
    image = store.images.get(c.image)
    config = json.loads(image.config) if image is not None else {}
    for vname in c.volumes():
        store.volume(vname)
    mountpoint = mount(store, c.id)
    try:
        doc = runtime_config(mountpoint, config, c.mounts, store.volumes.data_dir,
                             hostname=c.name[:63], args=args)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, "config.json")
        fsutil.atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())
    except BaseException:
        umount(store, c.id)
        raise
    return path


def diff(store: StoreCore, ref: str) -> list[tuple[str, str]]:
    """A/C/D of the container against its image, but for the mountpoints
    a runtime added for its mounts (`changelist.without_mountpoints`)."""
    c = store.containers.resolve(ref)
    found = store.driver.changes(store.containers.container_dir(c.id), store.lowers_of(c))
    return without_mountpoints(found, set(RUNTIME_MOUNTPOINTS)
                               | {m.destination for m in c.mounts})


def volume_create(store: StoreCore, name: str | None = None,
                  labels: dict[str, str] | None = None) -> Volume:
    """A named volume (a random name when none is given); NameInUse when
    the name is taken."""
    if name is not None:
        check_volume_name(name)
    with store.lease() as lease, store.lock:
        name = name or secrets.token_hex(32)
        if store.volumes.load(name) is not None:
            raise NameInUse(name, "a volume")
        return store.volumes.create(name, tuple(sorted((labels or {}).items())),
                                    False, lease.token)


def volume_inspect(store: StoreCore, name: str) -> dict:
    v = store.volume(name)
    return {"type": "volume", "name": v.name, "mountpoint": store.volumes.data_dir(v.name),
            "created": v.created, "labels": dict(v.labels), "anonymous": v.anonymous,
            "containers": sorted(store.volume_users().get(v.name, []))}


def volume_rm(store: StoreCore, name: str, force: bool = False) -> list[str]:
    """Remove a volume and its data.  VolumeInUse names the containers using
    it, unless `force` removes them first (unmounting them)."""
    done = []
    with store.lease() as lease:
        with store.lock:
            v = store.volume(name)
            users = [c for c in store.containers.all(include_incomplete=True)
                     if v.name in c.volumes()]
            if users and not force:
                raise VolumeInUse(v.name, sorted(c.name for c in users))
            for c in users:
                store.refuse_busy(c)
            for c in users:
                store.umount_all(c)
                store.containers.begin_delete(c, lease.path, lease.token)
                done.append(f"removed container {c.name}")
            store.volumes.begin_delete(v, lease.path, lease.token)
            done.append(f"removed volume {v.name}")
    return done
