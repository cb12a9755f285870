"""The store's records: frozen dataclasses with a versioned JSON codec.

Level 1: imports `errors`, `digest`.

Every record carries `incomplete` and `lease`: a record is written with
`incomplete=True` and the lease token of the command doing the work before the
work starts (creation or deletion), and rewritten without it when the work is
done.  A reader treats an incomplete record as absent; a later command whose
lease check finds the owner dead removes its leftovers.

Names: images are `NAME[:TAG]` (tag defaults to `latest`) in the grammar of
OCI references; containers are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Type, TypeVar

from .digest import Digest, check_id
from .errors import BadReference, CorruptRecord

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
class Container:
    id: str
    name: str
    image: str                       # image id
    layers: tuple[Digest, ...]       # the image's ChainIDs, bottom first
    driver: str
    created: float
    incomplete: bool = False
    lease: str | None = None


R = TypeVar("R", Layer, Image, Container)

_DIGEST_FIELDS = {"id", "diff_id", "parent", "compressed_digest", "manifest_digest"}


def _encode_value(name: str, value: Any) -> Any:
    if isinstance(value, Digest):
        return str(value)
    if isinstance(value, tuple):
        return [_encode_value(name, v) for v in value]
    return value


def encode(record: Layer | Image | Container) -> bytes:
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
    if name == "incomplete":
        return bool(_expect(value, bool, name))
    if name == "name":
        return check_container_name(value)
    if name in ("config", "driver"):
        return _expect(value, str, name)
    if name == "lease":
        return None if value is None else _expect(value, str, name)
    raise CorruptRecord("<record>", f"unexpected field {name}")


def _expect(value: Any, types, name: str) -> Any:
    if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
        raise TypeError(f"field {name!r} has the wrong type")
    return value


def replace(record: R, **changes: Any) -> R:
    return dataclasses.replace(record, **changes)
