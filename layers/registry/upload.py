"""The push side: the blobs a registry lacks, then the manifest.

For each layer (`Pusher.push_layer`), cheapest first:
1. a blob known to hold this diffID in the wanted compression (the blob the
   layer was pulled as, or one an earlier push made; `blobinfo`) that the
   destination repository already has (HEAD): nothing to send;
2. such a blob another repository of the same registry holds: a
   cross-repository mount (`POST …?mount=&from=`), nothing to send;
3. otherwise the layer's tar (rebuilt exactly from its tar-split by the
   store) is compressed into a temp file — deterministic gzip: the same
   layer always gives the same blob — whose digest is asked for with HEAD
   (skipped when there), else uploaded.  Uncompressed (`--compression-format
   none`), the blob is the tar itself (its digest is the diffID), streamed.
   Seekable (`--compression-format estargz`), the tar is spooled to a temp
   file and written as `estargz.py`'s blob (deterministic too), whose
   descriptor carries the TOC digest and tar size annotations.

Seekable and plain gzip blobs of one layer are kept apart in `blobinfo`
(an estargz blob is recorded with its TOC digest): an estargz push reuses
only a blob known to be seekable, whose TOC digest its descriptor needs;
a plain gzip push reuses only blobs not known to be seekable, so that it
gives the blobs asked for (an estargz blob is a valid gzip layer, but
bigger, and its form was not what the push asked).

Then the config (HEAD, else upload), then the manifest (OCI, or Docker v2
schema 2) under the tag.  What was learned goes to `blobinfo`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from .. import estargz
from ..digest import Digest
from ..errors import DigestMismatch, UsageError
from ..ociwriter import canonical_json, descriptor
from .blobinfo import BlobInfoCache
from .errors import RegistryError
from .client import (DOCKER_CONFIG, DOCKER_MANIFEST, LAYER_TYPES, OCI_CONFIG, OCI_MANIFEST,
                     RegistryClient)
from .reference import Reference

LAYER_MEDIA = {       # by (choices.FORMATS, choices.COMPRESSIONS)
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "estargz"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("v2s2", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("v2s2", "estargz"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}

# (digest, size, chunks) of a layer's tar: the store's `_layer_tar`
TarSource = Callable[[], tuple[Digest, int, Callable[[], Iterator[bytes]]]]


@dataclass(frozen=True)
class PushedBlob:
    digest: Digest
    size: int
    media_type: str
    diff_id: Digest | None    # of the tar the blob holds (None: a config)
    status: str               # "exists", "mounted", "uploaded"
    sent: int                 # bytes uploaded
    annotations: dict[str, str] | None = None   # of its descriptor (estargz)


def check_options(fmt: str, compression: str) -> None:
    if (fmt, compression) not in LAYER_MEDIA:
        raise UsageError(f"--format {fmt} cannot carry --compression-format {compression} "
                         "layers")


def gzip_file(chunks: Iterator[bytes], path: str, level: int) -> tuple[Digest, int]:
    """Compress into `path`: gzip without name or time (the same input gives
    the same bytes); its digest and size."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    h = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            out = comp.compress(chunk)
            if out:
                h.update(out)
                f.write(out)
                size += len(out)
        out = comp.flush()
        h.update(out)
        f.write(out)
        size += len(out)
    return Digest(h.hexdigest()), size


def seekable_file(chunks: Iterator[bytes], path: str, level: int,
                  scratch: str) -> estargz.Written:
    """Write the tar `chunks` into `path` as a seekable blob (`estargz.py`),
    through a temp copy of the tar, which the writer reads twice."""
    tar_path = path + ".tar"
    try:
        with open(tar_path, "w+b") as tar:
            for chunk in chunks:
                tar.write(chunk)
            with open(path, "wb") as out:
                return estargz.write_seekable(tar, out, level, scratch=scratch)
    finally:
        os.unlink(tar_path)


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            yield data


class Pusher:
    def __init__(self, client: RegistryClient, ref: Reference, fmt: str, compression: str,
                 level: int, cache: BlobInfoCache):
        check_options(fmt, compression)
        self.client = client
        self.ref = ref
        self.repository = ref.repository
        self.location = ref.name
        self.format = fmt
        self.compression = compression
        self.level = level
        self.cache = cache
        self.media = LAYER_MEDIA[(fmt, compression)]
        self._sent = 0
        self._lock = threading.Lock()

    @property
    def bytes_sent(self) -> int:
        return self._sent

    def _count(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def _reuse(self, digest: Digest, size: int | None, locations) -> str | None:
        """"exists" or "mounted" when the registry can have `digest` without
        an upload, else None."""
        if self.client.blob_size(self.repository, digest) is not None:
            return "exists"
        for loc in locations:
            registry, _, repository = loc.partition("/")
            if registry == self.ref.registry and repository and repository != self.repository:
                if self.client.mount_blob(self.repository, digest, repository):
                    return "mounted"
        return None

    def check_access(self) -> None:
        """Reach the registry and be let in to push, before any work."""
        self.client.check_access(self.repository, "pull,push")

    def push_layer(self, diff_id: Digest, tar_size: int, tar: TarSource, scratch: str,
                   progress=None) -> PushedBlob:
        """Make the registry hold this layer (module doc); what it took."""
        seekable = self.compression == "estargz"
        candidates = [info for info in self.cache.by_diff_id(diff_id)
                      if LAYER_TYPES.get(info.media_type, "?") == _codec(self.compression)
                      and (info.toc_digest is not None) == seekable]
        if self.compression == "none" and not any(c.digest == diff_id for c in candidates):
            status = self._reuse(diff_id, tar_size, [])
            if status:
                return self._done(diff_id, tar_size, diff_id, status, 0)
        for info in candidates:
            status = self._reuse(info.digest, info.size, info.locations)
            if status:
                return self._done(info.digest, info.size, diff_id, status, 0,
                                  info.toc_digest, tar_size)
        # The tar, rebuilt: its digest is the diffID (another one, warned by
        # the store, for a layer without a tar-split).
        diff_id, size, chunks = tar()
        digest, path, toc_digest, tar_size = diff_id, None, None, size
        if self.compression == "none":
            body = chunks
        elif seekable:
            path = os.path.join(scratch, f"{diff_id.hex}.push.estargz")
            written = seekable_file(chunks(), path, self.level, scratch)
            if written.diff_id != diff_id:
                os.unlink(path)
                raise DigestMismatch(f"the rebuilt tar of layer {diff_id}", str(diff_id),
                                     str(written.diff_id))
            digest, size, toc_digest = written.digest, written.size, written.toc_digest
            body = lambda: _file_chunks(path)         # noqa: E731
        else:
            path = os.path.join(scratch, f"{diff_id.hex}.push.gz")
            digest, size = gzip_file(chunks(), path, self.level)
            body = lambda: _file_chunks(path)         # noqa: E731
        try:
            status = self._reuse(digest, size, [])
            if status:
                return self._done(digest, size, diff_id, status, 0, toc_digest, tar_size)
            on_bytes = progress.layer_bytes if progress is not None else None
            self.client.upload_blob(self.repository, digest, size, body, on_bytes)
            self._count(size)
            return self._done(digest, size, diff_id, "uploaded", size, toc_digest, tar_size)
        finally:
            if path is not None:
                os.unlink(path)

    def _done(self, digest: Digest, size: int, diff_id: Digest, status: str,
              sent: int, toc_digest: Digest | None = None, tar_size: int = 0) -> PushedBlob:
        self.cache.record(digest, size, self.media, diff_id, self.location, toc_digest)
        annotations = None
        if toc_digest is not None:
            annotations = {estargz.TOC_DIGEST_ANNOTATION: str(toc_digest),
                           estargz.UNCOMPRESSED_SIZE_ANNOTATION: str(tar_size)}
        return PushedBlob(digest, size, self.media, diff_id, status, sent, annotations)

    def push_config(self, config: bytes) -> PushedBlob:
        digest = Digest.of_bytes(config)
        media = OCI_CONFIG if self.format == "oci" else DOCKER_CONFIG
        if self.client.blob_size(self.repository, digest) is not None:
            return PushedBlob(digest, len(config), media, None, "exists", 0)
        self.client.upload_blob(self.repository, digest, len(config), lambda: iter([config]))
        self._count(len(config))
        return PushedBlob(digest, len(config), media, None, "uploaded", len(config))

    def push_manifest(self, config: PushedBlob, layers: list[PushedBlob]) -> tuple[Digest, bytes]:
        """PUT the manifest under the tag; its digest and bytes."""
        media = OCI_MANIFEST if self.format == "oci" else DOCKER_MANIFEST
        doc = {"schemaVersion": 2, "mediaType": media,
               "config": descriptor(config.media_type, config.digest, config.size),
               "layers": [descriptor(self.media, b.digest, b.size,
                                     **({"annotations": b.annotations} if b.annotations
                                        else {}))
                          for b in layers]}
        body = canonical_json(doc)
        digest = Digest.of_bytes(body)
        said = self.client.put_manifest(self.repository, self.ref.tag or str(digest), body, media)
        if said and said != str(digest):
            raise RegistryError(self.client.name, f"manifest stored as {said}, "
                                                  f"not {digest}")
        return digest, body


def _codec(compression: str) -> str | None:
    """The compression of the blob (what LAYER_TYPES says of its media type)."""
    return {"none": None, "estargz": "gzip"}.get(compression, compression)
