"""Bringing images in: `layers import` (files, archives, layouts) and
`layers pull` (a registry).

Every layer goes the same way: its blob is streamed, decompressed, hashed
and extracted into this command's staging dir (`_extract`: blob digest and
diffID verified), then published under the store lock
(`LayerStore.publish`).  An image with a config is recorded incomplete
first, so that a failure leaves nothing visible; a pull parks each layer
it extracted (`parkedstore.py`) and publishes them all with the image.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from . import estargz, fsutil, layout, lazylayer
from .archive import extract_layer
from .digest import Digest, HashingReader, chain_ids
from .errors import BadArchive, BadSeekableLayer, DigestMismatch, LayerUnknown, UsageError
from .progress import Progress
from .records import Image, LazySource, Layer, parse_image_name, replace
from .registry.blobinfo import BlobInfoCache
from .registry.parallel import run_bounded
from .registry.session import LayerTransfer, PullReport, RegistryOptions, open_pull
from .source import ImageSource, LayerBlob, open_source
from .storecore import StoreCore


def import_path(store: StoreCore, path: str | list[str], name: str | None = None,
                progress: Progress | None = None) -> list[Image]:
    """Import every image at `path` (see `source.py`); returns them.
    Several paths: layer tars, bottom first, stacked into one image.

    `name` (NAME[:TAG]) names the image; only for a single image.
    Raises DigestMismatch, UnsafeArchive, BadArchive; on failure nothing of
    the import stays visible.
    """
    names = [parse_image_name(name)] if name else []
    before = store.device_files
    with open_source(path) as sources:
        if names and len(sources) > 1:
            raise BadArchive(path, f"holds {len(sources)} images; --name needs one")
        images = [import_source(store, src, names or src.names, progress)
                  for src in sources]
    kept = store.device_files - before
    if kept:
        what = f"{kept} device nodes" if kept > 1 else "1 device node"
        store.notes.append(
            f"{what} kept as empty files with type, numbers, owner and mode in "
            f"{layout.OVERRIDE_STAT_XATTR} (no device can be made rootless); "
            "fsd mounts show them as devices")
    return images


def import_source(store: StoreCore, src: ImageSource, names: list[str],
                  progress: Progress | None = None) -> Image:
    """Import one image of an opened source under `names` (parsed)."""
    with store.lease() as lease:
        if src.config is None:
            return _import_bare(store, src, names, lease, progress)
        image_id = Digest.of_bytes(src.config).hex
        # Two imports of one image: the second waits, then finds it done.
        with fsutil.exclusive_flock(store.paths.image_import_lock(image_id)):
            return _ingest(store, src, image_id, names, lease, progress)[0]


def _ingest(store: StoreCore, src: ImageSource, image_id: str, names: list[str],
            lease: fsutil.Lease, progress: Progress | None, park: bool = False,
            jobs: int = 1, abort: threading.Event | None = None,
            stage=None) -> tuple[Image, list[str]]:
    """The pipeline of an image with a config, for import and pull alike:
    the image recorded incomplete → each layer made present (`_ensure_layer`,
    `jobs` at a time) → the image complete and named, in one lock hold
    with the publishing of what was parked.  On any failure the image
    record goes, and with it every layer nothing else refers to.  The image
    and each layer's outcome ("present", "parked", "fetched", "lazy").
    `stage` makes a missing layer in staging (default `_extract`)."""
    chain = chain_ids(src.diff_ids)
    with store.lock:
        existing = store.images.get(image_id)
        if existing is not None:
            return store.images.claim_names(existing, names), ["present"] * len(chain)
        image = Image(id=image_id, names=(), layers=tuple(chain),
                      config=src.config.decode(), manifest_digest=src.manifest_digest,
                      created=time.time(), incomplete=True, lease=lease.token)
        store.images.save(image_id, image)
    fsutil.crash_point("image-recorded")
    try:
        calls = [functools.partial(_ensure_layer, store, blob, i, chain, src.diff_ids, lease,
                                   progress, park, stage or _extract)
                 for i, blob in enumerate(src.layers)]
        outcomes = run_bounded(jobs, calls, abort)
        fsutil.crash_point("pull-parked" if park else "layers-done")
        with store.lock:
            if park:
                _publish_parked(store, chain, src.diff_ids, lease)
            store.images.save(image_id, replace(image, incomplete=False, lease=None))
            return store.images.claim_names(store.images.get(image_id), names), outcomes
    except BaseException:
        with store.lock:
            store.images.delete(image_id)
            store.collect_layers(lease)
        raise


def _ensure_layer(store: StoreCore, blob: LayerBlob, index: int, chain: list[Digest],
                  diff_ids: list[Digest], lease: fsutil.Lease, progress: Progress | None,
                  park: bool, stage) -> str:
    """Make layer `index` present in the store, or with `park` present or
    parked: "present", "parked", "fetched" or "lazy".  It is made by `stage`
    (`_extract`, `_stage_lazy`) in this command's staging dir, then published
    under the store lock, or parked without it (a pull runs this on its
    transfer threads)."""
    lid, total = chain[index], len(chain)
    parent = chain[index - 1] if index else None

    def found() -> str | None:
        if store.layers.get(lid) is not None:
            return "present"
        if park and store.parked.find(lid, diff_ids[index], parent) is not None:
            return "parked"
        return None

    outcome = found()
    if outcome is None:
        # One extraction per layer across processes: a second one waits
        # here, outside the store lock, then finds the layer there.
        with fsutil.exclusive_flock(store.paths.layer_extract_lock(lid)):
            outcome = found()
            if outcome is None:
                staged = os.path.join(lease.path, lid.hex)
                layer = stage(store, blob, index, total, staged, progress,
                              parent=parent, layer_id=lid)
                if park:
                    store.parked.park(layer, staged, lease.token)
                    fsutil.crash_point("pull-layer-parked")
                else:
                    fsutil.crash_point("extracted")
                    with store.lock:
                        if store.layers.get(lid) is None:
                            store.layers.publish(layer, staged, lease.token)
                if progress:
                    progress.layer_done(layer)
                return "lazy" if layer.lazy else "fetched"
    if progress:
        progress.layer_start(index, total, blob.where, blob.size)
        progress.layer_done(None)
    return outcome


def _publish_parked(store: StoreCore, chain: list[Digest], diff_ids: list[Digest],
                    lease: fsutil.Lease) -> None:
    """Move every parked layer of `chain` into the store (caller holds the
    lock); one that another pull published meanwhile is dropped."""
    for i, lid in enumerate(chain):
        if store.layers.get(lid) is not None:
            store.parked.drop(lid)
            continue
        layer = store.parked.find(lid, diff_ids[i], chain[i - 1] if i else None)
        if layer is None:
            raise LayerUnknown(f"{lid} (parked by this pull, then gone)")
        store.layers.publish(layer, store.parked.content_dir(lid), lease.token)
        store.parked.forget(lid)


def _extract(store: StoreCore, blob: LayerBlob, index: int, total: int, staged: str,
             progress: Progress | None, parent: Digest | None,
             layer_id: Digest | None) -> Layer:
    """Extract `blob` into `staged/diff`, verify it; the Layer to publish."""
    diff = os.path.join(staged, "diff")
    os.makedirs(diff, mode=0o755)
    options = store.extract_options()
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
        got = _blob_digest(blob) if blob.digest is not None else None
        if got is not None and got != blob.digest:
            raise DigestMismatch(what, str(blob.digest), str(got)) from None
        raise
    if blob.digest is not None and blob.digest != result.blob_digest:
        raise DigestMismatch(what, str(blob.digest), str(result.blob_digest))
    if blob.diff_id is not None and blob.diff_id != result.diff_id:
        raise DigestMismatch(f"{what} diffID", str(blob.diff_id), str(result.diff_id))
    store.device_files += result.device_files
    return Layer(id=layer_id or result.diff_id, diff_id=result.diff_id, parent=parent,
                 compressed_digest=result.blob_digest if result.compression else None,
                 created=time.time(), tar_size=result.tar_size,
                 size=fsutil.allocated_size(staged))


@dataclass
class Seekable:
    """How a pull treats seekable layers (`_stage_seekable`): lazily
    (`origin` makes their records' LazySource) or completed at once, either
    way reusing the files the store holds (`local`); `saved` gathers, per
    blob, the blob bytes not fetched thanks to that."""
    lazy: bool
    origin: Callable[..., LazySource]
    local: dict = field(default_factory=dict)
    saved: dict[Digest, int] = field(default_factory=dict)


def _stage_seekable(how: Seekable, store: StoreCore, blob: LayerBlob, index: int,
                    total: int, staged: str, progress: Progress | None,
                    parent: Digest | None, layer_id: Digest) -> Layer:
    """A layer of a seekable blob (its TOC digest annotated) staged from its
    table of contents: footer, then TOC by range requests, the TOC checked
    against the annotation, the placeholder tree built from it, the TOC and
    the contents index kept (lazylayer.py), the files the store holds
    cloned (`lazylayer.reuse`).  Lazily: the record says where the rest is
    (`how.origin(blob=…)`).  Otherwise the rest is fetched (`lazylayer.fill`)
    and the layer finished: its rebuilt tar checked against the diffID.  A
    layer with nothing to fetch is finished at once either way.  Any other blob,
    one of another seekable form included, is extracted whole (`_extract`)."""
    if blob.toc_digest is None or blob.read_range is None or blob.size is None \
            or blob.size <= estargz.FOOTER_SIZE:
        return _extract(store, blob, index, total, staged, progress, parent, layer_id)
    what = f"layer {index + 1}/{total} ({blob.where})"
    if progress:
        progress.layer_start(index, total, blob.where, None)
    tail = blob.read_range(blob.size - estargz.FOOTER_SIZE, blob.size)
    try:
        offset = estargz.parse_footer(tail)
    except ValueError as e:
        raise BadArchive(what, f"annotated with a TOC digest but not seekable ({e})") from None
    if not 0 <= offset < blob.size - estargz.FOOTER_SIZE:
        raise BadArchive(what, f"its footer points outside the blob ({offset})")
    region = blob.read_range(offset, blob.size - estargz.FOOTER_SIZE)
    try:
        toc = estargz.parse_toc_region(region, blob.toc_digest)
    except BadSeekableLayer:
        # Not this store's seekable form: the eStargz spec's own (its TOC a tar
        # entry, as stargz tooling writes it) changes the tar, so it holds no
        # tar-split to rebuild the layer's exact tar from.  The blob is still a
        # gzip layer: pulled whole, and checked as any.
        return _extract(store, blob, index, total, staged, progress, parent, layer_id)
    content = lazylayer.LayerIndex(toc, layer_id.short)
    diff = os.path.join(staged, layout.LAYER_DIFF)
    os.makedirs(diff, mode=0o755)
    options = store.extract_options()
    lazylayer.build_placeholders(content, diff, options, store.paths.fetcher_socket)
    fsutil.atomic_write(os.path.join(staged, layout.TOC), region)
    lazylayer.write_contents(content, os.path.join(staged, layout.CONTENTS))
    lazy = how.origin(blob=blob.digest, toc_digest=blob.toc_digest, total=blob.size,
                      fetched=len(tail) + len(region))
    reused = set(lazylayer.reuse(diff, content, how.local, options))
    how.saved[blob.digest] = sum(c.blob_end - c.blob_start for p in reused
                                 for c in content.files[p].chunks)
    waiting = [p for p in content.files if p not in reused]    # the rest: all still marked
    if not how.lazy:
        lazylayer.fill(diff, content, waiting, blob.read_range, options,
                       in_flight=lazylayer.RANGES_IN_FLIGHT)
    if not how.lazy or not waiting:
        lazylayer.finish(diff, content, blob.diff_id, os.path.join(staged, layout.SPLIT))
        lazy = None
    return Layer(id=layer_id, diff_id=blob.diff_id, parent=parent,
                 compressed_digest=blob.digest, created=time.time(),
                 tar_size=content.skeleton.size, size=fsutil.allocated_size(staged),
                 lazy=lazy)


def _blob_digest(blob: LayerBlob) -> Digest:
    with blob.open() as f:
        reader = HashingReader(f)
        reader.drain()
    return reader.digest()


def _import_bare(store: StoreCore, src: ImageSource, names: list[str], lease: fsutil.Lease,
                 progress: Progress | None) -> Image:
    """Bare layer tars, bottom first: extract first (their diffIDs are their
    identity), then publish the new layers and the image in one lock hold."""
    staged: list[tuple[Layer, str]] = []
    parent: Digest | None = None
    for i, blob in enumerate(src.layers):
        path = os.path.join(lease.path, f"bare-{i}")
        layer = _extract(store, blob, i, len(src.layers), path, progress,
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
    with store.lock:
        for layer, path in staged:
            if store.layers.get(layer.id) is None:
                store.layers.publish(layer, path, lease.token)
        image = store.images.get(image_id)
        if image is None:
            image = Image(id=image_id, names=(),
                          layers=tuple(layer.id for layer, _ in staged),
                          config=config.decode(), manifest_digest=None,
                          created=time.time())
            store.images.save(image_id, image)
        return store.images.claim_names(image, names)


def pull(store: StoreCore, ref: str, options: RegistryOptions, name: str | None = None,
         progress: Progress | None = None, lazy: bool = False) -> PullReport:
    """Pull the image `ref` names from its registry (or a mirror: see
    `registry/session.py`); record it under that name (or `name`).

    Only the layers the store lacks are fetched, `options.jobs` at a time.
    Each goes through `_extract` — the extraction `import` uses: streamed,
    decompressed, hashed, blob digest and diffID verified — into this
    command's staging dir, then is parked (`parkedstore.py`).  When
    all are there, the parked layers are published and the image recorded
    in one hold of the lock.  An interrupted pull leaves no layer and no
    image visible; the layers it finished stay parked for the next pull.
    Raises DigestMismatch, BadArchive, UnsafeArchive, the registry errors.

    With `lazy`, a seekable layer is pulled lazily (`_stage_lazy`: its
    table of contents only) and the store's fetcher is started to complete
    it; only the fuse driver can serve such a layer (fsd asks the fetcher
    for a file before it opens it), so another refuses `lazy` at once.
    """
    if lazy and store.driver.name != "fuse":
        raise UsageError(f"pull --lazy needs the fuse driver (fsd fetches a lazy file when "
                         f"it is opened); the {store.driver.name} driver reads layer dirs "
                         "directly: pull without --lazy")
    names = [parse_image_name(name)] if name else None
    started = time.monotonic()
    store.parked.expire()
    with open_pull(ref, options) as pulled, store.lease() as lease:
        remote = pulled.remote
        src = remote.source
        image_id = Digest.of_bytes(src.config).hex
        how = Seekable(lazy, functools.partial(
            LazySource, registry=remote.reference.registry,
            repository=remote.reference.repository, insecure=not pulled.client.verify,
            cert_dir=options.cert_dir))
        if any(b.toc_digest for b in src.layers):
            how.local = lazylayer.local_contents(
                (store.layers.diff_dir(layer.id), store.paths.layer_contents(layer.id))
                for layer in store.layers.all())
        stage = functools.partial(_stage_seekable, how)
        with fsutil.exclusive_flock(store.paths.image_import_lock(image_id)):
            image, outcomes = _ingest(store, src, image_id,
                                      src.names if names is None else names, lease,
                                      progress, park=True, jobs=options.jobs,
                                      abort=pulled.abort, stage=stage)
        # this pull's lazy layers, or an earlier pull's, to complete or retry
        lazylayer.start_fetcher(store.paths, store.config.root, store.config.runroot,
                                map(store.layers.get, image.layers), wait=False)
        cache = BlobInfoCache(store.paths.blobinfo)
        for blob, media in zip(src.layers, remote.layer_media_types):
            cache.record(blob.digest, blob.size, media, blob.diff_id, remote.reference.name)
        cache.save()
        chain = chain_ids(src.diff_ids)
        return PullReport(
            reference=str(pulled.asked), found_at=str(remote.reference),
            image_id=image.id, names=image.names, manifest_digest=src.manifest_digest,
            layers=[LayerTransfer(i, chain[i], b.digest, b.size, outcomes[i],
                                  remote.received.get(b.digest, 0), how.saved.get(b.digest, 0))
                    for i, b in enumerate(src.layers)],
            received=remote.bytes_received, seconds=time.monotonic() - started,
            mirrors_passed=pulled.mirrors_passed)


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
