"""The store facade: the lock, the rules across records, mounting containers.

Level 5: imports every lower level; nothing imports it but `cli`.

Rules kept here and nowhere else:
- every write of a record happens under the store lock; slow work
  (extraction, hashing, copying, removing trees) happens outside it, in the
  command's staging dir (`fsutil.Lease`);
- a layer is deleted only when no image and no container refers to it; an
  image only when no container uses it (or with force, after its containers);
- opening the store repairs what interrupted commands left (`_repair`):
  staging dirs of dead commands, temp files, incomplete records whose lease is
  dead, unreferenced layers, stale mounts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import secrets
import time
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from . import fsutil, layout
from . import check as checkmod
from . import fsprobe, gc, tarsplit
from . import analyze as analyzemod
from . import driverchoice
from . import quota as quotas
from .archive import ExtractOptions, build_layer, extract_layer, write_tar
from .bundle import runtime_config
from .changelist import RUNTIME_MOUNTPOINTS, without_mountpoints
from .tarentries import UpperNeedsLower, tree_entries
from .config import Config
from .containerstore import ContainerStore
from .digest import Digest, HashingReader, chain_ids
from .drivers.base import Driver, Mounted
from .drivers.btrfs import BtrfsDriver
from .drivers.fuse import FuseDriver
from .drivers.overlay import OverlayDriver
from .drivers.vfs import VfsDriver
from .errors import (BadArchive, BadReference, ContainerBusy, ContainerMounted,
                     ContainerUnknown, DigestMismatch, DriverError, ImageInUse, ImageUnknown,
                     LayersError, LayerUnknown, NameInUse, NotAStore, NotFound,
                     StoreMismatch, UsageError, VolumeInUse, VolumeUnknown)
from .imagestore import ImageStore, committed_config
from .layerstore import LayerStore
from .mounts import MountEntry, MountRegistry
from .progress import Progress, counted_chunks, counted_entries
from .ociwriter import (CONFIG, LAYER_TAR, MANIFEST, REF_NAME, canonical_json, descriptor,
                        open_layout)
from .layout import check_volume_name
from .records import (Container, Image, Layer, MountSpec, Volume, check_container_name,
                      parse_image_name, parse_tmpfs_spec, parse_volume_spec, replace)
from .source import ImageSource, LayerBlob, open_source
from .volumes import VolumeStore
from .registry import parking
from .registry.blobinfo import BlobInfoCache
from .registry.parallel import run_bounded
from .registry.reference import split_registry
from .registry.session import (LayerTransfer, PullReport, PushReport, RegistryOptions,
                               open_pull, open_push)
from .registry.upload import PushedBlob

DRIVERS = ("fuse", "overlay", "vfs", "btrfs")
CONFIGURED = "configured (--driver or storage.conf driver)"
RECORDED = "recorded in strata.json when the store was created"


@dataclass(frozen=True)
class ContainerState:
    container: Container
    mount: MountEntry | None


class Store:
    """An open store: `Store.open(config)`.  Holds no resources between calls."""

    def __init__(self, config: Config, driver_name: str, lock_timeout: float):
        self.config = config
        self.paths = layout.StorePaths(config.root, config.runroot)
        self.lock = fsutil.StoreLock(self.paths.lock, lock_timeout)
        self.layers = LayerStore(self.paths)
        self.images = ImageStore(self.paths)
        self.containers = ContainerStore(self.paths)
        self.volumes = VolumeStore(self.paths)
        self.mounts = MountRegistry(self.paths.mounts)
        self.privileged = os.geteuid() == 0
        self.driver = self._make_driver(driver_name)
        self.repaired: list[str] = []
        self.warnings: list[str] = []     # for the user, from opening (a new vfs store)
        self.notes: list[str] = []        # for the user, from the last command
        self.device_files = 0             # device nodes extracted as files (rootless)

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

    def _make_driver(self, name: str) -> Driver:
        if name == "fuse":
            return FuseDriver(self.config.mount_program, self.config.mountopt,
                              override_stat=self._override_stat)
        if name == "overlay":
            return OverlayDriver(self.paths.root, self.config.mountopt)
        if name == "vfs":
            return VfsDriver(self.privileged)
        if name == "btrfs":
            return BtrfsDriver(self.paths.root, self.privileged)
        raise StoreMismatch(self.paths.root, f"unknown driver {name!r}")

    @property
    def _override_stat(self) -> bool:
        return not self.privileged or self.config.force_mask is not None

    @contextmanager
    def _lease(self) -> Iterator[fsutil.Lease]:
        lease = fsutil.Lease(self.paths.staging)
        try:
            yield lease
        finally:
            lease.close()

    # -- repair ----------------------------------------------------------------

    def repair(self) -> list[str]:
        """Remove leftovers of interrupted commands; returns what was done."""
        done: list[str] = []
        with self._lease() as lease:
            with self.lock:
                done += self._repair_staging(lease.token)
                for rs in (self.layers, self.images, self.containers, self.volumes):
                    for tmp in rs.leftover_tmp_files():
                        os.unlink(tmp)
                        done.append(f"removed temp file {tmp}")
                done += self._repair_records()
                done += self._collect_layers(lease)
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

    def _dead(self, record) -> bool:
        return record.incomplete and not fsutil.lease_alive(self.paths.staging, record.lease)

    def _repair_records(self) -> list[str]:
        done = []
        for c in list(self.containers.all(include_incomplete=True)):
            if self._dead(c):
                self._umount_all(c)
                self.containers.remove_leftover(c)
                done.append(f"removed interrupted container {c.id[:12]}")
        for image in list(self.images.all(include_incomplete=True)):
            if self._dead(image):
                self.images.delete(image.id)
                done.append(f"removed interrupted image {image.id[:12]}")
        for v in list(self.volumes.all(include_incomplete=True)):
            if self._dead(v):
                self.volumes.remove_leftover(v)
                done.append(f"removed interrupted volume {v.name}")
        for layer in list(self.layers.all(include_incomplete=True)):
            if self._dead(layer):
                self.layers.remove_leftover(layer)
                done.append(f"removed interrupted layer {layer.id.short}")
        for path in self.layers.orphan_dirs():
            fsutil.remove_tree(path)
            done.append(f"removed layer dir without record {os.path.basename(path)}")
        return done

    def _referenced_layers(self) -> set[Digest]:
        refs: set[Digest] = set()
        for image in self.images.all(include_incomplete=True):
            refs.update(image.layers)
        for c in self.containers.all(include_incomplete=True):
            refs.update(c.layers)
        return refs

    def _collect_layers(self, lease: fsutil.Lease) -> list[str]:
        """Take out every complete layer nothing refers to (content → lease)."""
        refs = self._referenced_layers()
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

    # -- queries ---------------------------------------------------------------

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

    def analyze(self, ref: str) -> analyzemod.Report:
        """Layer efficiency of the image `ref` (`analyze.py`); its layers are
        pinned while they are read, outside the lock."""
        image = self.images.resolve(ref)
        with self._lease() as lease, self._pinned(image.layers, lease):
            with self.lock:
                found = [self.layers.get(lid) for lid in image.layers]
            return analyzemod.analyze([(str(layer.id), self.layers.diff_dir(layer.id),
                                        layer.size) for layer in found if layer])

    def lowers(self, layers: tuple[Digest, ...]) -> list[str]:
        """Layer content dirs, TOP first."""
        return [self.layers.diff_dir(lid) for lid in reversed(layers)]

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
            return {"type": "image", "id": image.id, "digest": f"sha256:{image.id}",
                    "names": list(image.names), "layers": [str(x) for x in image.layers],
                    "size": self.image_size(image), "created": image.created,
                    "manifest_digest": str(image.manifest_digest)
                    if image.manifest_digest else None,
                    "config": json.loads(image.config)}
        except ImageUnknown:
            pass
        layer = self._resolve_layer(ref)
        if layer is None:
            raise NotFound(ref)
        return {"type": "layer", "id": str(layer.id), "diff_id": str(layer.diff_id),
                "parent": str(layer.parent) if layer.parent else None,
                "compressed_digest": str(layer.compressed_digest)
                if layer.compressed_digest else None,
                "created": layer.created, "tar_size": layer.tar_size, "size": layer.size,
                "dir": self.layers.diff_dir(layer.id)}

    def _mount_doc(self, m: MountSpec) -> dict:
        doc = {"type": m.type, "source": m.source, "destination": m.destination,
               "options": list(m.options)}
        if m.type == "volume":
            doc["path"] = self.volumes.data_dir(m.source)
        return doc

    def _resolve_layer(self, ref: str) -> Layer | None:
        text = ref[7:] if ref.startswith("sha256:") else ref
        if len(text) < 4 or any(c not in "0123456789abcdef" for c in text):
            return None
        matches = [layer for layer in self.layers.all() if layer.id.hex.startswith(text)]
        return matches[0] if len(matches) == 1 else None

    # -- import ----------------------------------------------------------------

    def import_path(self, path: str | list[str], name: str | None = None,
                    progress: Progress | None = None) -> list[Image]:
        """Import every image at `path` (see `source.py`); returns them.
        Several paths: layer tars, bottom first, stacked into one image.

        `name` (NAME[:TAG]) names the image; only for a single image.
        Raises DigestMismatch, UnsafeArchive, BadArchive; on failure nothing of
        the import stays visible.
        """
        names = [parse_image_name(name)] if name else []
        before = self.device_files
        with open_source(path) as sources:
            if names and len(sources) > 1:
                raise BadArchive(path, f"holds {len(sources)} images; --name needs one")
            images = [self.import_source(src, names or src.names, progress)
                      for src in sources]
        kept = self.device_files - before
        if kept:
            what = f"{kept} device nodes" if kept > 1 else "1 device node"
            self.notes.append(
                f"{what} kept as empty files with type, numbers, owner and mode in "
                f"{layout.OVERRIDE_STAT_XATTR} (no device can be made rootless); "
                "fsd mounts show them as devices")
        return images

    def import_source(self, src: ImageSource, names: list[str],
                      progress: Progress | None = None) -> Image:
        """Import one image of an opened source under `names` (parsed)."""
        with self._lease() as lease:
            if src.config is None:
                return self._import_bare(src, names, lease, progress)
            image_id = Digest.of_bytes(src.config).hex
            # Two imports of one image: the second waits, then finds it done.
            with fsutil.exclusive_flock(self.paths.image_import_lock(image_id)):
                return self._import_config_image(src, image_id, names, lease, progress)

    def _import_config_image(self, src: ImageSource, image_id: str, names: list[str],
                             lease: fsutil.Lease, progress: Progress | None) -> Image:
        config = src.config
        chain = chain_ids(src.diff_ids)
        with self.lock:
            existing = self.images.get(image_id)
            if existing is not None:
                return self.images.claim_names(existing, names)
            image = Image(id=image_id, names=(), layers=tuple(chain),
                          config=config.decode(), manifest_digest=src.manifest_digest,
                          created=time.time(), incomplete=True, lease=lease.token)
            self.images.save(image_id, image)
        fsutil.crash_point("image-recorded")
        try:
            for i, blob in enumerate(src.layers):
                self._ensure_layer(blob, i, len(src.layers), chain, lease, progress)
            fsutil.crash_point("layers-done")
            with self.lock:
                self.images.save(image_id, replace(image, incomplete=False, lease=None))
                return self.images.claim_names(self.images.get(image_id), names)
        except BaseException:
            with self.lock:
                self.images.delete(image_id)
                self._collect_layers(lease)
            raise

    def _ensure_layer(self, blob: LayerBlob, index: int, total: int,
                      chain: list[Digest], lease: fsutil.Lease,
                      progress: Progress | None) -> None:
        layer_id = chain[index]
        if self.layers.get(layer_id) is not None:
            if progress:
                progress.layer_start(index, total, blob.where, blob.size)
                progress.layer_done(None)
            return
        # One extraction per layer across processes: a second importer waits
        # here, outside the store lock, then finds the layer present.
        with fsutil.exclusive_flock(self.paths.layer_extract_lock(layer_id)):
            if self.layers.get(layer_id) is not None:
                return
            staged = os.path.join(lease.path, layer_id.hex)
            layer = self._extract(blob, index, total, staged, progress,
                                  parent=chain[index - 1] if index else None,
                                  layer_id=layer_id)
            fsutil.crash_point("extracted")
            with self.lock:
                if self.layers.get(layer_id) is None:
                    self.layers.publish(layer, staged, lease.token)
            if progress:
                progress.layer_done(layer)

    def _extract(self, blob: LayerBlob, index: int, total: int, staged: str,
                 progress: Progress | None, parent: Digest | None,
                 layer_id: Digest | None) -> Layer:
        """Extract `blob` into `staged/diff`, verify it; the Layer to publish."""
        diff = os.path.join(staged, "diff")
        os.makedirs(diff, mode=0o755)
        options = self._extract_options()
        what = f"layer {index + 1}/{total} ({blob.where})"
        try:
            with blob.open() as f:
                if progress:
                    progress.layer_start(index, total, blob.where,
                                         blob.size if blob.size is not None else _remaining(f))
                result = extract_layer(f, diff, options, where=blob.where,
                                       on_progress=progress.layer_bytes if progress else None,
                                       split_path=os.path.join(staged, layout.SPLIT))
        except BadArchive:
            # A corrupt blob: when its digest is known, say that, naming both.
            got = self._blob_digest(blob) if blob.digest is not None else None
            if got is not None and got != blob.digest:
                raise DigestMismatch(what, str(blob.digest), str(got)) from None
            raise
        if blob.digest is not None and blob.digest != result.blob_digest:
            raise DigestMismatch(what, str(blob.digest), str(result.blob_digest))
        if blob.diff_id is not None and blob.diff_id != result.diff_id:
            raise DigestMismatch(f"{what} diffID", str(blob.diff_id), str(result.diff_id))
        self.device_files += result.device_files
        return Layer(id=layer_id or result.diff_id, diff_id=result.diff_id, parent=parent,
                     compressed_digest=result.blob_digest if result.compression else None,
                     created=time.time(), tar_size=result.tar_size,
                     size=fsutil.allocated_size(staged))

    def _extract_options(self) -> ExtractOptions:
        return ExtractOptions(form=self.driver.form, privileged=self.privileged,
                              override_stat=self._override_stat,
                              force_mask=self.config.force_mask,
                              ignore_chown_errors=self.config.ignore_chown_errors)

    @staticmethod
    def _blob_digest(blob: LayerBlob) -> Digest:
        with blob.open() as f:
            reader = HashingReader(f)
            reader.drain()
        return reader.digest()

    def _import_bare(self, src: ImageSource, names: list[str], lease: fsutil.Lease,
                     progress: Progress | None) -> Image:
        """Bare layer tars, bottom first: extract first (their diffIDs are their
        identity), then publish the new layers and the image in one lock hold."""
        staged: list[tuple[Layer, str]] = []
        parent: Digest | None = None
        for i, blob in enumerate(src.layers):
            path = os.path.join(lease.path, f"bare-{i}")
            layer = self._extract(blob, i, len(src.layers), path, progress,
                                  parent=parent, layer_id=None)
            layer_id = chain_ids([layer.diff_id] if parent is None else
                                 [parent, layer.diff_id])[-1]
            layer = replace(layer, id=layer_id)
            staged.append((layer, path))
            parent = layer_id
            if progress:
                progress.layer_done(layer)
        config = src.config_for([layer.diff_id for layer, _ in staged])
        image_id = Digest.of_bytes(config).hex
        with self.lock:
            for layer, path in staged:
                if self.layers.get(layer.id) is None:
                    self.layers.publish(layer, path, lease.token)
            image = self.images.get(image_id)
            if image is None:
                image = Image(id=image_id, names=(),
                              layers=tuple(layer.id for layer, _ in staged),
                              config=config.decode(), manifest_digest=None,
                              created=time.time())
                self.images.save(image_id, image)
            return self.images.claim_names(image, names)

    # -- registries --------------------------------------------------------------

    def pull(self, ref: str, options: RegistryOptions, name: str | None = None,
             progress: Progress | None = None) -> PullReport:
        """Pull the image `ref` names from its registry (or a mirror: see
        `registry/session.py`); record it under that name (or `name`).

        Only the layers the store lacks are fetched, `options.jobs` at a time.
        Each goes through `_extract` — the extraction `import` uses: streamed,
        decompressed, hashed, blob digest and diffID verified — into this
        command's staging dir, then is parked (`registry/parking.py`).  When
        all are there, the parked layers are published and the image recorded
        in one hold of the lock.  An interrupted pull leaves no layer and no
        image visible; the layers it finished stay parked for the next pull.
        Raises DigestMismatch, BadArchive, UnsafeArchive, the registry errors.
        """
        names = [parse_image_name(name)] if name else None
        started = time.monotonic()
        parking.expire(self.paths.parked)
        with open_pull(ref, options) as pulled, self._lease() as lease:
            remote = pulled.remote
            src = remote.source
            image_id = Digest.of_bytes(src.config).hex
            with fsutil.exclusive_flock(self.paths.image_import_lock(image_id)):
                image, outcomes = self._import_pulled(
                    src, image_id, src.names if names is None else names, lease, progress,
                    pulled.abort, options.jobs)
            cache = BlobInfoCache(self.paths.blobinfo)
            for blob, media in zip(src.layers, remote.layer_media_types):
                cache.record(blob.digest, blob.size, media, blob.diff_id, remote.reference.name)
            cache.save()
            chain = chain_ids(src.diff_ids)
            return PullReport(
                reference=str(pulled.asked), found_at=str(remote.reference),
                image_id=image.id, names=image.names, manifest_digest=src.manifest_digest,
                layers=[LayerTransfer(i, chain[i], b.digest, b.size, outcomes[i],
                                      remote.received.get(b.digest, 0))
                        for i, b in enumerate(src.layers)],
                received=remote.bytes_received, seconds=time.monotonic() - started,
                mirrors_passed=pulled.mirrors_passed)

    def _import_pulled(self, src: ImageSource, image_id: str, names: list[str],
                       lease: fsutil.Lease, progress: Progress | None,
                       abort, jobs: int) -> tuple[Image, list[str]]:
        """`_import_config_image` for a pull: layers parked in parallel, then
        published with the image (see `pull`).  The image and each layer's
        outcome ("present", "parked", "fetched")."""
        diff_ids = src.diff_ids
        chain = chain_ids(diff_ids)
        with self.lock:
            existing = self.images.get(image_id)
            if existing is not None:
                return self.images.claim_names(existing, names), ["present"] * len(chain)
            image = Image(id=image_id, names=(), layers=tuple(chain),
                          config=src.config.decode(), manifest_digest=src.manifest_digest,
                          created=time.time(), incomplete=True, lease=lease.token)
            self.images.save(image_id, image)
        try:
            calls = [functools.partial(self._park_layer, blob, i, chain, diff_ids, lease,
                                       progress) for i, blob in enumerate(src.layers)]
            outcomes = run_bounded(jobs, calls, abort)
            fsutil.crash_point("pull-parked")
            with self.lock:
                for i, lid in enumerate(chain):
                    if self.layers.get(lid) is not None:
                        parking.drop(self.paths.parked, lid)   # another pull published it
                        continue
                    layer = parking.find(self.paths.parked, lid, diff_ids[i],
                                         chain[i - 1] if i else None)
                    if layer is None:
                        raise LayerUnknown(f"{lid} (parked by this pull, then gone)")
                    self.layers.publish(layer, parking.content_dir(self.paths.parked, lid),
                                        lease.token)
                    parking.forget(self.paths.parked, lid)
                self.images.save(image_id, replace(image, incomplete=False, lease=None))
                return self.images.claim_names(self.images.get(image_id), names), outcomes
        except BaseException:
            with self.lock:
                self.images.delete(image_id)
                self._collect_layers(lease)
            raise

    def _park_layer(self, blob: LayerBlob, index: int, chain: list[Digest],
                    diff_ids: list[Digest], lease: fsutil.Lease,
                    progress: Progress | None) -> str:
        """Make layer `index` present or parked; runs on a transfer thread, so
        it never takes the store lock.  "present", "parked" or "fetched"."""
        lid, total = chain[index], len(chain)
        parent = chain[index - 1] if index else None

        def found() -> str | None:
            if self.layers.get(lid) is not None:
                return "present"
            if parking.find(self.paths.parked, lid, diff_ids[index], parent) is not None:
                return "parked"
            return None

        outcome = found()
        if outcome is None:
            with fsutil.exclusive_flock(self.paths.layer_extract_lock(lid)):
                outcome = found()
                if outcome is None:
                    staged = os.path.join(lease.path, lid.hex)
                    layer = self._extract(blob, index, total, staged, progress,
                                          parent=parent, layer_id=lid)
                    parking.park(self.paths.parked, layer, staged)
                    fsutil.crash_point("pull-layer-parked")
                    if progress:
                        progress.layer_done(layer)
                    return "fetched"
        if progress:
            progress.layer_start(index, total, blob.where, blob.size)
            progress.layer_done(None)
        return outcome

    def push(self, ref: str, dest: str | None, options: RegistryOptions,
             progress: Progress | None = None) -> PushReport:
        """Push the image `ref` to `dest` (default: its first name that names a
        registry, see `_push_destination`): only the
        blobs the registry lacks are uploaded (`registry/upload.py`),
        `options.jobs` at a time; layers are rebuilt from their tar-splits
        (as `save` does), so the config — the image id — is the one pulled
        or imported.  The layers are pinned meanwhile."""
        image = self.images.resolve(ref)
        if dest is None:
            dest = _push_destination(ref, image)
        started = time.monotonic()
        warnings: list[str] = []
        cache = BlobInfoCache(self.paths.blobinfo)
        with self._lease() as lease, self._pinned(image.layers, lease), \
                open_push(dest, options, cache) as pusher:
            layers = [self.layers.get(lid) for lid in image.layers]

            def one(i: int) -> PushedBlob:
                layer = layers[i]
                if progress:
                    progress.layer_start(i, len(layers), str(layer.diff_id), None)
                blob = pusher.push_layer(
                    layer.diff_id, layer.tar_size,
                    lambda: self._layer_tar(layer, lease, warnings), lease.path, progress)
                if progress:
                    progress.layer_done(layer if blob.status == "uploaded" else None)
                return blob

            blobs = run_bounded(options.jobs, [functools.partial(one, i)
                                               for i in range(len(layers))],
                                pusher.client.abort)
            config = image.config.encode()
            diff_ids = [str(b.diff_id) for b in blobs]
            doc = json.loads(config)
            if doc.get("rootfs", {}).get("diff_ids") != diff_ids:
                doc.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
                config = canonical_json(doc)
                warnings.append(f"image {image.id[:12]} pushed with a new config "
                                f"(id {Digest.of_bytes(config).hex[:12]})")
            config_blob = pusher.push_config(config)
            manifest_digest, _ = pusher.push_manifest(config_blob, blobs)
            destination = str(pusher.ref)
        cache.save()
        return PushReport(destination=destination, image_id=image.id,
                          manifest_digest=manifest_digest, layers=blobs, config=config_blob,
                          sent=pusher.bytes_sent, seconds=time.monotonic() - started,
                          warnings=warnings)

    # -- images ----------------------------------------------------------------

    def tag(self, ref: str, names: list[str]) -> Image:
        parsed = [parse_image_name(n) for n in names]
        with self.lock:
            return self.images.claim_names(self.images.resolve(ref), parsed)

    def rmi(self, ref: str, force: bool = False) -> list[str]:
        """Remove an image (or only the name `ref` when it has others).

        ImageInUse names the containers using it, unless `force` removes them.
        Returns lines describing what was done.
        """
        done: list[str] = []
        with self._lease() as lease:
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
                users = [c for c in self.containers.all(include_incomplete=True)
                         if c.image == image.id]
                if users and not force:
                    raise ImageInUse(ref, [c.name for c in users])
                for c in users:
                    self._umount_all(c)
                    self.containers.begin_delete(c, lease.path, lease.token)
                    done.append(f"removed container {c.name}")
                self.images.delete(image.id)
                done.append(f"removed image {image.id[:12]}")
                done += self._collect_layers(lease)
            # the lease's staging dir, holding the removed content, goes now,
            # outside the lock
        return done

    # -- containers --------------------------------------------------------------

    def create(self, image_ref: str, name: str | None = None,
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
        mounts = self._parse_mounts(volumes, tmpfs)
        quota = quotas.container_quota(self.config, size, inodes)
        self.driver.check_quota(quota)
        uid = os.geteuid()
        written = self._written(uid) if self.config.user_quota is not None else {}
        with self._lease() as lease:
            made: list[str] = []
            with self.lock:
                image = self.images.resolve(image_ref)
                if name is not None:
                    check_container_name(name)
                    other = self.containers.name_taken(name)
                    if other is not None:
                        raise NameInUse(name, f"container {other.id[:12]}")
                quotas.check_user_quota(self._user_usage(uid, written), quota)
                mounts = self._provide_volumes(mounts, made, lease)
                cid = secrets.token_hex(32)
                name = name or f"strata-{cid[:12]}"
                container = Container(id=cid, name=name, image=image.id,
                                      layers=image.layers, driver=self.driver.name,
                                      created=time.time(), incomplete=True,
                                      lease=lease.token, mounts=mounts, quota=quota,
                                      owner=uid)
                self.containers.save(cid, container)
                cdir = self.containers.container_dir(cid)
                os.mkdir(cdir, 0o700)
            try:
                self.driver.create(cdir, self._lowers_of(container))
                fsutil.sync_tree(cdir)
                with self.lock:
                    container = replace(container, incomplete=False, lease=None)
                    self.containers.save(cid, container)
                return container
            except BaseException:
                with self.lock:
                    self.containers.remove_leftover(container)
                    for vname in made:
                        v = self.volumes.get(vname)
                        if v is not None and v.anonymous:
                            self.volumes.begin_delete(v, lease.path, lease.token)
                raise

    @staticmethod
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

    def _provide_volumes(self, mounts: tuple[MountSpec, ...], made: list[str],
                         lease: fsutil.Lease) -> tuple[MountSpec, ...]:
        """Create the volumes `mounts` name that do not exist yet, and an
        anonymous one for each `-v /path` (their names go into `made`).
        Caller holds the lock."""
        out = []
        for m in mounts:
            if m.type == "volume":
                vname = m.source or secrets.token_hex(32)
                existing = self.volumes.load(vname)
                if existing is not None and existing.incomplete:
                    raise NameInUse(vname, "a volume being created or removed")
                if existing is None:
                    self.volumes.create(vname, (), m.source is None, lease.token)
                    made.append(vname)
                m = dataclasses.replace(m, source=vname)
            out.append(m)
        return tuple(out)

    # -- limits ------------------------------------------------------------------

    def _store_owner(self) -> int:
        return os.stat(self.paths.root).st_uid

    def _writable_usage(self, c: Container) -> tuple[int, int]:
        """(bytes, objects) of what the container wrote; (0, 0) when gone."""
        try:
            return self.driver.writable_usage(self.containers.container_dir(c.id))
        except FileNotFoundError:
            return 0, 0

    def _written(self, uid: int) -> dict[str, int]:
        """Container id → bytes written, for the containers of `uid`."""
        owner = self._store_owner()
        return {c.id: self._writable_usage(c)[0]
                for c in self.containers.all(include_incomplete=True)
                if quotas.owner_of(c, owner) == uid}

    def _user_usage(self, uid: int, written: dict[str, int]) -> quotas.UserUsage:
        """What counts against `uid`'s user_quota now (caller holds the lock;
        containers of commands that died are not counted)."""
        live = [c for c in self.containers.all(include_incomplete=True) if not self._dead(c)]
        return quotas.user_usage(live, uid, self._store_owner(), self.config.user_quota,
                                 written)

    def user_usage(self, uid: int | None = None) -> quotas.UserUsage:
        """The user's (default: this process's) usage against user_quota."""
        uid = os.geteuid() if uid is None else uid
        written = self._written(uid)
        with self.lock:
            return self._user_usage(uid, written)

    def _lowers_of(self, c: Container) -> list[str]:
        lowers = self.lowers(c.layers)
        if lowers:
            return lowers
        empty = os.path.join(self.containers.container_dir(c.id), "empty")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        return [empty]

    def mount(self, ref: str) -> str:
        """Mount the container (or count one more user); its mount point."""
        with self.lock:
            c = self.containers.resolve(ref)
            self._refuse_busy(c)
            cdir = self.containers.container_dir(c.id)
            entry = self.mounts.get(c.id)
            if entry is not None:
                if self.driver.alive(cdir, Mounted(entry.mountpoint, entry.pid)):
                    self.mounts.put(dataclasses.replace(entry, count=entry.count + 1))
                    return entry.mountpoint
                self.driver.clean_dead(cdir, Mounted(entry.mountpoint, entry.pid))
                self.mounts.remove(c.id)
            self.driver.check_usable()
            mounted = self.driver.mount(cdir, self._lowers_of(c), c.quota)
            self.mounts.put(MountEntry(container=c.id, mountpoint=mounted.mountpoint,
                                         count=1, pid=mounted.pid, driver=self.driver.name))
            return mounted.mountpoint

    def umount(self, ref: str, force: bool = False) -> int:
        """One user fewer (all of them with `force`); the mount count left."""
        with self.lock:
            c = self.containers.resolve(ref)
            entry = self.mounts.get(c.id)
            if entry is None:
                return 0
            if entry.count > 1 and not force:
                self.mounts.put(dataclasses.replace(entry, count=entry.count - 1))
                return entry.count - 1
            self._umount_all(c)
            return 0

    def _umount_all(self, c: Container) -> None:
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

    def rm(self, ref: str, force: bool = False, volumes: bool = False) -> Container:
        """Remove a container (mounted: only with `force`); with `volumes`, also
        its anonymous volumes that no other container uses."""
        with self._lease() as lease:
            with self.lock:
                c = self.containers.resolve(ref)
                self._refuse_busy(c)
                entry = self.mounts.get(c.id)
                if entry is not None and not force:
                    raise ContainerMounted(c.name, entry.count)
                self._umount_all(c)
                self.containers.begin_delete(c, lease.path, lease.token)
                if volumes:
                    users = self.volume_users()
                    for vname in sorted(c.volumes()):
                        v = self.volumes.get(vname)
                        if v is not None and v.anonymous and not users.get(vname):
                            self.volumes.begin_delete(v, lease.path, lease.token)
            return c

    def bundle(self, ref: str, directory: str, args: list[str] | None = None) -> str:
        """Write an OCI runtime bundle for the container into `directory`:
        `config.json` (see `bundle.py`) whose root is the container's merged
        mount.  The container is mounted for it (one more user: `umount` it
        when the runtime is done).  Returns the config's path."""
        c = self.containers.resolve(ref)
        image = self.images.get(c.image)
        config = json.loads(image.config) if image is not None else {}
        for vname in c.volumes():
            self.volume(vname)
        mountpoint = self.mount(c.id)
        try:
            doc = runtime_config(mountpoint, config, c.mounts, self.volumes.data_dir,
                                 hostname=c.name[:63], args=args)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            path = os.path.join(directory, "config.json")
            fsutil.atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())
        except BaseException:
            self.umount(c.id)
            raise
        return path

    # -- volumes -----------------------------------------------------------------

    def volume_users(self) -> dict[str, list[str]]:
        """Volume name → names of the containers using it (also those in flight)."""
        users: dict[str, list[str]] = {}
        for c in self.containers.all(include_incomplete=True):
            for vname in c.volumes():
                users.setdefault(vname, []).append(c.name)
        return users

    def volume(self, name: str) -> Volume:
        v = self.volumes.get(check_volume_name(name))
        if v is None:
            raise VolumeUnknown(name)
        return v

    def list_volumes(self) -> list[Volume]:
        return sorted(self.volumes.all(), key=lambda v: (v.created, v.name))

    def volume_create(self, name: str | None = None,
                      labels: dict[str, str] | None = None) -> Volume:
        """A named volume (a random name when none is given); NameInUse when
        the name is taken."""
        if name is not None:
            check_volume_name(name)
        with self._lease() as lease, self.lock:
            name = name or secrets.token_hex(32)
            if self.volumes.load(name) is not None:
                raise NameInUse(name, "a volume")
            return self.volumes.create(name, tuple(sorted((labels or {}).items())),
                                       False, lease.token)

    def volume_inspect(self, name: str) -> dict:
        v = self.volume(name)
        return {"type": "volume", "name": v.name, "mountpoint": self.volumes.data_dir(v.name),
                "created": v.created, "labels": dict(v.labels), "anonymous": v.anonymous,
                "containers": sorted(self.volume_users().get(v.name, []))}

    def volume_rm(self, name: str, force: bool = False) -> list[str]:
        """Remove a volume and its data.  VolumeInUse names the containers using
        it, unless `force` removes them first (unmounting them)."""
        done = []
        with self._lease() as lease:
            with self.lock:
                v = self.volume(name)
                users = [c for c in self.containers.all(include_incomplete=True)
                         if v.name in c.volumes()]
                if users and not force:
                    raise VolumeInUse(v.name, sorted(c.name for c in users))
                for c in users:
                    self._refuse_busy(c)
                for c in users:
                    self._umount_all(c)
                    self.containers.begin_delete(c, lease.path, lease.token)
                    done.append(f"removed container {c.name}")
                self.volumes.begin_delete(v, lease.path, lease.token)
                done.append(f"removed volume {v.name}")
        return done

    def diff(self, ref: str) -> list[tuple[str, str]]:
        """A/C/D of the container against its image, but for the mountpoints
        a runtime added for its mounts (`changelist.without_mountpoints`)."""
        c = self.containers.resolve(ref)
        found = self.driver.changes(self.containers.container_dir(c.id), self._lowers_of(c))
        return without_mountpoints(found, set(RUNTIME_MOUNTPOINTS)
                                   | {m.destination for m in c.mounts})

    def _refuse_busy(self, c: Container) -> None:
        """A complete container record carrying a live lease is being
        committed; nobody mounts or removes it meanwhile."""
        if not c.incomplete and fsutil.lease_alive(self.paths.staging, c.lease):
            raise ContainerBusy(c.name, "a commit is reading it")

    def commit(self, ref: str, name: str | None = None,
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
        with self._lease() as lease:
            with self.lock:
                c = self.containers.resolve(ref)
                self._refuse_busy(c)
                entry = self.mounts.get(c.id)
                if entry is not None and not self.driver.can_freeze:
                    raise ContainerMounted(c.name, entry.count,
                                           f"umount it before commit (the {self.driver.name} "
                                           "driver cannot hold a mounted container still)")
                image = self.images.get(c.image)
                if image is None:
                    raise ImageUnknown(c.image)
                self.containers.save(c.id, replace(c, lease=lease.token))
            try:
                mounted = Mounted(entry.mountpoint, entry.pid) if entry else None
                return self._commit(c, mounted, image, names, epoch, lease, progress)
            finally:
                with self.lock:
                    now = self.containers.load(c.id)
                    if now is not None and now.lease == lease.token:
                        self.containers.save(c.id, replace(now, lease=None))

    def _commit(self, c: Container, mounted: Mounted | None, image: Image, names: list[str],
                epoch: int | None, lease: fsutil.Lease, progress: Progress | None) -> Image:
        staged = os.path.join(lease.path, "commit")
        diff = os.path.join(staged, "diff")
        os.makedirs(diff, mode=0o755)
        cdir = self.containers.container_dir(c.id)
        if progress:
            progress.layer_start(0, 1, c.name, None)
        held = self.driver.frozen(cdir, mounted) if mounted else contextlib.nullcontext()
        try:
            with held:
                fsutil.crash_point("commit-reading")
                entries = self.driver.changeset(cdir, self._lowers_of(c), epoch)
                result = build_layer(counted_entries(entries, progress), diff,
                                     self._extract_options(),
                                     os.path.join(staged, layout.SPLIT))
        except UpperNeedsLower as e:
            raise DriverError(self.driver.name, f"{e.path} {e.what}: its content is in a "
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
        with self.lock:
            if self.containers.get_complete(c.id) is None:
                raise ContainerUnknown(c.name)
            if self.layers.get(layer_id) is None:
                self.layers.publish(layer, staged, lease.token)
            fsutil.crash_point("commit-layer-published")
            new = self.images.get(image_id)
            if new is None:
                new = Image(id=image_id, names=(), layers=image.layers + (layer_id,),
                            config=config.decode(), manifest_digest=None, created=created)
                self.images.save(image_id, new)
            return self.images.claim_names(new, names)

    # -- export and save -----------------------------------------------------------

    @contextmanager
    def _pinned(self, layer_ids: tuple[Digest, ...], lease: fsutil.Lease) -> Iterator[None]:
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

    def _layer_tar(self, layer: Layer, lease: fsutil.Lease,
                   warnings: list[str]) -> tuple[Digest, int, Callable[[], Iterator[bytes]]]:
        """(digest, size, chunks) of the layer's tar: rebuilt exactly from its
        tar-split (its digest is the diffID; a changed file raises
        LayerCorrupt), else made anew from its dir (a new digest; warned)."""
        diff = self.layers.diff_dir(layer.id)
        split = self.layers.split_file(layer.id)
        if split is not None:
            return layer.diff_id, layer.tar_size, \
                lambda: tarsplit.replay(split, diff, layer.id.short)
        path = os.path.join(lease.path, f"{layer.id.hex}.tar")
        with open(path, "wb") as f:
            digest, size = write_tar(tree_entries(diff, markers=True), f)
        warnings.append(f"layer {layer.id.short} has no tar-split; its tar was made "
                        f"anew, with diffID {digest} instead of {layer.diff_id}")
        return digest, size, lambda: _file_chunks(path)

    def export(self, ref: str, path: str, epoch: int | None = None,
               progress: Progress | None = None) -> list[str]:
        """Write a tar to `path`: a container's merged tree (mounted for the
        time it takes, unless it is already), or one layer's changeset, byte
        for byte the tar it was made from.  `progress` hears of the content
        bytes (a tree) or tar bytes (a layer) written.  Returns warnings."""
        warnings: list[str] = []
        try:
            c = self.containers.resolve(ref)
        except (ContainerUnknown, BadReference):
            c = None
        if c is not None:
            mountpoint = self.mount(c.id)
            try:
                if progress:
                    progress.layer_start(0, 1, c.name, None)
                with fsutil.atomic_file(path) as f:
                    write_tar(counted_entries(tree_entries(mountpoint, markers=False,
                                                           epoch=epoch), progress), f)
                if progress:
                    progress.layer_done(c)
            finally:
                self.umount(c.id)
            return warnings
        layer = self._resolve_layer(ref)
        if layer is None:
            raise NotFound(ref)
        with self._lease() as lease, self._pinned((layer.id,), lease):
            digest, size, chunks = self._layer_tar(layer, lease, warnings)
            if progress:
                progress.layer_start(0, 1, str(layer.id), size)
            with fsutil.atomic_file(path) as f:
                h = hashlib.sha256()
                for data in counted_chunks(chunks(), progress):
                    h.update(data)
                    f.write(data)
                if Digest(h.hexdigest()) != digest:
                    raise DigestMismatch(f"layer {layer.id.short}", str(digest),
                                         f"sha256:{h.hexdigest()}")
            if progress:
                progress.layer_done(layer)
        return warnings

    def save(self, ref: str, path: str, as_tar: bool | None = None,
             progress: Progress | None = None) -> list[str]:
        """Write the image `ref` as an OCI image layout: a directory (`path`
        is one, or ends with "/") or a tar.  Layers go uncompressed, rebuilt
        from their tar-splits, so the config — and with it the image id and
        every ChainID — is the one imported.  Returns warnings."""
        image = self.images.resolve(ref)
        if as_tar is None:
            as_tar = not (path.endswith("/") or os.path.isdir(path))
        if not as_tar and os.path.isdir(path) and os.listdir(path):
            raise UsageError(f"{path} is not empty")
        warnings: list[str] = []
        with self._lease() as lease, self._pinned(image.layers, lease), \
                open_layout(path, as_tar) as out:
            descs, diff_ids = [], []
            for i, lid in enumerate(image.layers):
                layer = self.layers.get(lid)
                digest, size, chunks = self._layer_tar(layer, lease, warnings)
                if progress:
                    progress.layer_start(i, len(image.layers), str(lid), size)
                out.add_blob(digest, size, counted_chunks(chunks(), progress))
                if progress:
                    progress.layer_done(layer)
                descs.append(descriptor(LAYER_TAR, digest, size))
                diff_ids.append(str(digest))
            config = image.config.encode()
            doc = json.loads(config)
            if doc.get("rootfs", {}).get("diff_ids") != diff_ids:
                doc.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
                config = canonical_json(doc)
                warnings.append(f"image {image.id[:12]} saved with a new config "
                                f"(id {Digest.of_bytes(config).hex[:12]})")
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                        "config": out.add_json(CONFIG, config), "layers": descs}
            mdesc = out.add_json(MANIFEST, manifest)
            out.finish([{**mdesc, "annotations": {REF_NAME: n}} for n in image.names]
                       or [mdesc])
        return warnings

    # -- disk usage and cleanup ------------------------------------------------------

    def _snapshot(self) -> gc.Snapshot:
        """The records as gc sees them; caller holds the lock."""
        containers = list(self.containers.all(include_incomplete=True))
        images = list(self.images.all(include_incomplete=True))
        return gc.Snapshot(
            layers={layer.id: layer for layer in self.layers.all()},
            images=[i for i in images if not i.incomplete],
            containers=[c for c in containers if not c.incomplete],
            volumes=list(self.volumes.all()),
            in_flight=[r for r in containers + images if r.incomplete],
            mounted=set(self.mounts.load()),
            busy={c.id for c in containers if not c.incomplete
                  and fsutil.lease_alive(self.paths.staging, c.lease)},
            container_dir=self.containers.container_dir,
            volume_dir=self.paths.volume_dir)

    def df(self) -> list[gc.Usage]:
        """Images, containers, volumes: total, active, size, reclaimable (bytes
        allocated on disk); the records are read under the lock, containers
        and volumes measured outside it."""
        with self.lock:
            snap = self._snapshot()
        return gc.disk_usage(snap, _measure, self._writable_usage)

    def prune(self, kinds: tuple[str, ...] = gc.KINDS, all: bool = False,
              dry_run: bool = False) -> list[tuple[str, int | None]]:
        """Remove what `gc.plan_prune` plans, in one hold of the lock (records
        taken out, content moved into this command's staging dir), then measure
        and delete the content outside the lock.  (label, bytes freed) per
        item; with `dry_run`, what would be removed and the bytes it holds now."""
        with self._lease() as lease:
            done: list[tuple[gc.Removal, str | None]] = []
            with self.lock:
                plan = gc.plan_prune(self._snapshot(), kinds, all,
                                     all_volumes=all and kinds == ("volumes",))
                for r in plan:
                    if dry_run:
                        done.append((r, self._content_path(r)))
                    else:
                        done.append((r, self._take_out(r, lease)))
                        fsutil.crash_point("pruning")
            return [(r.label, r.size if r.size is not None
                     else (_measure(path) if path else None)) for r, path in done]

    def remove_stale_locks(self) -> list[str]:
        """Remove the per-image and per-layer lock files in staging that no
        command holds (imports leave one per image and layer); their names."""
        removed = []
        with self.lock:
            for name in sorted(os.listdir(self.paths.staging)):
                path = os.path.join(self.paths.staging, name)
                if name.endswith(".lock") and not fsutil.flock_held(path):
                    fsutil.remove_file(path)
                    removed.append(name)
        return removed

    def _content_path(self, r: gc.Removal) -> str | None:
        if r.kind == "container":
            return self.containers.container_dir(r.key)
        if r.kind == "volume":
            return self.paths.volume_dir(r.key)
        return None

    def _take_out(self, r: gc.Removal, lease: fsutil.Lease) -> str | None:
        """Remove one planned item's record; its content lands in the lease's
        dir (its path returned, to measure before the lease removes it)."""
        if r.kind == "container":
            self.containers.begin_delete(self.containers.load(r.key), lease.path,
                                         lease.token)
            return os.path.join(lease.path, r.key)
        if r.kind == "image":
            self.images.delete(r.key)
            return None
        if r.kind == "volume":
            self.volumes.begin_delete(self.volumes.load(r.key), lease.path, lease.token)
            return os.path.join(lease.path, "volume-" + r.key)
        self.layers.begin_delete(Digest(r.key), lease.path, lease.token)
        return None

    # -- whole store -------------------------------------------------------------

    def reset(self) -> list[str]:
        """Unmount every container, then remove the whole store.

        The root is first renamed aside in one step, so an interrupted reset
        leaves either the old store or none (and a `.strata-removing-*` dir
        beside it that a later reset removes)."""
        done = []
        root = self.paths.root
        parent, base = os.path.split(root)
        with self.lock:
            for c in self.containers.all(include_incomplete=True):
                if self.mounts.get(c.id) is not None:
                    self._umount_all(c)
                    done.append(f"unmounted {c.name}")
            fsutil.remove_tree(self.paths.runroot)
            trash = os.path.join(parent, f".{base}.strata-removing-{secrets.token_hex(4)}")
            os.rename(root, trash)
            fsutil.fsync_dir(parent)
        for name in os.listdir(parent):
            if name.startswith(f".{base}.strata-removing-"):
                fsutil.remove_tree(os.path.join(parent, name))
        done.append(f"removed store {root}")
        return done

    def info(self) -> tuple[dict, list[str]]:
        """(facts, warnings): where the store is, its driver, what it holds,
        its limits and this user's usage, and the filesystem under it, with
        a warning for each check it fails (`fsprobe.examine`: a network
        filesystem, no xattrs, no d_type; the probes write in this command's
        staging dir)."""
        with self._lease() as lease:
            fs, warnings = fsprobe.examine(self.paths.root, lease.path)
        usage = self.user_usage()
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
        return [p.message for p in self.problems(verify) if p.severity == checkmod.ERROR]

    def problems(self, verify: bool = False) -> list[checkmod.Problem]:
        """`check.find_problems` under the lock; with `verify`, every layer is
        then rebuilt and hashed outside it, pinned meanwhile."""
        if not verify:
            with self.lock:
                return checkmod.find_problems(self.layers, self.images, self.containers,
                                              self.volumes, self.paths.staging)
        with self._lease() as lease:
            with self.lock:
                found = checkmod.find_problems(self.layers, self.images, self.containers,
                                               self.volumes, self.paths.staging)
                layers = [layer for layer in self.layers.all()
                          if os.path.isdir(self.layers.diff_dir(layer.id))]
            with self._pinned(tuple(layer.id for layer in layers), lease):
                for layer in layers:
                    problem = checkmod.verify_layer(self.layers, layer)
                    if problem is not None:
                        found.append(problem)
        return found

    def repair_problems(self, problems: list[checkmod.Problem]) -> list[str]:
        """Fix what `problems` lists where it can; lines saying what was done
        (and what cannot be done: a container on a damaged layer stays)."""
        done: list[str] = []
        order = ("corrupt-record", "container-no-dir", "container-orphan")
        problems = sorted(problems, key=lambda p: order.index(p.kind)
                          if p.kind in order else len(order))
        with self._lease() as lease:
            with self.lock:
                for p in problems:
                    done += checkmod.repair(p, self.layers, self.images, self.containers,
                                            self.volumes, self.mounts, lease)
                done += self._collect_layers(lease)
        done += self.repair()
        return done


def _push_destination(ref: str, image: Image) -> str:
    """The first of the image's names that names a registry (`localhost/x`,
    `reg.example:5000/x`: the first component has a dot or a colon or is
    localhost, as containers/image decides).  A name like `demo:1` would
    mean docker.io; nobody who named an image so meant to push it there,
    so that is refused (UsageError) rather than guessed."""
    for name in image.names:
        if split_registry(name)[0] is not None:
            return name
    said = f" ({', '.join(image.names)})" if image.names else ""
    raise UsageError(f"image {ref} has no name that names a registry{said}; say where "
                     f"to push it: layers push {ref} REGISTRY/REPOSITORY[:TAG]")


def _measure(path: str) -> int:
    try:
        return fsutil.allocated_size(path)
    except FileNotFoundError:      # removed meanwhile
        return 0


def _remaining(f: BinaryIO) -> int | None:
    """Bytes left to read in `f` when it can tell (a file, a member of a
    tar file), for a progress total; None for a stream."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            yield data


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
