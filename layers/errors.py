"""Errors of the layer store: one class per kind, each carrying its fields.

Every error a user can cause is a `LayersError`; `cli.py` prints `str(err)`
as one line and exits with `err.exit_code`.  Anything else is a bug and gets
a traceback.  Messages are part of the interface: tests assert them exactly.
"""

from __future__ import annotations

from . import units


class LayersError(Exception):
    """Base of every expected failure.  `str()` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadReference(LayersError):
    """A digest, id or name that is not well formed; never becomes a path."""

    exit_code = 2

    def __init__(self, value: str, reason: str):
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {reason}: {value!r}")


class UsageError(LayersError):
    exit_code = 2


class LayerUnknown(LayersError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f"layer not known: {ref}")


class ImageUnknown(LayersError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f"image not known: {ref}")


class ContainerUnknown(LayersError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f"container not known: {ref}")


class VolumeUnknown(LayersError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f"volume not known: {ref}")


class VolumeInUse(LayersError):
    def __init__(self, volume: str, containers: list[str]):
        self.volume = volume
        self.containers = containers
        super().__init__(
            f"volume {volume} is in use by container(s) {', '.join(containers)}; "
            "remove them first or use -f"
        )


class NotFound(LayersError):
    def __init__(self, ref: str):
        self.ref = ref
        super().__init__(f"no container, image or layer matches {ref}")


class AmbiguousReference(LayersError):
    def __init__(self, ref: str, matches: list[str]):
        self.ref = ref
        self.matches = matches
        super().__init__(f"{ref!r} is ambiguous: matches {', '.join(matches)}")


class NameInUse(LayersError):
    def __init__(self, name: str, owner: str):
        self.name = name
        self.owner = owner
        super().__init__(f"name {name} is already used by {owner}")


class ImageInUse(LayersError):
    def __init__(self, image: str, containers: list[str]):
        self.image = image
        self.containers = containers
        super().__init__(
            f"image {image} is in use by container(s) {', '.join(containers)}; "
            "remove them first or use -f"
        )


class NotServable(LayersError):
    def __init__(self, image: str, reason: str):
        self.image, self.reason = image, reason
        super().__init__(f"image {image} cannot be served to podman: {reason}")


class ImageServed(LayersError):
    def __init__(self, image: str):
        self.image = image
        super().__init__(f"image {image} is served to podman (`layers als rm {image}` first)")


class ContainerMounted(LayersError):
    def __init__(self, container: str, count: int,
                 hint: str = "umount it first or use -f"):
        self.container = container
        self.count = count
        super().__init__(f"container {container} is mounted ({count}x); {hint}")


class ContainerBusy(LayersError):
    def __init__(self, container: str, what: str):
        self.container = container
        self.what = what
        super().__init__(f"container {container} is busy: {what}")


class DigestMismatch(LayersError):
    def __init__(self, what: str, expected: str, got: str):
        self.what = what
        self.expected = expected
        self.got = got
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {got}")


class BadSeekableLayer(LayersError):
    """A seekable (eStargz) layer blob whose TOC or layout we cannot use, or
    a tar that cannot be written as one."""

    def __init__(self, what: str, reason: str):
        self.what = what
        self.reason = reason
        super().__init__(f"seekable layer {what}: {reason}")


class LayerCorrupt(LayersError):
    """A layer's content no longer matches what was recorded for it."""

    def __init__(self, layer: str, path: str, reason: str):
        self.layer = layer
        self.path = path
        self.reason = reason
        super().__init__(f"layer {layer} is corrupt: {path}: {reason}")


class StoreLocked(LayersError):
    def __init__(self, path: str, holder: str, waited: float):
        self.path = path
        self.holder = holder
        self.waited = waited
        super().__init__(
            f"store {path} is locked by {holder}; gave up after {waited:g}s"
        )


class NotAStore(LayersError):
    """A directory we must not write into (foreign store, random files)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"refusing to use {path}: {reason}")


class StoreMismatch(LayersError):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"store {path}: {reason}")


class CorruptRecord(LayersError):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"corrupt record {path}: {reason}")


class UnsafeArchive(LayersError):
    """An archive entry we refuse; names the entry."""

    def __init__(self, entry: str, reason: str):
        self.entry = entry
        self.reason = reason
        super().__init__(f"refusing archive entry {entry!r}: {reason}")


class BadArchive(LayersError):
    """An archive that cannot be read (truncated, bad compression, bad format)."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read {source}: {reason}")


class ConfigError(LayersError):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"configuration {path}: {reason}")


class DriverError(LayersError):
    def __init__(self, driver: str, reason: str):
        self.driver = driver
        self.reason = reason
        super().__init__(f"{driver} driver: {reason}")


class MountFailed(LayersError):
    def __init__(self, driver: str, mountpoint: str, reason: str):
        self.driver = driver
        self.mountpoint = mountpoint
        self.reason = reason
        super().__init__(f"{driver}: cannot mount {mountpoint}: {reason}")


class QuotaExceeded(LayersError):
    """A create that would take a user past `[storage.options] user_quota`."""

    def __init__(self, uid: int, limit: int, used: int, containers: int, asked: int):
        self.uid = uid
        self.limit = limit
        self.used = used
        self.containers = containers
        self.asked = asked
        asks = f"; this container asks {units.size(asked)}" if asked else ""
        super().__init__(f"user_quota exceeded for uid {uid}: limit {units.size(limit)}, "
                         f"in use {units.size(used)} by {containers} container(s){asks}")
