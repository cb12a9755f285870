"""An image in a registry, read as an `ImageSource` the store imports.

`resolve(client, ref, platform)` fetches and checks, in order:
1. the manifest named by the tag or digest: its bytes must hash to the
   digest asked for (or, by tag, to the `Docker-Content-Digest` the registry
   sent, when it sent one); schema 1 is refused;
2. an image index (OCI) or manifest list (Docker): the entry for `platform`
   (os, architecture, and variant when given or when the index has several
   for the architecture), fetched and checked the same way;
3. the config blob (size-bounded), checked against its descriptor, whose
   diffIDs must be as many as the manifest's layers.

The layers become `LayerBlob`s whose `open()` streams the blob from the
registry (`client.BlobStream`); the store's extraction checks each against
its descriptor digest and its diffID.  Bytes received per blob are counted in
`RemoteImage.received`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field

from ..digest import Digest
from ..errors import BadArchive, BadReference, DigestMismatch
from ..source import (MAX_JSON, ImageSource, LayerBlob, config_diff_ids, descriptor_digest,
                      host_arch)
from .client import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, LAYER_TYPES, OCI_INDEX,
                     OCI_MANIFEST, RegistryClient)
from ..estargz import TOC_DIGEST_ANNOTATION
from .errors import RegistryError
from .reference import Reference

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadReference(text, "platform (OS/ARCH[/VARIANT])")
        return cls(*parts)

    @classmethod
    def host(cls) -> "Platform":
        return cls("linux", host_arch())

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass
class RemoteImage:
    reference: Reference              # where it was read (a mirror's, maybe)
    source: ImageSource
    media_type: str                   # of the image manifest
    index_digest: Digest | None       # the index the manifest was chosen from
    layer_media_types: list[str]
    received: dict[Digest, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, digest: Digest, n: int) -> None:
        with self.lock:
            self.received[digest] = self.received.get(digest, 0) + n

    @property
    def bytes_received(self) -> int:
        with self.lock:
            return sum(self.received.values())


def _json(raw: bytes, what: str, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BadArchive(where, f"{what} is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadArchive(where, f"{what} is not a JSON object")
    return doc


def _fetch_manifest(client: RegistryClient, ref: Reference, which: str,
                    expect: Digest | None) -> tuple[bytes, dict, str, Digest]:
    raw, media, said = client.get_manifest(ref.repository, which)
    got = Digest.of_bytes(raw)
    what = f"manifest {ref.name}@{which}" if which.startswith("sha256:") \
        else f"manifest {ref.name}:{which}"
    if expect is not None and got != expect:
        raise DigestMismatch(what, str(expect), str(got))
    if expect is None and said and said.startswith("sha256:") and said != str(got):
        raise DigestMismatch(what, said, str(got))
    doc = _json(raw, "manifest", what)
    media = doc.get("mediaType") or media
    if media in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise RegistryError(client.name, f"{what} is a Docker schema 1 manifest, which "
                                         "is not supported (push it again with a newer client)")
    if media not in INDEX_TYPES + MANIFEST_TYPES:
        if "manifests" in doc:
            media = OCI_INDEX
        elif "layers" in doc:
            media = OCI_MANIFEST
        else:
            raise RegistryError(client.name, f"{what} has the unknown type {media!r}")
    return raw, doc, media, got


def choose_platform(index: dict, platform: Platform, where: str) -> dict:
    """The index entry for `platform` (module doc), or BadArchive listing
    what the index offers."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise BadArchive(where, "the index lists no manifests")
    offered = []
    matches = []
    for desc in entries:
        plat = desc.get("platform") if isinstance(desc, dict) else None
        if not isinstance(plat, dict):
            continue
        p = Platform(str(plat.get("os")), str(plat.get("architecture")),
                     plat.get("variant") or None)
        offered.append(str(p))
        if p.os == platform.os and p.architecture == platform.architecture:
            matches.append((p, desc))
    if platform.variant:
        matches = [(p, d) for p, d in matches if p.variant == platform.variant
                   or (p.variant is None
                       and DEFAULT_VARIANTS.get(p.architecture) == platform.variant)]
    elif len(matches) > 1:
        default = DEFAULT_VARIANTS.get(platform.architecture)
        preferred = [(p, d) for p, d in matches if p.variant in (None, default)]
        matches = preferred or matches
    if not matches:
        raise BadArchive(where, f"no image for {platform} in the index; it has "
                                f"{', '.join(sorted(set(offered))) or 'no platforms'} "
                                "(choose one with --platform)")
    return matches[0][1]


def resolve(client: RegistryClient, ref: Reference, platform: Platform) -> RemoteImage:
    """The image `ref` names, for `platform` (module doc)."""
    where = str(ref)
    raw, doc, media, digest = _fetch_manifest(client, ref, ref.manifest_ref, ref.digest)
    index_digest = None
    if media in INDEX_TYPES:
        index_digest = digest
        desc = choose_platform(doc, platform, where)
        digest = descriptor_digest(desc, where)
        raw, doc, media, digest = _fetch_manifest(client, ref, str(digest), digest)
        if media in INDEX_TYPES:
            raise BadArchive(where, "an index inside an index is not supported")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BadArchive(where, "the manifest has no layers list")
    cdesc = doc.get("config")
    cdigest = descriptor_digest(cdesc, where)
    config = client.get_blob(ref.repository, cdigest, MAX_JSON)
    got = Digest.of_bytes(config)
    if got != cdigest:
        raise DigestMismatch(f"config of {where}", str(cdigest), str(got))
    diff_ids = config_diff_ids(config, f"{where}: config {cdigest}")
    if len(diff_ids) != len(layers):
        raise BadArchive(where, f"the manifest lists {len(layers)} layers, "
                                f"its config {len(diff_ids)} diff_ids")
    remote = RemoteImage(ref, ImageSource(config=config, layers=[],
                                          names=[ref.image_name] if ref.image_name else [],
                                          manifest_digest=digest),
                         media, index_digest, [])
    for desc, diff_id in zip(layers, diff_ids):
        d = descriptor_digest(desc, where)
        layer_type = desc.get("mediaType", "")
        if layer_type not in LAYER_TYPES:
            raise BadArchive(where, f"layer {d} has the media type {layer_type!r}, "
                                    "which is not a layer this store reads")
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise BadArchive(where, f"layer {d} has no valid size")
        remote.layer_media_types.append(layer_type)
        annotations = desc.get("annotations")
        toc = annotations.get(TOC_DIGEST_ANNOTATION) \
            if isinstance(annotations, dict) else None
        remote.source.layers.append(LayerBlob(
            where=f"{ref.name}@{d}", digest=d, diff_id=diff_id, size=size,
            open=_opener(client, remote, ref.repository, d, size),
            toc_digest=Digest.parse(toc) if isinstance(toc, str) else None,
            read_range=_range_reader(client, remote, ref.repository, d)))
    return remote


def _range_reader(client: RegistryClient, remote: RemoteImage, repository: str,
                  digest: Digest):
    def read_range(start: int, end: int) -> bytes:
        data = client.get_blob_range(repository, digest, start, end)
        remote.count(digest, len(data))
        return data
    return read_range


def _opener(client: RegistryClient, remote: RemoteImage, repository: str,
            digest: Digest, size: int):
    @contextlib.contextmanager
    def open_blob():
        with client.open_blob(repository, digest, size,
                              on_bytes=lambda n: remote.count(digest, n)) as stream:
            yield stream
    return open_blob
