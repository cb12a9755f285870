"""The store facade: opening a store, what it holds, and one entry point
per command.

`Store` is a `StoreCore` (the lock, the records and the rules across them);
what is done here is only opening (`open`: the marker, the driver, repair),
queries, tags and `rmi` (an image goes with the containers using it only
with force), and `info`.  Every other command is a function of the module
named for its workflow, called with the store, and imported by the method
that calls it: a command's start-up loads its own workflow only (all of them
took a third of the start-up of `create` or `mount`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import containers, driverchoice, fsprobe, fsutil, gc, layout, quota
from .config import Config
from .drivers.btrfs import BtrfsDriver
from .drivers.overlay import OverlayDriver
from .errors import (BadReference, ContainerUnknown, ImageInUse, ImageUnknown, LayersError,
                     NotAStore, NotFound, StoreMismatch)
from .mounts import MountEntry
from .progress import Progress
from .records import Container, Image, Layer, MountSpec, Volume, parse_image_name, replace
from .storecore import StoreCore

if TYPE_CHECKING:
    from . import analyze, check
    from .registry.session import PullReport, PushReport, RegistryOptions
    from .source import ImageSource

DRIVERS = ("fuse", "overlay", "vfs", "btrfs")
CONFIGURED = "configured (--driver or storage.conf driver)"
RECORDED = "recorded in strata.json when the store was created"


@dataclass(frozen=True)
class ContainerState:
    container: Container
    mount: MountEntry | None


class Store(StoreCore):
    """An open store: `Store.open(config)`.  Holds no resources between calls."""

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, config: Config, lock_timeout: float = 30.0,
             repair: bool = True) -> "Store":
        """Open (creating if needed) the store at `config.root`.

        NotAStore for a foreign or non-empty non-Strata directory;
        StoreMismatch when `config.driver` differs from the recorded driver.
        """
        root = config.root
        marker = _read_marker(root)
        choice = None
        if marker:
            driver_name = marker["driver"]
        elif config.driver:
            driver_name = config.driver
        else:                         # a new store, no driver configured
            choice = driverchoice.choose_for(root, DRIVERS)
            driver_name = choice.driver
        if marker and config.driver and config.driver != driver_name:
            raise StoreMismatch(root, f"uses the {driver_name} driver, not "
                                      f"{config.driver}; `layers reset` to switch")
        store = cls(config, driver_name, lock_timeout)
        if marker is None:
            _refuse_foreign(root)
            if isinstance(store.driver, (OverlayDriver, BtrfsDriver)):
                store.driver.check_usable()   # root to extract; a btrfs root
            os.makedirs(root, mode=0o700, exist_ok=True)
            store._initialize(driver_name, choice.reason if choice else CONFIGURED)
            if choice and choice.warning:
                store.warnings.append(choice.warning)
        for d in store.paths.record_dirs():
            os.makedirs(d, mode=0o700, exist_ok=True)
        fsutil.spread_subdirs(store.paths.staging)
        if repair:
            store.repair()
        return store

    def _initialize(self, driver_name: str, reason: str) -> None:
        with self.lock:
            if _read_marker(self.paths.root) is not None:
                return
            for d in self.paths.record_dirs():
                os.makedirs(d, mode=0o700, exist_ok=True)
            doc = {"format": layout.FORMAT, "driver": driver_name,
                   "created": time.time(), "driver_reason": reason}
            fsutil.atomic_write(self.paths.marker, json.dumps(doc).encode() + b"\n")

    def list_images(self) -> list[Image]:
        return sorted(self.images.all(), key=lambda i: (-i.created, i.id))

    def list_layers(self) -> list[Layer]:
        return list(self.layers.all())

    def list_containers(self) -> list[ContainerState]:
        mounts = self.mounts.load()
        return [ContainerState(c, mounts.get(c.id))
                for c in sorted(self.containers.all(), key=lambda c: (c.created, c.id))]

    def image(self, ref: str) -> Image:
        return self.images.resolve(ref)

    def container(self, ref: str) -> Container:
        return self.containers.resolve(ref)

    def image_size(self, image: Image) -> int:
        total = 0
        for lid in image.layers:
            layer = self.layers.get(lid)
            total += layer.size if layer else 0
        return total

    def analyze(self, ref: str) -> analyze.Report:
        """Layer efficiency of the image `ref` (`analyze.py`); its layers are
        pinned while they are read, outside the lock."""
        from . import analyze
        image = self.images.resolve(ref)
        with self.lease() as lease, self.pinned(image.layers, lease):
            with self.lock:
                found = [self.layers.get(lid) for lid in image.layers]
            return analyze.analyze([(str(layer.id), self.layers.diff_dir(layer.id),
                                     layer.size) for layer in found if layer])

    def inspect(self, ref: str) -> dict:
        """JSON-ready description of a container, image or layer named `ref`."""
        try:
            c = self.containers.resolve(ref)
            entry = self.mounts.get(c.id)
            return {"type": "container", "id": c.id, "name": c.name, "image": c.image,
                    "layers": [str(x) for x in c.layers], "driver": c.driver,
                    "mounts": [self._mount_doc(m) for m in c.mounts],
                    "quota": {"bytes": c.quota.bytes, "inodes": c.quota.inodes},
                    "owner": c.owner,
                    "created": c.created, "dir": self.containers.container_dir(c.id),
                    "mounted": entry is not None,
                    "mountpoint": entry.mountpoint if entry else None,
                    "mount_count": entry.count if entry else 0,
                    "pid": entry.pid if entry else None}
        except (ContainerUnknown, BadReference):
            pass
        try:
            image = self.images.resolve(ref)
            lazy = [layer for layer in map(self.layers.get, image.layers)
                    if layer is not None and layer.lazy is not None]
            return {"type": "image", "id": image.id, "digest": f"sha256:{image.id}",
                    "names": list(image.names), "layers": [str(x) for x in image.layers],
                    "lazy_layers": [{"layer": str(layer.id), "fetched": layer.lazy.fetched,
                                     "total": layer.lazy.total, "error": layer.lazy.error}
                                    for layer in lazy],
                    "size": self.image_size(image), "created": image.created,
                    "manifest_digest": str(image.manifest_digest)
                    if image.manifest_digest else None,
                    "config": json.loads(image.config)}
        except ImageUnknown:
            pass
        layer = self.resolve_layer(ref)
        if layer is None:
            raise NotFound(ref)
        return {"type": "layer", "id": str(layer.id), "diff_id": str(layer.diff_id),
                "parent": str(layer.parent) if layer.parent else None,
                "compressed_digest": str(layer.compressed_digest)
                if layer.compressed_digest else None,
                "created": layer.created, "tar_size": layer.tar_size, "size": layer.size,
                "dir": self.layers.diff_dir(layer.id), "lazy": self._lazy_doc(layer)}

    def _lazy_doc(self, layer: Layer) -> dict | None:
        """None for a complete layer; for a lazy one, where its content is,
        how much of its blob came and how many of its files are complete."""
        from . import lazylayer
        if layer.lazy is None:
            return None
        z = layer.lazy
        doc = {"registry": z.registry, "repository": z.repository, "blob": str(z.blob),
               "toc_digest": str(z.toc_digest), "fetched": z.fetched, "total": z.total,
               "error": z.error}
        try:
            doc.update(lazylayer.completeness(self.layers.diff_dir(layer.id),
                                              lazylayer.load_index(
                                                  self.paths.layer_toc(layer.id),
                                                  z.toc_digest, layer.id.short)))
        except (LayersError, OSError) as e:      # said, not fatal: check names it
            doc["files"] = f"unknown ({e})"
        return doc

    def _mount_doc(self, m: MountSpec) -> dict:
        doc = {"type": m.type, "source": m.source, "destination": m.destination,
               "options": list(m.options)}
        if m.type == "volume":
            doc["path"] = self.volumes.data_dir(m.source)
        return doc

    def list_volumes(self) -> list[Volume]:
        return sorted(self.volumes.all(), key=lambda v: (v.created, v.name))

    def tag(self, ref: str, names: list[str]) -> Image:
        parsed = [parse_image_name(n) for n in names]
        with self.lock:
            return self.images.claim_names(self.images.resolve(ref), parsed)

    def rmi(self, ref: str, force: bool = False) -> list[str]:
        """Remove an image (or only the name `ref` when it has others).

        ImageInUse names the containers using it, unless `force` removes them.
        Returns lines describing what was done.
        """
        from . import als
        done: list[str] = []
        with self.lease() as lease:
            with self.lock:
                image = self.images.resolve(ref)
                try:
                    name = parse_image_name(ref)
                except BadReference:
                    name = None
                if name in image.names and len(image.names) > 1:
                    self.images.save(image.id, replace(
                        image, names=tuple(n for n in image.names if n != name)))
                    return [f"untagged {name}"]
                als.refuse_served(self, image, ref)
                users = [c for c in self.containers.all(include_incomplete=True)
                         if c.image == image.id]
                if users and not force:
                    raise ImageInUse(ref, [c.name for c in users])
                for c in users:
                    self.umount_all(c)
                    self.containers.begin_delete(c, lease.path, lease.token)
                    done.append(f"removed container {c.name}")
                self.images.delete(image.id)
                done.append(f"removed image {image.id[:12]}")
                done += self.collect_layers(lease)
            # the lease's staging dir, holding the removed content, goes now,
            # outside the lock
        return done

    def info(self) -> tuple[dict, list[str]]:
        """(facts, warnings): where the store is, its driver, what it holds,
        its limits and this user's usage, and the filesystem under it, with
        a warning for each check it fails (`fsprobe.examine`: a network
        filesystem, no xattrs, no d_type; the probes write in this command's
        staging dir)."""
        with self.lease() as lease:
            fs, warnings = fsprobe.examine(self.paths.root, lease.path)
        usage = containers.user_usage(self)
        with self.lock:
            counts = {kind: sum(1 for _ in records.all()) for kind, records in (
                ("layers", self.layers), ("images", self.images),
                ("containers", self.containers), ("volumes", self.volumes))}
        marker = _read_marker(self.paths.root) or {}
        reason = marker.get("driver_reason") or RECORDED
        if self.driver.name == "vfs" and reason != CONFIGURED and reason != RECORDED:
            warnings.append(driverchoice.VFS_WARNING)
        facts = {"root": self.paths.root, "runroot": self.config.runroot,
                 "driver": self.driver.name, "driver_reason": reason,
                 "storage_conf": self.config.source,
                 "filesystem": fs, **counts,
                 "limits": {"size": self.config.size, "inodes": self.config.inodes,
                            "user_quota": self.config.user_quota, "uid": usage.uid,
                            "user_usage": usage.used,
                            "user_containers": usage.containers}}
        return facts, warnings

    def check(self, verify: bool = False) -> list[str]:
        """Problems found comparing records with the disk (empty: consistent);
        with `verify`, layers whose content does not hash to their diffID."""
        from . import check
        return [p.message for p in self.problems(verify) if p.severity == check.ERROR]

    # The workflows: each entry point below hands the store to the function
    # of the module named for it, where its docstring says what it does.

    # -- podman's additional layer store ----------------------------------------------
    def als(self, action: str, ref: str | None = None, mount_lazy: bool = False) -> list[str]:
        """`layers als add|rm REF`, `layers als ls`: see als.py."""
        from . import als
        if action == "add":
            return als.add(self, ref, mount_lazy)
        if action == "rm":
            return als.remove(self, ref)
        return als.listing(self)

    # -- import --------------------------------------------------------------------
    def import_path(self, path: str | list[str], name: str | None = None,
                    progress: Progress | None = None) -> list[Image]:
        from . import ingest
        return ingest.import_path(self, path, name, progress)

    def import_source(self, src: ImageSource, names: list[str],
                      progress: Progress | None = None) -> Image:
        from . import ingest
        return ingest.import_source(self, src, names, progress)

    def pull(self, ref: str, options: RegistryOptions, name: str | None = None,
             progress: Progress | None = None, lazy: bool = False) -> PullReport:
        from . import ingest
        return ingest.pull(self, ref, options, name, progress, lazy)

    # -- lazy layers -----------------------------------------------------------------
    def serve_fetcher(self) -> int:
        from . import fetcher
        return fetcher.serve(self)

    # -- push ----------------------------------------------------------------------
    def push(self, ref: str, dest: str | None, options: RegistryOptions,
             progress: Progress | None = None) -> PushReport:
        from . import push
        return push.push(self, ref, dest, options, progress)

    # -- containers ----------------------------------------------------------------
    def create(self, image_ref: str, name: str | None = None,
               volumes: list[str] = (), tmpfs: list[str] = (),
               size: int | None = None, inodes: int | None = None) -> Container:
        return containers.create(self, image_ref, name, volumes, tmpfs, size, inodes)

    def mount(self, ref: str) -> str:
        return containers.mount(self, ref)

    def umount(self, ref: str, force: bool = False) -> int:
        return containers.umount(self, ref, force)

    def rm(self, ref: str, force: bool = False, volumes: bool = False) -> Container:
        return containers.rm(self, ref, force, volumes)

    def bundle(self, ref: str, directory: str, args: list[str] | None = None) -> str:
        return containers.bundle(self, ref, directory, args)

    def diff(self, ref: str) -> list[tuple[str, str]]:
        return containers.diff(self, ref)

    def user_usage(self, uid: int | None = None) -> quota.UserUsage:
        return containers.user_usage(self, uid)

    def volume_create(self, name: str | None = None,
                      labels: dict[str, str] | None = None) -> Volume:
        return containers.volume_create(self, name, labels)

    def volume_inspect(self, name: str) -> dict:
        return containers.volume_inspect(self, name)

    def volume_rm(self, name: str, force: bool = False) -> list[str]:
        return containers.volume_rm(self, name, force)

    # -- commit, export and save ---------------------------------------------------
    def commit(self, ref: str, name: str | None = None,
               epoch: int | None = None, progress: Progress | None = None) -> Image:
        from . import commit
        return commit.commit(self, ref, name, epoch, progress)

    def export(self, ref: str, path: str, epoch: int | None = None,
               progress: Progress | None = None) -> list[str]:
        from . import export
        return export.export(self, ref, path, epoch, progress)

    def save(self, ref: str, path: str, as_tar: bool | None = None,
             progress: Progress | None = None) -> list[str]:
        from . import export
        return export.save(self, ref, path, as_tar, progress)

    # -- disk usage and cleanup ----------------------------------------------------
    def df(self) -> list[gc.Usage]:
        from . import cleanup
        return cleanup.df(self)

    def prune(self, kinds: tuple[str, ...] = gc.KINDS, all: bool = False,
              dry_run: bool = False) -> list[tuple[str, int | None]]:
        from . import cleanup
        return cleanup.prune(self, kinds, all, dry_run)

    def remove_stale_locks(self) -> list[str]:
        from . import cleanup
        return cleanup.remove_stale_locks(self)

    def reset(self) -> list[str]:
        from . import cleanup
        return cleanup.reset(self)

    # -- check ---------------------------------------------------------------------
    def problems(self, verify: bool = False) -> list[check.Problem]:
        from . import check
        return check.problems(self, verify)

    def repair_problems(self, problems: list[check.Problem]) -> list[str]:
        from . import check
        return check.repair_problems(self, problems)


def _read_marker(root: str) -> dict | None:
    path = os.path.join(root, layout.MARKER)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NotAStore(root, f"unreadable {layout.MARKER} ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != layout.FORMAT \
            or doc.get("driver") not in DRIVERS:
        raise NotAStore(root, f"{layout.MARKER} of an unknown format")
    return doc


def _refuse_foreign(root: str) -> None:
    """A directory that exists, is not a Strata store, and is not empty: refuse."""
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise NotAStore(root, "not a directory") from None
    for rel, reason in layout.FOREIGN_STORES:
        if os.path.exists(os.path.join(root, rel)):
            raise NotAStore(root, reason)
    if any(not _skeleton(root, name) for name in entries):
        raise NotAStore(root, "not a Strata store and not empty")


def _skeleton(root: str, name: str) -> bool:
    """Left by an initialization that died before writing the marker."""
    path = os.path.join(root, name)
    if name == layout.LOCK or fsutil.is_tmp_name(name):
        return os.path.isfile(path)
    return name in (layout.LAYERS, layout.IMAGES, layout.CONTAINERS, layout.VOLUMES,
                    layout.STAGING) \
        and os.path.isdir(path) and not os.listdir(path)
