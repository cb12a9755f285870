"""Writing an OCI image layout, as a directory or as one tar (`layers save`).

    with open_layout(path, as_tar) as out:
        out.add_blob(digest, size, chunks)     # a layer, streamed, verified
        out.add_json(document) -> descriptor   # config, manifest
        out.finish(manifest descriptors)       # index.json, oci-layout

Every blob is checked against its digest while it is written: a mismatch
raises DigestMismatch and nothing is published.  A tar is written to a temp
file beside `path` and renamed into place at the end; in a directory, each
blob is written under a temp name and renamed, `index.json` last, so a reader
never sees an index naming a missing blob.  Entries of the tar come in a
fixed order, timestamped 0: saving the same image twice gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tarfile
from typing import BinaryIO, Iterable, Iterator

from . import fsutil
from .digest import Digest
from .errors import DigestMismatch

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_DOC = b'{"imageLayoutVersion":"1.0.0"}'


def descriptor(media_type: str, digest: Digest, size: int, **extra) -> dict:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def canonical_json(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _Writer:
    def __init__(self, path: str, as_tar: bool):
        self.path = os.path.abspath(path)
        self.as_tar = as_tar
        self._written: set[str] = set()
        if as_tar:
            parent, name = os.path.split(self.path)
            self._tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-"
                                             f"{secrets.token_hex(4)}")
            self._file: BinaryIO = open(self._tmp, "xb")
            for d in ("blobs", "blobs/sha256"):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                self._file.write(ti.tobuf(tarfile.PAX_FORMAT))
        else:
            os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)

    # -- one entry ------------------------------------------------------------------

    def _put(self, name: str, size: int, chunks: Iterable[bytes],
             expect: Digest | None) -> None:
        """Write `size` bytes named `name`; with `expect`, their digest must match."""
        h = hashlib.sha256()
        if self.as_tar:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = size, 0o644, 0
            self._file.write(ti.tobuf(tarfile.PAX_FORMAT))
            n = self._copy(chunks, self._file, h)
            self._check(name, size, n, expect, h)
            self._file.write(b"\0" * ((-n) % tarfile.BLOCKSIZE))
        else:
            target = os.path.join(self.path, name)
            tmp = f"{target}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                with open(tmp, "xb") as f:
                    n = self._copy(chunks, f, h)
                    f.flush()
                    os.fsync(f.fileno())
                self._check(name, size, n, expect, h)
                os.rename(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    @staticmethod
    def _copy(chunks: Iterable[bytes], f: BinaryIO, h) -> int:
        n = 0
        for data in chunks:
            h.update(data)
            f.write(data)
            n += len(data)
        return n

    @staticmethod
    def _check(name: str, size: int, n: int, expect: Digest | None, h) -> None:
        got = Digest(h.hexdigest())
        if expect is not None and got != expect:
            raise DigestMismatch(name, str(expect), str(got))
        if n != size:
            raise DigestMismatch(f"{name} size", str(size), str(n))

    # -- the layout -------------------------------------------------------------------

    def add_blob(self, digest: Digest, size: int, chunks: Iterable[bytes]) -> None:
        name = f"blobs/sha256/{digest.hex}"
        if name in self._written:
            return
        self._put(name, size, chunks, digest)
        self._written.add(name)

    def add_json(self, media_type: str, doc) -> dict:
        """Store `doc` (bytes as they are, or a document made canonical JSON)."""
        raw = doc if isinstance(doc, bytes) else canonical_json(doc)
        digest = Digest.of_bytes(raw)
        self.add_blob(digest, len(raw), [raw])
        return descriptor(media_type, digest, len(raw))

    def finish(self, manifests: list[dict]) -> None:
        index = canonical_json({"schemaVersion": 2, "manifests": manifests})
        for name, raw in (("oci-layout", LAYOUT_DOC), ("index.json", index)):
            self._put(name, len(raw), [raw], None)
        if self.as_tar:
            self._file.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._tmp, self.path)
            fsutil.fsync_dir(os.path.dirname(self.path))
        else:
            fsutil.sync_tree(self.path)

    def abandon(self) -> None:
        if self.as_tar:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


@contextlib.contextmanager
def open_layout(path: str, as_tar: bool) -> Iterator[_Writer]:
    """A layout writer; the caller calls `finish`; on an exception a tar being
    written is removed (a directory keeps the blobs already verified)."""
    w = _Writer(path, as_tar)
    try:
        yield w
    except BaseException:
        w.abandon()
        raise
