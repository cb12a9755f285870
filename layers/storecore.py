"""What every workflow of the store stands on: the lock, the records, the
mount table, the driver, and the rules across records.

The workflows (`ingest`, `containers`, `commit`, `export`, `push`,
`cleanup`, `check`) take a StoreCore; `store.Store`, the facade, is one.

Rules kept here and nowhere else:
- every write of a record happens under the store lock; slow work
  (extraction, hashing, copying, removing trees) happens outside it, in the
  command's staging dir (`lease`, an `fsutil.Lease`);
- a layer is deleted only when no image and no container refers to it
  (`collect_layers`); layers read outside the lock are pinned (`pinned`);
  a container being committed is busy (`refuse_busy`);
- opening the store repairs what interrupted commands left (`repair`):
  staging dirs of dead commands, temp files, incomplete records whose lease is
  dead, unreferenced layers, stale mounts.
"""

from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from typing import Iterator

from . import fsutil, layout
from .archive import ExtractOptions
from .config import Config
from .containerstore import ContainerStore
from .digest import Digest
from .drivers.base import Driver, Mounted
from .drivers.btrfs import BtrfsDriver
from .drivers.fuse import FuseDriver
from .drivers.overlay import OverlayDriver
from .drivers.vfs import VfsDriver
from .errors import ContainerBusy, LayersError, LayerUnknown, StoreMismatch, VolumeUnknown
from .imagestore import ImageStore
from .layerstore import LayerStore
from .layout import check_volume_name
from .mounts import MountRegistry
from .parkedstore import ParkedStore
from .records import Container, Image, Layer, Volume
from .volumestore import VolumeStore


class StoreCore:
    """An open store's records and the rules across them.  Holds no
    resources between calls."""

    def __init__(self, config: Config, driver_name: str, lock_timeout: float):
        self.config = config
        self.paths = layout.StorePaths(config.root, config.runroot)
        self.lock = fsutil.StoreLock(self.paths.lock, lock_timeout)
        self.layers = LayerStore(self.paths)
        self.images = ImageStore(self.paths)
        self.containers = ContainerStore(self.paths)
        self.volumes = VolumeStore(self.paths)
        self.parked = ParkedStore(self.paths)
        self.mounts = MountRegistry(self.paths.mounts)
        self.privileged = os.geteuid() == 0
        self.driver = self._make_driver(driver_name)
        self.repaired: list[str] = []
        self.warnings: list[str] = []     # for the user, from opening (a new vfs store)
        self.notes: list[str] = []        # for the user, from the last command
        self.device_files = 0             # device nodes extracted as files (rootless)

    def _make_driver(self, name: str) -> Driver:
        if name == "fuse":
            return FuseDriver(self.config.mount_program, self.config.mountopt,
                              override_stat=self.override_stat)
        if name == "overlay":
            return OverlayDriver(self.paths.root, self.config.mountopt)
        if name == "vfs":
            return VfsDriver(self.privileged)
        if name == "btrfs":
            return BtrfsDriver(self.paths.root, self.privileged)
        raise StoreMismatch(self.paths.root, f"unknown driver {name!r}")

    @property
    def override_stat(self) -> bool:
        return not self.privileged or self.config.force_mask is not None

    @contextmanager
    def lease(self) -> Iterator[fsutil.Lease]:
        lease = fsutil.Lease(self.paths.staging)
        try:
            yield lease
        finally:
            lease.close()

    def repair(self) -> list[str]:
        """Remove leftovers of interrupted commands; returns what was done."""
        done: list[str] = []
        with self.lease() as lease:
            with self.lock:
                done += self._repair_staging(lease.token)
                for rs in (self.layers, self.images, self.containers, self.volumes):
                    for tmp in rs.leftover_tmp_files():
                        os.unlink(tmp)
                        done.append(f"removed temp file {tmp}")
                done += self._repair_records()
                done += self.collect_layers(lease)
                done += self._repair_mounts()
        self.repaired = done
        return done

    def _repair_staging(self, own: str) -> list[str]:
        done = []
        for name in sorted(os.listdir(self.paths.staging)):
            path = os.path.join(self.paths.staging, name)
            if name == own:
                continue
            if name.endswith(".lock"):
                continue
            if not fsutil.lease_alive(self.paths.staging, name):
                fsutil.remove_tree(path)
                done.append(f"removed staging leftover {name}")
        return done

    def dead(self, record) -> bool:
        return record.incomplete and not fsutil.lease_alive(self.paths.staging, record.lease)

    def _repair_records(self) -> list[str]:
        done = []
        for c in list(self.containers.all(include_incomplete=True)):
            if self.dead(c):
                self.umount_all(c)
                self.containers.remove_leftover(c)
                done.append(f"removed interrupted container {c.id[:12]}")
        for image in list(self.images.all(include_incomplete=True)):
            if self.dead(image):
                self.images.delete(image.id)
                done.append(f"removed interrupted image {image.id[:12]}")
        for v in list(self.volumes.all(include_incomplete=True)):
            if self.dead(v):
                self.volumes.remove_leftover(v)
                done.append(f"removed interrupted volume {v.name}")
        for layer in list(self.layers.all(include_incomplete=True)):
            if self.dead(layer):
                self.layers.remove_leftover(layer)
                done.append(f"removed interrupted layer {layer.id.short}")
        for layer in list(self.parked.all(include_incomplete=True)):
            if self.dead(layer):
                self.parked.remove_leftover(layer)
                done.append(f"removed interrupted parked layer {layer.id.short}")
        for path in self.layers.orphan_dirs():
            fsutil.remove_tree(path)
            done.append(f"removed layer dir without record {os.path.basename(path)}")
        return done

    def referenced_layers(self) -> set[Digest]:
        refs: set[Digest] = set()
        for image in self.images.all(include_incomplete=True):
            refs.update(image.layers)
        for c in self.containers.all(include_incomplete=True):
            refs.update(c.layers)
        return refs

    def collect_layers(self, lease: fsutil.Lease) -> list[str]:
        """Take out every complete layer nothing refers to (content → lease)."""
        refs = self.referenced_layers()
        done = []
        for layer in list(self.layers.all()):
            if layer.id not in refs:
                self.layers.begin_delete(layer.id, lease.path, lease.token)
                done.append(f"removed unreferenced layer {layer.id.short}")
        return done

    def _repair_mounts(self) -> list[str]:
        done = []
        entries = self.mounts.load()
        changed = False
        for cid, entry in list(entries.items()):
            c = self.containers.load(cid)
            mounted = Mounted(entry.mountpoint, entry.pid)
            if c is None or c.incomplete or not self.driver.alive(
                    self.containers.container_dir(cid), mounted):
                try:
                    self.driver.clean_dead(self.containers.container_dir(cid), mounted)
                except LayersError:
                    pass
                del entries[cid]
                changed = True
                done.append(f"cleaned stale mount of {cid[:12]}")
        if changed:
            self.mounts.save(entries)
        return done

    def lowers(self, layers: tuple[Digest, ...]) -> list[str]:
        """Layer content dirs, TOP first."""
        return [self.layers.diff_dir(lid) for lid in reversed(layers)]

    def lowers_of(self, c: Container) -> list[str]:
        lowers = self.lowers(c.layers)
        if lowers:
            return lowers
        empty = os.path.join(self.containers.container_dir(c.id), "empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        return [empty]

    def resolve_layer(self, ref: str) -> Layer | None:
        text = ref[7:] if ref.startswith("sha256:") else ref
        if len(text) < 4 or any(c not in "0123456789abcdef" for c in text):
            return None
        matches = [layer for layer in self.layers.all() if layer.id.hex.startswith(text)]
        return matches[0] if len(matches) == 1 else None

    @contextmanager
    def pinned(self, layer_ids: tuple[Digest, ...], lease: fsutil.Lease) -> Iterator[None]:
        """Keep `layer_ids` in the store while they are read, outside the lock:
        an incomplete image record holding them, with this command's lease
        (repair removes it if the command dies; `rmi`, `prune` see the layers
        referenced meanwhile)."""
        pin = Image(id=secrets.token_hex(32), names=(), layers=layer_ids, config="{}",
                    manifest_digest=None, created=time.time(), incomplete=True,
                    lease=lease.token)
        with self.lock:
            for lid in layer_ids:
                if self.layers.get(lid) is None:
                    raise LayerUnknown(str(lid))
            self.images.save(pin.id, pin)
        try:
            yield
        finally:
            with self.lock:
                self.images.delete(pin.id)

    def refuse_busy(self, c: Container) -> None:
        """A complete container record carrying a live lease is being
        committed; nobody mounts or removes it meanwhile."""
        if not c.incomplete and fsutil.lease_alive(self.paths.staging, c.lease):
            raise ContainerBusy(c.name, "a commit is reading it")

    def umount_all(self, c: Container) -> None:
        entry = self.mounts.get(c.id)
        if entry is None:
            return
        cdir = self.containers.container_dir(c.id)
        mounted = Mounted(entry.mountpoint, entry.pid)
        if self.driver.alive(cdir, mounted):
            self.driver.umount(cdir, mounted)
        else:
            self.driver.clean_dead(cdir, mounted)
        self.mounts.remove(c.id)

    def extract_options(self) -> ExtractOptions:
        return ExtractOptions(form=self.driver.form, privileged=self.privileged,
                              override_stat=self.override_stat,
                              force_mask=self.config.force_mask,
                              ignore_chown_errors=self.config.ignore_chown_errors)

    def writable_usage(self, c: Container) -> tuple[int, int]:
        """(bytes, objects) of what the container wrote; (0, 0) when gone."""
        try:
            return self.driver.writable_usage(self.containers.container_dir(c.id))
        except FileNotFoundError:
            return 0, 0

    def volume(self, name: str) -> Volume:
        v = self.volumes.get(check_volume_name(name))
        if v is None:
            raise VolumeUnknown(name)
        return v

    def volume_users(self) -> dict[str, list[str]]:
        """Volume name → names of the containers using it (also those in flight)."""
        users: dict[str, list[str]] = {}
        for c in self.containers.all(include_incomplete=True):
            for vname in c.volumes():
                users.setdefault(vname, []).append(c.name)
        return users
