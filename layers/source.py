"""What an import reads: a layer tar, an OCI image layout, a docker archive.

Level 2: imports `errors`, `digest`, `records`, `fsutil`, `archive`.

`open_source(path)` is a context manager yielding a list of `ImageSource`:
the images found, each with its config bytes (digest-verified) and its
layers as `LayerBlob`s that open a stream of the blob on demand.

- A directory or plain tar holding `oci-layout`/`index.json` is an OCI image
  layout: index.json → (nested indexes, platform chosen) → manifests →
  config and layers; every JSON blob is checked against its descriptor.
- A directory or plain tar holding `manifest.json` is a `docker save` archive.
- Anything else (plain, gzip or zstd) is one layer tar: a one-layer image
  whose config the store writes once the diffID is known (`config is None`).
  Several layer tars given together stack into one image, bottom first.

Names inside archives are untrusted: blob paths come from validated digests;
docker-archive paths are cleaned (`archive.clean_name`); a directory is read
through `open_beneath` (no symlinks followed).  Layer blobs are verified by
the caller while it extracts them (blob digest, diffID).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, ContextManager, Iterator

from .archive import clean_name, detect_compression
from .digest import Digest
from .errors import BadArchive, BadReference, DigestMismatch, UnsafeArchive
from .fsutil import open_beneath
from .records import parse_image_name

MAX_JSON = 16 << 20
MAX_INDEX_DEPTH = 8
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class LayerBlob:
    where: str                               # for messages
    open: Callable[[], ContextManager[BinaryIO]]
    digest: Digest | None = None             # expected blob digest, when known
    diff_id: Digest | None = None            # expected diffID, when known
    size: int | None = None


@dataclass(frozen=True)
class ImageSource:
    config: bytes | None                     # None: a bare layer tar
    layers: list[LayerBlob]
    names: list[str] = field(default_factory=list)
    manifest_digest: Digest | None = None

    @property
    def diff_ids(self) -> list[Digest] | None:
        if self.config is None:
            return None
        return config_diff_ids(self.config, "config")


def config_diff_ids(config: bytes, where: str) -> list[Digest]:
    try:
        doc = json.loads(config)
        ids = doc["rootfs"]["diff_ids"]
        if not isinstance(ids, list):
            raise TypeError("diff_ids is not a list")
        return [Digest.parse(x) for x in ids]
    except (ValueError, KeyError, TypeError, BadReference) as e:
        raise BadArchive(where, f"bad image config ({e})") from None


def bare_layer_config(diff_ids: list[Digest]) -> bytes:
    """The config of an image made from bare layer tars: deterministic, so
    importing the same tars twice gives the same image id."""
    doc = {"architecture": host_arch(), "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm",
            "i686": "386"}.get(machine, machine)


# -- containers: a directory or a plain tar --------------------------------------


class _Dir:
    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def exists(self, name: str) -> bool:
        try:
            os.close(open_beneath(self.fd, name))
            return True
        except (OSError, UnsafeArchive):
            return False

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        try:
            fd = open_beneath(self.fd, name)
        except FileNotFoundError:
            raise BadArchive(self.path, f"missing {name}") from None
        with os.fdopen(fd, "rb", buffering=1 << 20) as f:
            yield f

    def close(self) -> None:
        os.close(self.fd)


class _Tar:
    def __init__(self, path: str):
        self.path = path
        try:
            self.tf = tarfile.open(path, "r:")
            self.members = {}
            for m in self.tf.getmembers():
                key = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                self.members[key] = m
        except (tarfile.TarError, EOFError) as e:
            raise BadArchive(path, f"invalid tar ({e})") from None

    def _member(self, name: str) -> tarfile.TarInfo | None:
        return self.members.get("/".join(clean_name(name)))

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        m = self._member(name)
        if m is None:
            raise BadArchive(self.path, f"missing {name}")
        try:
            f = self.tf.extractfile(m)
        except (tarfile.TarError, KeyError) as e:
            raise BadArchive(self.path, f"cannot read {name} ({e})") from None
        if f is None:
            raise BadArchive(self.path, f"{name} is not a file")
        with f:
            yield f

    def close(self) -> None:
        self.tf.close()


_IMAGE_TOP = ("oci-layout", "index.json", "manifest.json", "repositories", "blobs")


def _looks_like_image_tar(path: str, compression: str | None) -> bool:
    """A tar whose first entry is image-archive bookkeeping, not a rootfs."""
    try:
        if compression == "zstd":
            exe = shutil.which("zstd")
            if exe is None:
                return False
            proc = subprocess.Popen([exe, "-dcq", path], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            head = proc.stdout.read(64 << 10)
            proc.kill()
            proc.communicate()
            tf = tarfile.open(fileobj=io.BytesIO(head), mode="r|")
        else:
            tf = tarfile.open(path, "r|*")
        with tf:
            first = tf.next()
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return False
    if first is None:
        return False
    top = [p for p in first.name.split("/") if p not in ("", ".")]
    if not top:
        return False
    head = top[0]
    return head in _IMAGE_TOP or (len(head) in (64, 69) and all(
        c in "0123456789abcdef" for c in head[:64]))


@contextlib.contextmanager
def open_source(path: str | list[str]) -> Iterator[list[ImageSource]]:
    """The images found at `path`; see the module doc.  A list of paths is a
    stack of layer tars, bottom first: one image."""
    if isinstance(path, list):
        if len(path) == 1:
            path = path[0]
        else:
            yield [_bare_layers(path)]
            return
    if os.path.isdir(path):
        container = _Dir(path)
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(6)
        except OSError as e:
            raise BadArchive(path, e.strerror or str(e)) from None
        compression = detect_compression(head)
        if not _looks_like_image_tar(path, compression):
            yield [_bare_layers([path])]
            return
        if compression:
            raise BadArchive(path, f"a {compression}-compressed image archive; "
                                   "decompress it first")
        container = _Tar(path)
    try:
        if container.exists("index.json") and container.exists("oci-layout"):
            yield _oci_layout(container)
        elif container.exists("manifest.json"):
            yield _docker_archive(container)
        elif isinstance(container, _Dir):
            raise BadArchive(path, "neither an OCI image layout nor a docker archive")
        else:
            raise BadArchive(path, "an image archive without index.json or manifest.json")
    finally:
        container.close()


def _bare_layers(paths: list[str]) -> ImageSource:
    def opener(path: str):
        @contextlib.contextmanager
        def open_blob() -> Iterator[BinaryIO]:
            try:
                f = open(path, "rb", buffering=1 << 20)
            except OSError as e:
                raise BadArchive(path, e.strerror or str(e)) from None
            with f:
                yield f
        return open_blob
    for path in paths:
        if os.path.isdir(path):
            raise BadArchive(path, "a directory in a stack of layer tars")
    return ImageSource(config=None, layers=[LayerBlob(where=p, open=opener(p))
                                            for p in paths])


def _read_json_blob(container, name: str, expect: Digest | None, where: str):
    """Read a JSON blob (bounded size), verify its digest; → (bytes, parsed)."""
    with container.open(name) as f:
        raw = f.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise BadArchive(where, f"{name} is larger than {MAX_JSON} bytes")
    if expect is not None:
        got = Digest.of_bytes(raw)
        if got != expect:
            raise DigestMismatch(name, str(expect), str(got))
    try:
        return raw, json.loads(raw)
    except ValueError as e:
        raise BadArchive(where, f"{name} is not JSON ({e})") from None


def _descriptor_digest(desc, where: str) -> Digest:
    if not isinstance(desc, dict):
        raise BadArchive(where, "descriptor is not an object")
    try:
        return Digest.parse(desc.get("digest"))
    except BadReference as e:
        raise BadArchive(where, e.message) from None


def _blob_name(d: Digest) -> str:
    return f"blobs/sha256/{d.hex}"


# -- OCI image layout ----------------------------------------------------------


def _oci_layout(container) -> list[ImageSource]:
    where = container.path
    _, index = _read_json_blob(container, "index.json", None, where)
    images = []
    for desc, names in _oci_manifests(container, index, where, 0, set()):
        digest = _descriptor_digest(desc, where)
        _, manifest = _read_json_blob(container, _blob_name(digest), digest, where)
        images.append(_from_manifest(container, manifest, digest, names, where))
    if not images:
        raise BadArchive(where, "index.json lists no image")
    return images


def _oci_manifests(container, index, where: str, depth: int, seen: set):
    """(descriptor, names) of the image manifests an index leads to."""
    if depth > MAX_INDEX_DEPTH:
        raise BadArchive(where, "index nesting too deep (a loop?)")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise BadArchive(where, "index has no manifests list")
    for desc in manifests:
        digest = _descriptor_digest(desc, where)
        names = _names_of(desc)
        if desc.get("mediaType") in INDEX_TYPES:
            if digest in seen:
                raise BadArchive(where, f"index loop at {digest}")
            seen = seen | {digest}
            _, child = _read_json_blob(container, _blob_name(digest), digest, where)
            chosen = _pick_platform(child, where)
            for sub, sub_names in _oci_manifests(container, {"manifests": chosen},
                                                 where, depth + 1, seen):
                yield sub, names or sub_names
        else:
            yield desc, names


def _pick_platform(index, where: str) -> list:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BadArchive(where, "index has no manifests")
    for desc in manifests:
        plat = desc.get("platform") if isinstance(desc, dict) else None
        if isinstance(plat, dict) and plat.get("os") == "linux" \
                and plat.get("architecture") == host_arch():
            return [desc]
    return [manifests[0]]


def _names_of(desc) -> list[str]:
    ann = desc.get("annotations") if isinstance(desc, dict) else None
    if not isinstance(ann, dict):
        return []
    for key in (CONTAINERD_NAME, REF_NAME):
        value = ann.get(key)
        if isinstance(value, str) and ("/" in value or ":" in value):
            try:
                return [parse_image_name(value)]
            except BadReference:
                pass
    return []


def _from_manifest(container, manifest, digest: Digest | None, names: list[str],
                   where: str) -> ImageSource:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise BadArchive(where, "manifest has no layers list")
    cdigest = _descriptor_digest(manifest.get("config"), where)
    config, _ = _read_json_blob(container, _blob_name(cdigest), cdigest, where)
    diff_ids = config_diff_ids(config, f"{where}: config {cdigest}")
    descs = manifest["layers"]
    if len(descs) != len(diff_ids):
        raise BadArchive(where, f"manifest lists {len(descs)} layers, "
                                f"config {len(diff_ids)} diff_ids")
    layers = []
    for desc, diff_id in zip(descs, diff_ids):
        d = _descriptor_digest(desc, where)
        size = desc.get("size")
        layers.append(LayerBlob(where=f"{_blob_name(d)}", digest=d, diff_id=diff_id,
                                size=size if isinstance(size, int) else None,
                                open=_opener(container, _blob_name(d))))
    return ImageSource(config=config, layers=layers, names=names, manifest_digest=digest)


def _opener(container, name: str):
    return lambda: container.open(name)


# -- docker save archive ----------------------------------------------------------


def _docker_archive(container) -> list[ImageSource]:
    where = container.path
    _, manifest = _read_json_blob(container, "manifest.json", None, where)
    if not isinstance(manifest, list) or not manifest:
        raise BadArchive(where, "manifest.json is not a non-empty list")
    images = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise BadArchive(where, "manifest.json entry lacks Config or Layers")
        config_name = "/".join(clean_name(entry["Config"]))
        config, _ = _read_json_blob(container, config_name,
                                    _digest_in_name(config_name), where)
        diff_ids = config_diff_ids(config, f"{where}: {config_name}")
        if len(diff_ids) != len(entry["Layers"]):
            raise BadArchive(where, f"manifest.json lists {len(entry['Layers'])} "
                                    f"layers, config {len(diff_ids)} diff_ids")
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids):
            if not isinstance(name, str):
                raise BadArchive(where, "layer path is not a string")
            name = "/".join(clean_name(name))
            layers.append(LayerBlob(where=name, open=_opener(container, name),
                                    digest=_digest_in_name(name), diff_id=diff_id))
        names = []
        for tag in entry.get("RepoTags") or []:
            try:
                names.append(parse_image_name(tag))
            except BadReference:
                pass
        images.append(ImageSource(config=config, layers=layers, names=names))
    return images


def _digest_in_name(name: str) -> Digest | None:
    """`blobs/sha256/<hex>` or `<hex>.json` names carry their digest."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith(".json"):
        base = base[:-5]
    if name.startswith("blobs/sha256/") or name.endswith(".json"):
        try:
            return Digest(base)
        except BadReference:
            return None
    return None
