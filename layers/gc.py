"""Disk usage and cleanup, by reachability.

Pure functions over a `Snapshot` of the records (taken by `cleanup` under
the store lock): nothing here touches the disk but through the `measure`
function the caller passes (real allocated bytes of a path, hard links once).

- `disk_usage(snap, measure, writable)`: images, containers, volumes — total,
  active, size, reclaimable — and per-item detail; a container with limits
  also gets its writable layer's usage against them (`writable` measures it).
  A layer's size is the one recorded when it was sealed, so the image part is
  instant; containers and volumes change while they live and are measured.
  An image with lazy layers says how many, and their blob bytes fetched of
  the total (their records').
- `plan_prune(snap, kinds, all)`: what a prune removes, in order: containers
  (unmounted, not busy), then images (dangling, or with `all` every image no
  remaining container uses and none served to podman), then volumes (anonymous and unused, or with `all`
  every unused one), then the layers nothing remaining refers to.  Records
  in flight (incomplete, with a live lease) count as users: nothing they
  refer to is ever planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .digest import Digest
from .records import Container, Image, Layer, Volume

KINDS = ("containers", "images", "volumes")


@dataclass(frozen=True)
class Snapshot:
    layers: dict[Digest, Layer]            # complete layers
    images: list[Image]                    # complete images
    containers: list[Container]            # complete containers
    volumes: list[Volume]                  # complete volumes
    in_flight: list[Container | Image]     # incomplete records of live commands
    mounted: set[str]                      # ids of mounted containers
    busy: set[str]                         # ids of containers being committed
    container_dir: Callable[[str], str]
    volume_dir: Callable[[str], str]
    served: set[str] = field(default_factory=set)   # ids of images podman reads (als.py)


@dataclass(frozen=True)
class Removal:
    kind: str             # "container", "image", "volume", "layer"
    key: str              # container id, image id, volume name, layer ChainID hex
    label: str            # what the user reads
    size: int | None      # known without measuring (layers), else None


@dataclass
class Usage:
    kind: str
    total: int = 0
    active: int = 0
    size: int = 0
    reclaimable: int = 0
    items: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"type": self.kind, "total": self.total, "active": self.active,
                "size": self.size, "reclaimable": self.reclaimable, "items": self.items}


def _layers_of(records) -> set[Digest]:
    out: set[Digest] = set()
    for r in records:
        out.update(r.layers)
    return out


def _volumes_used(containers) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for c in containers:
        for v in c.volumes():
            users.setdefault(v, []).append(c.name)
    return users


def _sum(snap: Snapshot, ids) -> int:
    return sum(snap.layers[i].size for i in ids if i in snap.layers)


def disk_usage(snap: Snapshot, measure: Callable[[str], int],
               writable: Callable[[Container], tuple[int, int]] | None = None
               ) -> list[Usage]:
    """Usage of images, containers and volumes (see the module doc).  A
    container item's "quota": None, or its limits ("bytes", "inodes", None
    for no limit) and what its writable layer uses ("used_bytes",
    "used_inodes", from `writable`)."""
    by_container = _layers_of(snap.containers + [r for r in snap.in_flight
                                                  if isinstance(r, Container)])
    images = Usage("images")
    all_image_layers = _layers_of(snap.images)
    images.total = len(snap.images)
    images.size = _sum(snap, all_image_layers)
    images.reclaimable = _sum(snap, all_image_layers - by_container)
    used_images = {c.image for c in snap.containers}
    images.active = sum(1 for i in snap.images if i.id in used_images)
    for image in sorted(snap.images, key=lambda i: (-i.created, i.id)):
        others = _layers_of(i for i in snap.images if i.id != image.id)
        mine = set(image.layers)
        lazy = [snap.layers[i].lazy for i in mine
                if i in snap.layers and snap.layers[i].lazy is not None]
        images.items.append({
            "id": image.id, "names": list(image.names), "size": _sum(snap, mine),
            "shared": _sum(snap, mine & others), "unique": _sum(snap, mine - others),
            "containers": sum(1 for c in snap.containers if c.image == image.id),
            "lazy": {"layers": len(lazy), "fetched": sum(z.fetched for z in lazy),
                     "total": sum(z.total for z in lazy)} if lazy else None})

    containers = Usage("containers", total=len(snap.containers))
    for c in snap.containers:
        size = measure(snap.container_dir(c.id))
        active = c.id in snap.mounted
        containers.size += size
        containers.active += active
        containers.reclaimable += 0 if active else size
        quota = None
        if c.quota and writable is not None:
            used_bytes, used_inodes = writable(c)
            quota = {"bytes": c.quota.bytes, "inodes": c.quota.inodes,
                     "used_bytes": used_bytes, "used_inodes": used_inodes}
        containers.items.append({"id": c.id, "name": c.name, "image": c.image,
                                 "size": size, "mounted": active, "quota": quota})

    volumes = Usage("volumes", total=len(snap.volumes))
    users = _volumes_used(snap.containers + [r for r in snap.in_flight
                                             if isinstance(r, Container)])
    for v in snap.volumes:
        size = measure(snap.volume_dir(v.name))
        active = bool(users.get(v.name))
        volumes.size += size
        volumes.active += active
        volumes.reclaimable += 0 if active else size
        volumes.items.append({"name": v.name, "anonymous": v.anonymous, "size": size,
                              "containers": sorted(users.get(v.name, []))})
    return [images, containers, volumes]


def plan_prune(snap: Snapshot, kinds: tuple[str, ...], all: bool = False,
               all_volumes: bool | None = None) -> list[Removal]:
    """What pruning `kinds` removes, in the order to remove it (see module doc).
    `all_volumes` (default: `all`) widens the volume prune separately."""
    if all_volumes is None:
        all_volumes = all
    plan: list[Removal] = []
    flying_containers = [r for r in snap.in_flight if isinstance(r, Container)]
    containers = list(snap.containers)
    if "containers" in kinds:
        keep = []
        for c in containers:
            if c.id in snap.mounted or c.id in snap.busy:
                keep.append(c)
            else:
                plan.append(Removal("container", c.id, f"container {c.name}", None))
        containers = keep
    users = containers + flying_containers
    images = list(snap.images)
    if "images" in kinds:
        used = {c.image for c in users} | snap.served
        keep = []
        for image in images:
            if image.id not in used and (all or not image.names):
                label = ",".join(image.names) or "<none>"
                plan.append(Removal("image", image.id, f"image {image.id[:12]} ({label})",
                                    None))
            else:
                keep.append(image)
        images = keep
    if "volumes" in kinds:
        used_volumes = _volumes_used(users)
        for v in snap.volumes:
            if not used_volumes.get(v.name) and (all_volumes or v.anonymous):
                plan.append(Removal("volume", v.name, f"volume {v.name}", None))
    referenced = _layers_of(images + users + [r for r in snap.in_flight
                                              if isinstance(r, Image)])
    for lid, layer in sorted(snap.layers.items()):
        if lid not in referenced:
            plan.append(Removal("layer", lid.hex, f"layer {lid.short}", layer.size))
    return plan
