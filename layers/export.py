"""Images and layers going out as tars: `layers export` (a container's
merged tree, or a layer's changeset) and `layers save` (an OCI image
layout); `layer_tar`, a layer's exact tar, which `push` sends too."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterator

from . import fsutil, tarsplit, units
from .archive import write_tar
from .containers import mount, umount
from .digest import Digest
from .errors import BadReference, ContainerUnknown, DigestMismatch, NotFound, UsageError
from .ociwriter import (CONFIG, LAYER_TAR, MANIFEST, REF_NAME, canonical_json, descriptor,
                        open_layout)
from .progress import Progress, counted_chunks, counted_entries
from .records import Image, Layer
from .storecore import StoreCore
from .tarentries import tree_entries


def layer_tar(store: StoreCore, layer: Layer, lease: fsutil.Lease,
              warnings: list[str]) -> tuple[Digest, int, Callable[[], Iterator[bytes]]]:
    """(digest, size, chunks) of the layer's tar: rebuilt exactly from its
    tar-split (its digest is the diffID; a changed file raises
    LayerCorrupt), else made anew from its dir (a new digest; warned).
    UsageError for a lazy layer, whose files are not all there yet."""
    if layer.lazy is not None:
        raise UsageError(f"layer {layer.id.short} is lazy ({units.size(layer.lazy.fetched)} "
                         f"of {units.size(layer.lazy.total)} fetched): its tar is there once "
                         "the fetcher has completed it")
    diff = store.layers.diff_dir(layer.id)
    split = store.layers.split_file(layer.id)
    if split is not None:
        return layer.diff_id, layer.tar_size, \
            lambda: tarsplit.replay(split, diff, layer.id.short)
    path = os.path.join(lease.path, f"{layer.id.hex}.tar")
    with open(path, "wb") as f:
        digest, size = write_tar(tree_entries(diff, markers=True), f)
    warnings.append(f"layer {layer.id.short} has no tar-split; its tar was made "
                    f"anew, with diffID {digest} instead of {layer.diff_id}")
    return digest, size, lambda: _file_chunks(path)


def config_sent(image: Image, diff_ids: list[str], how: str, warnings: list[str]) -> bytes:
    """The image's config as it goes out with layers of `diff_ids`: the one
    recorded, unless a layer had to be made anew (no tar-split: a new
    diffID), which makes a new config and so a new image id (warned)."""
    config = image.config.encode()
    doc = json.loads(config)
    if doc.get("rootfs", {}).get("diff_ids") != diff_ids:
        doc.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
        config = canonical_json(doc)
        warnings.append(f"image {image.id[:12]} {how} with a new config "
                        f"(id {Digest.of_bytes(config).hex[:12]})")
    return config


def export(store: StoreCore, ref: str, path: str, epoch: int | None = None,
           progress: Progress | None = None) -> list[str]:
    """Write a tar to `path`: a container's merged tree (mounted for the
    time it takes, unless it is already), or one layer's changeset, byte
    for byte the tar it was made from.  `progress` hears of the content
    bytes (a tree) or tar bytes (a layer) written.  Returns warnings."""
    warnings: list[str] = []
    try:
        c = store.containers.resolve(ref)
    except (ContainerUnknown, BadReference):
        c = None
    if c is not None:
        mountpoint = mount(store, c.id)
        try:
            if progress:
                progress.layer_start(0, 1, c.name, None)
            with fsutil.atomic_file(path) as f:
                write_tar(counted_entries(tree_entries(mountpoint, markers=False,
                                                       epoch=epoch), progress), f)
            if progress:
                progress.layer_done(c)
        finally:
            umount(store, c.id)
        return warnings
    layer = store.resolve_layer(ref)
    if layer is None:
        raise NotFound(ref)
    with store.lease() as lease, store.pinned((layer.id,), lease):
        digest, size, chunks = layer_tar(store, layer, lease, warnings)
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


def save(store: StoreCore, ref: str, path: str, as_tar: bool | None = None,
         progress: Progress | None = None) -> list[str]:
    """Write the image `ref` as an OCI image layout: a directory (`path`
    is one, or ends with "/") or a tar.  Layers go uncompressed, rebuilt
    from their tar-splits, so the config — and with it the image id and
    every ChainID — is the one imported.  Returns warnings."""
    image = store.images.resolve(ref)
    if as_tar is None:
        as_tar = not (path.endswith("/") or os.path.isdir(path))
    if not as_tar and os.path.isdir(path) and os.listdir(path):
        raise UsageError(f"{path} is not empty")
    warnings: list[str] = []
    with store.lease() as lease, store.pinned(image.layers, lease), \
            open_layout(path, as_tar) as out:
        descs, diff_ids = [], []
        for i, lid in enumerate(image.layers):
            layer = store.layers.get(lid)
            digest, size, chunks = layer_tar(store, layer, lease, warnings)
            if progress:
                progress.layer_start(i, len(image.layers), str(lid), size)
            out.add_blob(digest, size, counted_chunks(chunks(), progress))
            if progress:
                progress.layer_done(layer)
            descs.append(descriptor(LAYER_TAR, digest, size))
            diff_ids.append(str(digest))
        config = config_sent(image, diff_ids, "saved", warnings)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST,
                    "config": out.add_json(CONFIG, config), "layers": descs}
        mdesc = out.add_json(MANIFEST, manifest)
        out.finish([{**mdesc, "annotations": {REF_NAME: n}} for n in image.names]
                   or [mdesc])
    return warnings


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            yield data
