"""Checking a store: records against the disk, both ways, and layer contents
against their diffIDs.

`find_problems(store)` compares, under the store lock: records without
content (a layer without its diff dir, a container without its dir, a volume
without its data dir), content without records (layer, container and volume
dirs nobody records), records that cannot be read, references to what is not
there (an image's layers, a container's image and volumes), leftovers of
interrupted work (incomplete records and staging dirs whose command died).
In-flight work of a live command is not a problem.

`verify_layer(…)` rebuilds a layer's tar from its tar-split and hashes it: a
mismatch names the layer and, through the per-file checksums, the file.
It is slow; `problems(store, verify=True)` runs it outside the lock, the
layers pinned.

`repair(problem, …)` fixes one problem where it can, under the lock
`repair_problems` holds: corrupt records go; a damaged layer goes with the images using
it (unless a container uses them: that is said, not done); a record without
content goes; content without a record goes, but for a volume's data, which
is adopted; a missing volume or data dir is made again, empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import fsutil, lazylayer, tarsplit
from .digest import Digest
from .errors import LayerCorrupt, LayersError
from .layerstore import LayerStore
from .records import Layer
from .storecore import StoreCore

ERROR, NOTE = "error", "note"


@dataclass(frozen=True)
class Problem:
    kind: str             # what is wrong (the repair depends on it)
    subject: str          # layer ChainID hex, image id, container id, volume name, path
    message: str
    severity: str = ERROR


def find_problems(store: StoreCore) -> list[Problem]:
    """Everything inconsistent between the records and the disk (module doc)."""
    out: list[Problem] = []
    layers, images, containers, volumes = (store.layers, store.images, store.containers,
                                           store.volumes)
    staging, dead = store.paths.staging, store.dead
    all_layers = {x.id: x for x in layers.all(include_incomplete=True)}
    all_images = list(images.all(include_incomplete=True))
    all_containers = list(containers.all(include_incomplete=True))
    all_volumes = {v.name: v for v in volumes.all(include_incomplete=True)}
    for rs in (layers, images, containers, volumes):
        out += [Problem("corrupt-record", e.path, str(e)) for e in rs.corrupt]

    for layer in all_layers.values():
        if dead(layer):
            out.append(Problem("incomplete", layer.id.hex,
                               f"layer {layer.id.short} is incomplete"))
        elif not layer.incomplete and not os.path.isdir(layers.diff_dir(layer.id)):
            out.append(Problem("layer-no-content", layer.id.hex,
                               f"layer {layer.id.short} has no content"))
    for path in layers.orphan_dirs():
        out.append(Problem("layer-orphan", path,
                           f"layer dir {os.path.basename(path)} has no record"))

    refs: set[Digest] = set()
    for image in all_images:
        refs.update(image.layers)
        if dead(image):
            out.append(Problem("incomplete", image.id, f"image {image.id[:12]} is incomplete"))
        elif not image.incomplete:
            for lid in image.layers:
                if lid not in all_layers:
                    out.append(Problem("image-missing-layer", image.id,
                                       f"image {image.id[:12]} lacks layer {lid.short}"))
    complete_images = {i.id for i in all_images if not i.incomplete}
    for c in all_containers:
        refs.update(c.layers)
        if dead(c):
            out.append(Problem("incomplete", c.id, f"container {c.name} is incomplete"))
            continue
        if c.incomplete:
            continue
        if c.image not in complete_images:
            out.append(Problem("container-missing-image", c.id,
                               f"container {c.name} uses missing image {c.image[:12]}"))
        if not os.path.isdir(containers.container_dir(c.id)):
            out.append(Problem("container-no-dir", c.id, f"container {c.name} has no dir"))
        for lid in c.layers:
            if lid not in all_layers:
                out.append(Problem("container-missing-layer", c.id,
                                   f"container {c.name} lacks layer {lid.short}"))
        for vname in sorted(c.volumes()):
            if vname not in all_volumes:
                out.append(Problem("container-missing-volume", vname,
                                   f"container {c.name} uses missing volume {vname}"))
    known = {c.id for c in all_containers}
    for name in sorted(os.listdir(containers.dir)):
        path = os.path.join(containers.dir, name)
        if os.path.isdir(path) and name not in known and not fsutil.is_tmp_name(name):
            out.append(Problem("container-orphan", path,
                               f"container dir {name} has no record"))
    for lid, layer in all_layers.items():
        if lid not in refs and not layer.incomplete:
            out.append(Problem("layer-unreferenced", lid.hex,
                               f"layer {lid.short} is not referenced"))

    for v in all_volumes.values():
        if dead(v):
            out.append(Problem("incomplete", v.name, f"volume {v.name} is incomplete"))
        elif not v.incomplete and not os.path.isdir(volumes.data_dir(v.name)):
            out.append(Problem("volume-no-dir", v.name, f"volume {v.name} has no data dir"))
    for name in volumes.orphan_dirs():
        out.append(Problem("volume-orphan", name, f"volume dir {name} has no record"))

    for name in sorted(os.listdir(staging)):
        if not name.endswith(".lock") and not fsutil.lease_alive(staging, name):
            out.append(Problem("staging-leftover", name, f"staging leftover {name}"))
    return out


def verify_layer(layers: LayerStore, layer: Layer) -> Problem | None:
    """Rebuild the layer's tar and compare its hash with the diffID; a lazy
    layer's complete files are checked against its TOC instead, and its
    incompleteness is a note, not damage."""
    if layer.lazy is not None:
        return _verify_lazy(layers, layer)
    split = layers.split_file(layer.id)
    if split is None:
        return Problem("unverifiable", layer.id.hex,
                       f"layer {layer.id.short} cannot be verified: it has no tar-split",
                       NOTE)
    try:
        got = tarsplit.rebuilt_digest(split, layers.diff_dir(layer.id), layer.id.short)
    except LayerCorrupt as e:
        return Problem("layer-corrupt", layer.id.hex, str(e))
    if got != layer.diff_id:
        return Problem("layer-corrupt", layer.id.hex,
                       f"layer {layer.id.short} is corrupt: its tar hashes to {got}, "
                       f"not its diffID {layer.diff_id}")
    return None


def _verify_lazy(layers: LayerStore, layer: Layer) -> Problem:
    where = layer.id.short
    diff = layers.diff_dir(layer.id)
    try:
        index = lazylayer.load_index(layers.paths.layer_toc(layer.id), layer.lazy.toc_digest,
                                     where)
        bad = lazylayer.verify_complete(diff, index)
        done = lazylayer.completeness(diff, index)
    except (LayersError, OSError) as e:
        return Problem("layer-corrupt", layer.id.hex,
                       f"layer {where} is lazy and its table of contents is unusable: {e}")
    if bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return Problem("layer-corrupt", layer.id.hex,
                       f"layer {where} is corrupt: {path}: {reason}{more}")
    return Problem("lazy", layer.id.hex,
                   f"layer {where} is lazy: {done['files_complete']} of {done['files']} files "
                   f"fetched and verified against its table of contents", NOTE)


def repair(p: Problem, store: StoreCore, lease: fsutil.Lease) -> list[str]:
    """Fix one problem where it can (the caller holds the store lock); lines
    saying what was done, or why not (a container on a damaged layer stays)."""
    layers, images, containers, volumes = (store.layers, store.images, store.containers,
                                           store.volumes)
    kind = p.kind
    if kind == "corrupt-record":
        fsutil.remove_file(p.subject)
        return [f"removed corrupt record {p.subject}"]
    if kind in ("layer-no-content", "layer-corrupt"):
        lid = Digest(p.subject)
        out = []
        for image in list(images.all()):
            if lid in image.layers:
                users = [c.name for c in containers.all() if c.image == image.id]
                if users:
                    out.append(f"kept image {image.id[:12]}: container(s) "
                               f"{', '.join(users)} use it; remove them")
                    continue
                images.delete(image.id)
                out.append(f"removed image {image.id[:12]} (damaged layer {lid.short})")
        if not any(lid in r.layers for r in list(images.all())
                   + list(containers.all())):
            layers.begin_delete(lid, lease.path, lease.token)
            out.append(f"removed damaged layer {lid.short}")
        return out
    if kind == "image-missing-layer":
        if any(c.image == p.subject for c in containers.all()):
            return [f"kept image {p.subject[:12]}: containers use it"]
        images.delete(p.subject)
        return [f"removed image {p.subject[:12]} (a layer is missing)"]
    if kind == "container-no-dir":
        c = containers.load(p.subject)
        if c is not None:
            store.mounts.remove(c.id)
            containers.delete(c.id)
            return [f"removed container {c.name} (its dir was gone)"]
    if kind in ("container-orphan", "layer-orphan"):
        fsutil.remove_tree(p.subject)
        return [f"removed {p.subject}"]
    if kind == "container-missing-volume":
        if volumes.load(p.subject) is None:
            volumes.create(p.subject, (), False, lease.token)
            return [f"recreated missing volume {p.subject} (empty)"]
    if kind == "volume-no-dir":
        os.makedirs(volumes.data_dir(p.subject), mode=0o755, exist_ok=True)
        return [f"recreated the data dir of volume {p.subject} (empty)"]
    if kind == "volume-orphan":
        volumes.adopt(p.subject)
        return [f"adopted volume dir {p.subject} as a named volume"]
    if kind == "layer-unreferenced":
        layers.begin_delete(Digest(p.subject), lease.path, lease.token)
        return [f"removed unreferenced layer {p.subject[:12]}"]
    return []


def problems(store: StoreCore, verify: bool = False) -> list[Problem]:
    """`find_problems` under the lock; with `verify`, every layer is
    then rebuilt and hashed outside it, pinned meanwhile."""
    if not verify:
        with store.lock:
            return find_problems(store)
    with store.lease() as lease:
        with store.lock:
            found = find_problems(store)
            layers = [layer for layer in store.layers.all()
                      if os.path.isdir(store.layers.diff_dir(layer.id))]
        with store.pinned(tuple(layer.id for layer in layers), lease):
            for layer in layers:
                problem = verify_layer(store.layers, layer)
                if problem is not None:
                    found.append(problem)
    return found


def repair_problems(store: StoreCore, problems: list[Problem]) -> list[str]:
    """Fix what `problems` lists where it can; lines saying what was done
    (and what cannot be done: a container on a damaged layer stays)."""
    done: list[str] = []
    order = ("corrupt-record", "container-no-dir", "container-orphan")
    problems = sorted(problems, key=lambda p: order.index(p.kind)
                      if p.kind in order else len(order))
    with store.lease() as lease:
        with store.lock:
            for p in problems:
                done += repair(p, store, lease)
            done += store.collect_layers(lease)
    done += store.repair()
    return done
