"""The store's records: frozen dataclasses with a versioned JSON codec.

Every record carries `incomplete` and `lease`: a record is written with
`incomplete=True` and the lease token of the command doing the work before the
work starts (creation or deletion), and rewritten without it when the work is
done.  A reader treats an incomplete record as absent; a later command whose
lease check finds the owner dead removes its leftovers.

Names: images are `NAME[:TAG]` (tag defaults to `latest`) in the grammar of
OCI references; containers and volumes are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
A container's mounts (`MountSpec`) are parsed from podman's `-v`/`--tmpfs`
forms here; its limits (`Quota`) and the uid that created it (`owner`) are
kept for the driver and for the per-user quota.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Type, TypeVar

from .digest import Digest, check_id
from .errors import BadReference, CorruptRecord
from .layout import check_volume_name

SCHEMA = 1

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_CONTAINER_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")


def parse_image_name(text: str) -> str:
    """`name[:tag]` → `name:tag` (tag `latest` when absent), or BadReference."""
    if not isinstance(text, str) or len(text) > 255:
        raise BadReference(str(text), "image name")
    name, tag = text, "latest"
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        name, tag = text[:colon], text[colon + 1:]
    domain = name.split("/", 1)[0] if "/" in name else ""
    if (not _NAME_RE.fullmatch(name) or not _TAG_RE.fullmatch(tag)
            or (domain and not re.fullmatch(_DOMAIN, domain))):
        raise BadReference(text, "image name")
    return f"{name}:{tag}"


def check_container_name(text: str) -> str:
    if not isinstance(text, str) or not _CONTAINER_RE.fullmatch(text) \
            or re.fullmatch(r"[0-9a-f]{64}", text):
        raise BadReference(str(text), "container name")
    return text


@dataclass(frozen=True)
class LazySource:
    """Where a lazy layer's missing content is (see lazylayer.py): the
    seekable blob `blob` in `repository` at the registry `registry`
    (its API host, reached over plain HTTP or unverified TLS when
    `insecure`), with the table of contents `toc_digest`.  `fetched` of the
    blob's `total` bytes have come so far (footer and TOC included);
    `error` is the last failure that stopped its completion, if any."""
    registry: str
    repository: str
    blob: Digest
    toc_digest: Digest
    total: int
    fetched: int = 0
    insecure: bool = False
    cert_dir: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Layer:
    id: Digest                       # ChainID
    diff_id: Digest
    parent: Digest | None
    compressed_digest: Digest | None
    created: float
    tar_size: int                    # uncompressed tar bytes
    size: int                        # real allocated bytes of the content
    incomplete: bool = False
    lease: str | None = None
    lazy: LazySource | None = None   # content still (partly) in a registry


@dataclass(frozen=True)
class Image:
    id: str                          # hex of the config digest
    names: tuple[str, ...]
    layers: tuple[Digest, ...]       # ChainIDs, bottom first
    config: str                      # the config JSON, byte-exact as imported
    manifest_digest: Digest | None
    created: float
    incomplete: bool = False
    lease: str | None = None

    @property
    def top_layer(self) -> Digest | None:
        return self.layers[-1] if self.layers else None


@dataclass(frozen=True)
class MountSpec:
    """One mount of a container, as podman's `-v`/`--tmpfs` give it."""
    type: str                        # "volume", "bind" or "tmpfs"
    source: str | None               # volume name, host path; None for tmpfs
    destination: str                 # absolute, normalized path in the container
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quota:
    """Limits of a container's writable layer (None: no limit): allocated
    bytes and objects, hard links once, as fsd's quota_bytes=/quota_inodes=
    count them.  Only a driver that can enforce them accepts them."""
    bytes: int | None = None
    inodes: int | None = None

    def __bool__(self) -> bool:
        return self.bytes is not None or self.inodes is not None


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str                       # image id
    layers: tuple[Digest, ...]       # the image's ChainIDs, bottom first
    driver: str
    created: float
    incomplete: bool = False
    lease: str | None = None         # on a complete record: busy while alive
    mounts: tuple[MountSpec, ...] = ()
    quota: Quota = Quota()
    owner: int | None = None         # uid that created it; None: the store's owner

    def volumes(self) -> set[str]:
        return {m.source for m in self.mounts if m.type == "volume" and m.source}


@dataclass(frozen=True)
class Volume:
    name: str
    created: float
    labels: tuple[tuple[str, str], ...] = ()    # sorted (key, value) pairs
    anonymous: bool = False          # made for one container by `-v /path`
    incomplete: bool = False
    lease: str | None = None


R = TypeVar("R", Layer, Image, Container, Volume)

_MOUNT_OPTIONS = {"ro", "rw", "nosuid", "nodev", "noexec", "suid", "dev", "exec",
                  "bind", "rbind"}
_TMPFS_OPTION = re.compile(r"size=[0-9]+[kmgKMG]?|mode=[0-7]{3,4}|nr_inodes=[0-9]+[kmgKMG]?")


def _container_path(text: str, spec: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise BadReference(spec, "mount spec (paths must be absolute)")
    path = posixpath.normpath(text)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if path == "/":
        raise BadReference(spec, "mount spec (cannot mount over /)")
    return path


def parse_volume_spec(text: str) -> MountSpec:
    """podman's `-v`: `DEST` (anonymous volume), `NAME:DEST[:OPTS]` (named
    volume), `/HOST:DEST[:OPTS]` (bind); OPTS a comma list (ro, rw, nosuid,
    nodev, noexec, …).  BadReference for anything else."""
    parts = text.split(":") if isinstance(text, str) else []
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise BadReference(str(text), "mount spec")
    if len(parts) == 1:
        return MountSpec("volume", None, _container_path(parts[0], text))
    source, dest = parts[0], _container_path(parts[1], text)
    options = tuple(parts[2].split(",")) if len(parts) == 3 else ()
    for opt in options:
        if opt not in _MOUNT_OPTIONS:
            raise BadReference(text, f"mount spec (unknown option {opt!r})")
    if "ro" in options and "rw" in options:
        raise BadReference(text, "mount spec (ro and rw)")
    if source.startswith("/"):
        return MountSpec("bind", posixpath.normpath(source), dest, options)
    return MountSpec("volume", check_volume_name(source), dest, options)


def parse_tmpfs_spec(text: str) -> MountSpec:
    """podman's `--tmpfs DEST[:OPTS]`, OPTS like size=64m,mode=1777,ro."""
    dest, _, opts = text.partition(":") if isinstance(text, str) else ("", "", "")
    options = tuple(opts.split(",")) if opts else ()
    for opt in options:
        if opt not in _MOUNT_OPTIONS - {"bind", "rbind"} and not _TMPFS_OPTION.fullmatch(opt):
            raise BadReference(text, f"tmpfs spec (unknown option {opt!r})")
    return MountSpec("tmpfs", None, _container_path(dest, text), options)

_DIGEST_FIELDS = {"id", "diff_id", "parent", "compressed_digest", "manifest_digest"}


def _encode_value(name: str, value: Any) -> Any:
    if isinstance(value, Digest):
        return str(value)
    if isinstance(value, Quota):
        return {"bytes": value.bytes, "inodes": value.inodes}
    if isinstance(value, LazySource):
        return {f.name: _encode_value(f.name, getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, MountSpec):
        return {"type": value.type, "source": value.source,
                "destination": value.destination, "options": list(value.options)}
    if name == "labels":
        return dict(value)
    if isinstance(value, tuple):
        return [_encode_value(name, v) for v in value]
    return value


def encode(record: Layer | Image | Container | Volume) -> bytes:
    data: dict[str, Any] = {"schema": SCHEMA}
    for f in dataclasses.fields(record):
        data[f.name] = _encode_value(f.name, getattr(record, f.name))
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def decode(cls: Type[R], raw: bytes, path: str = "<record>") -> R:
    """Parse and validate one record; any defect → CorruptRecord(path, …)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptRecord(path, f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptRecord(path, "not a JSON object")
    if data.get("schema") != SCHEMA:
        raise CorruptRecord(path, f"unknown schema {data.get('schema')!r}")
    kwargs: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is not dataclasses.MISSING:
                    continue
                raise CorruptRecord(path, f"missing field {f.name!r}")
            kwargs[f.name] = _decode_field(cls, f.name, data[f.name])
    except BadReference as e:
        raise CorruptRecord(path, e.message) from None
    except (TypeError, ValueError) as e:
        raise CorruptRecord(path, str(e)) from None
    return cls(**kwargs)


def _decode_field(cls: type, name: str, value: Any) -> Any:
    if cls is Layer and name in _DIGEST_FIELDS:
        return None if value is None else Digest.parse(value)
    if cls is Layer and name == "lazy":
        return None if value is None else _decode_lazy(_expect(value, dict, name))
    if name == "manifest_digest":
        return None if value is None else Digest.parse(value)
    if name == "layers":
        return tuple(Digest.parse(v) for v in _expect(value, list, name))
    if name == "names":
        return tuple(parse_image_name(v) for v in _expect(value, list, name))
    if name in ("id", "image"):
        return check_id(value)
    if name in ("created",):
        return float(_expect(value, (int, float), name))
    if name in ("tar_size", "size"):
        return int(_expect(value, int, name))
    if name in ("incomplete", "anonymous"):
        return bool(_expect(value, bool, name))
    if name == "name":
        return check_volume_name(value) if cls is Volume else check_container_name(value)
    if name == "mounts":
        return tuple(_decode_mount(m) for m in _expect(value, list, name))
    if name == "quota":
        doc = _expect(value, dict, name)
        return Quota(_limit(doc.get("bytes"), name), _limit(doc.get("inodes"), name))
    if name == "owner":
        return _limit(value, name, minimum=0)
    if name == "labels":
        labels = _expect(value, dict, name)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TypeError("field 'labels' has the wrong type")
        return tuple(sorted(labels.items()))
    if name in ("config", "driver"):
        return _expect(value, str, name)
    if name == "lease":
        return None if value is None else _expect(value, str, name)
    raise CorruptRecord("<record>", f"unexpected field {name}")


def _decode_lazy(doc: dict) -> LazySource:
    def text(key: str, optional: bool = False) -> str | None:
        value = doc.get(key)
        return None if optional and value is None else _expect(value, str, f"lazy.{key}")

    def count(key: str) -> int:
        value = _expect(doc.get(key, 0), int, f"lazy.{key}")
        if value < 0:
            raise ValueError(f"field 'lazy.{key}' is negative")
        return value
    return LazySource(registry=text("registry"), repository=text("repository"),
                      blob=Digest.parse(text("blob")),
                      toc_digest=Digest.parse(text("toc_digest")),
                      total=count("total"), fetched=count("fetched"),
                      insecure=bool(_expect(doc.get("insecure", False), bool, "lazy")),
                      cert_dir=text("cert_dir", True), error=text("error", True))


def _decode_mount(doc: Any) -> MountSpec:
    doc = _expect(doc, dict, "mounts")
    kind = doc.get("type")
    if kind not in ("volume", "bind", "tmpfs"):
        raise TypeError(f"unknown mount type {kind!r}")
    source = doc.get("source")
    if kind == "volume" and source is not None:
        source = check_volume_name(source)
    elif source is not None:
        source = _expect(source, str, "mounts")
    dest = _expect(doc.get("destination"), str, "mounts")
    options = tuple(_expect(o, str, "mounts")
                    for o in _expect(doc.get("options", []), list, "mounts"))
    return MountSpec(kind, source, _container_path(dest, dest), options)


def _limit(value: Any, name: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if _expect(value, int, name) < minimum:
        raise ValueError(f"field {name!r} is below {minimum}")
    return value


def _expect(value: Any, types, name: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
        raise TypeError(f"field {name!r} has the wrong type")
    return value


def replace(record: R, **changes: Any) -> R:
    return dataclasses.replace(record, **changes)
