"""What an import reads: a layer tar, an OCI image layout, a docker archive.

`open_source(path)` is a context manager yielding a list of `ImageSource`:
the images found, each with its config bytes (digest-verified) and its
layers as `LayerBlob`s that open a stream of the blob on demand.

- A directory or plain tar holding `oci-layout`/`index.json` is an OCI image
  layout: index.json → (nested indexes, platform chosen) → manifests →
  config and layers; every JSON blob is checked against its descriptor.
- A directory or plain tar holding `manifest.json` is a `docker save` archive
  (a list: docker, podman and skopeo docker-archive) or a containers/image
  `dir:` (one manifest: podman save --format docker-dir).
- One holding only `repositories` and `<id>/json`, `<id>/layer.tar` is a
  docker archive of the legacy format.
- A tar is an image archive by what its top level holds, wherever in it the
  markers come (`_open_image_tar`); a compressed one by its first entry.
- Anything else (plain, gzip or zstd) is one layer tar: a one-layer image
  whose config the store writes once the diffID is known (`config is None`,
  `config_for`).  Several layer tars given together stack into one image,
  bottom first.

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
import posixpath
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, ContextManager, Iterator

from .archive import clean_name, detect_compression
from .digest import Digest, check_id
from .errors import BadArchive, BadReference, DigestMismatch, UnsafeArchive
from .fsutil import open_beneath
from .records import parse_image_name

MAX_JSON = 16 << 20
MAX_INDEX_DEPTH = 8
MAX_LINKS = 8              # symlinks followed inside an archive, one after another
MAX_LEGACY_LAYERS = 1000
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
    # a seekable blob in a registry (estargz.py): its TOC's digest, and
    # read_range(start, end) → the blob's bytes [start, end)
    toc_digest: Digest | None = None
    read_range: Callable[[int, int], bytes] | None = None


@dataclass(frozen=True)
class ImageSource:
    config: bytes | None                     # None: known once the diffIDs are
    layers: list[LayerBlob]
    names: list[str] = field(default_factory=list)
    manifest_digest: Digest | None = None
    # the config of an image whose source has none, from its layers' diffIDs
    config_for: Callable[[list[Digest]], bytes] = field(
        default_factory=lambda: bare_layer_config)

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
        """Whether `name` is there; UnsafeArchive when reaching it would
        follow a symlink."""
        try:
            os.close(open_beneath(self.fd, name))
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise BadArchive(self.path, f"{name}: {e.strerror}") from None

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
    """An uncompressed tar read as a container: its members indexed by name
    (headers only: data is seeked over, never read into memory)."""

    def __init__(self, path: str, tf: tarfile.TarFile, members: dict[str, tarfile.TarInfo]):
        self.path = path
        self.tf = tf
        self.members = members

    def _member(self, name: str) -> tarfile.TarInfo | None:
        """The member `name` is, following links inside the archive (podman's
        `<id>/layer.tar` is a symlink to `../<digest>.tar`); never out of it."""
        key = "/".join(clean_name(name))
        for _ in range(MAX_LINKS):
            m = self.members.get(key)
            if m is None or not (m.issym() or m.islnk()):
                return m
            # a symlink is relative to its directory; a hard link to the root
            base = posixpath.dirname(key) if m.issym() else ""
            target = posixpath.normpath(posixpath.join("/", base, m.linkname))
            key = "/".join(clean_name(target))
        raise BadArchive(self.path, f"{name}: more than {MAX_LINKS} links")

    def exists(self, name: str) -> bool:
        return self._member(name) is not None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        m = self._member(name)
        if m is None:
            raise BadArchive(self.path, f"missing {name}")
        if not m.isreg():
            raise BadArchive(self.path, f"{name} is not a file")
        with self.tf.extractfile(m) as f:
            yield f

    def close(self) -> None:
        self.tf.close()


# What the top level of an image archive holds, and nothing else: docker save
# (`manifest.json`, `repositories`, `<id>/`, `<config>.json`, since docker 25
# also an OCI layout), podman and skopeo (`<digest>.tar` layers first,
# `manifest.json` and `repositories` last), OCI archives (`oci-layout`,
# `index.json`, `blobs/`).  A root filesystem holds other names (bin, etc …).
_ARCHIVE_MARKERS = ("manifest.json", "index.json", "repositories")
_ARCHIVE_NAMES = _ARCHIVE_MARKERS + ("oci-layout", "blobs")
_HEX = frozenset("0123456789abcdef")


def _archive_name(top: str) -> bool:
    """Whether `top`, a name at an archive's top level, is one an image archive has."""
    if top in _ARCHIVE_NAMES:
        return True
    stem = top.removesuffix(".json").removesuffix(".tar")
    return len(stem) == 64 and set(stem) <= _HEX


def _parts(name: str) -> list[str]:
    """A member's name as components, `./` and `//` left out."""
    return [p for p in name.split("/") if p not in ("", ".")]


def _open_image_tar(path: str) -> _Tar | None:
    """The uncompressed tar at `path` as an image archive, or None for a layer.

    An image archive is a tar whose top level holds only names an image
    archive has (`_archive_name`), wherever in it `manifest.json` or
    `index.json` comes.  The first other name makes it a layer tar and ends
    the scan (a root filesystem shows one in its first entries); an archive is
    indexed to its end, a header at a time.  Archive names without
    `manifest.json`, `index.json` or `repositories` are refused, never taken
    for a layer.  A tar that does not parse is left to the layer extraction,
    which names what is wrong with it."""
    try:
        tf = tarfile.open(path, "r:")
    except (tarfile.TarError, EOFError, OSError):
        return None
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for m in tf:
            parts = _parts(m.name)
            if not parts:
                continue
            if not _archive_name(parts[0]):
                tf.close()
                return None
            members["/".join(parts)] = m
    except (tarfile.TarError, EOFError, OSError) as e:
        tf.close()
        if members:     # archive names so far: a broken archive, not a layer
            raise BadArchive(path, f"invalid tar ({e})") from None
        return None
    if not members:
        tf.close()
        return None
    if not any(marker in members for marker in _ARCHIVE_MARKERS):
        tf.close()
        raise BadArchive(path, "an image archive without manifest.json, index.json "
                               "or repositories")
    return _Tar(path, tf, members)


def _compressed_image_tar(path: str, compression: str) -> bool:
    """Whether the compressed tar at `path` starts as an image archive does:
    reading it all to find out would cost a layer import a second pass."""
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
    parts = _parts(first.name) if first is not None else []
    return bool(parts) and _archive_name(parts[0])


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
        if compression:
            if _compressed_image_tar(path, compression):
                raise BadArchive(path, f"a {compression}-compressed image archive; "
                                       "decompress it first")
            container = None
        else:
            container = _open_image_tar(path)
        if container is None:
            yield [_bare_layers([path])]
            return
    try:
        oci = container.exists("index.json")
        docker = container.exists("manifest.json")
        if oci and (not docker or container.exists("oci-layout")):
            yield _oci_layout(container)
        elif docker:
            yield _docker_manifest(container)
        elif container.exists("repositories"):
            yield _legacy_archive(container)
        else:
            raise BadArchive(path, "neither an OCI image layout nor a docker archive")
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


def descriptor_digest(desc, where: str) -> Digest:
    """The digest an OCI descriptor names; BadArchive (at `where`) when it
    is not a descriptor or names none."""
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
        digest = descriptor_digest(desc, where)
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
        digest = descriptor_digest(desc, where)
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
                   where: str, blob_name: Callable[[Digest], str] = _blob_name
                   ) -> ImageSource:
    """The image an OCI or docker v2 manifest describes; `blob_name` is where
    the container keeps a blob (`blobs/sha256/<hex>`, or `<hex>` in a `dir:`)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise BadArchive(where, "manifest has no layers list")
    cdigest = descriptor_digest(manifest.get("config"), where)
    config, _ = _read_json_blob(container, blob_name(cdigest), cdigest, where)
    diff_ids = config_diff_ids(config, f"{where}: config {cdigest}")
    descs = manifest["layers"]
    if len(descs) != len(diff_ids):
        raise BadArchive(where, f"manifest lists {len(descs)} layers, "
                                f"config {len(diff_ids)} diff_ids")
    layers = []
    for desc, diff_id in zip(descs, diff_ids):
        d = descriptor_digest(desc, where)
        size = desc.get("size")
        name = _present(container, blob_name(d), "the manifest", where)
        layers.append(LayerBlob(where=name, digest=d, diff_id=diff_id,
                                size=size if isinstance(size, int) else None,
                                open=_opener(container, name)))
    return ImageSource(config=config, layers=layers, names=names, manifest_digest=digest)


def _opener(container, name: str):
    return lambda: container.open(name)


def _present(container, name: str, named_by: str, where: str) -> str:
    """`name`, which `named_by` lists, when the container holds it: a missing
    layer is found before any is imported."""
    if not container.exists(name):
        raise BadArchive(where, f"{named_by} lists {name}, which the archive lacks")
    return name


# -- docker save archive ----------------------------------------------------------


def _docker_manifest(container) -> list[ImageSource]:
    """`manifest.json`: a list of images (docker save, podman and skopeo
    docker-archive), or one image manifest (containers/image's `dir:`, podman
    save --format docker-dir, with `<hex>` blobs beside it)."""
    where = container.path
    raw, manifest = _read_json_blob(container, "manifest.json", None, where)
    if isinstance(manifest, dict):
        return [_from_manifest(container, manifest, Digest.of_bytes(raw), [], where,
                               blob_name=lambda d: d.hex)]
    return _docker_archive(container, manifest)


def _docker_archive(container, manifest) -> list[ImageSource]:
    where = container.path
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
            name = _present(container, "/".join(clean_name(name)), "manifest.json", where)
            layers.append(LayerBlob(where=name, open=_opener(container, name),
                                    digest=_digest_in_name(name), diff_id=diff_id))
        names = _image_names(entry.get("RepoTags") or [])
        images.append(ImageSource(config=config, layers=layers, names=names))
    return images


def _image_names(tags) -> list[str]:
    """The well-formed names among `tags`, parsed (others are skipped)."""
    names = []
    for tag in tags:
        try:
            names.append(parse_image_name(tag))
        except BadReference:
            pass
    return names


# -- legacy docker archive: repositories and <id>/{json,layer.tar} ----------------------


def _legacy_archive(container) -> list[ImageSource]:
    """The archive of docker before 1.10: `repositories` maps names to the id
    of an image's top layer, each `<id>/json` names its parent; no config, no
    diffIDs.  The config is made once the layers' diffIDs are known
    (`legacy_config`), so the image id is ours, not the v1 id."""
    where = container.path
    _, repos = _read_json_blob(container, "repositories", None, where)
    if not isinstance(repos, dict):
        raise BadArchive(where, "repositories is not an object")
    tops: dict[str, list[str]] = {}
    for repo, tags in repos.items():
        if not isinstance(tags, dict):
            raise BadArchive(where, f"repositories: {repo!r} is not an object")
        for tag, top in tags.items():
            names = tops.setdefault(_v1_id(top, where), [])
            names += [n for n in _image_names([f"{repo}:{tag}"]) if n not in names]
    if not tops:
        raise BadArchive(where, "repositories names no image")
    images = []
    for top, names in tops.items():
        docs = []                              # top layer first
        layer_id: str | None = top
        while layer_id is not None:
            if len(docs) >= MAX_LEGACY_LAYERS or layer_id in (d["id"] for d in docs):
                raise BadArchive(where, f"layer {layer_id}: parent chain loops or is "
                                        f"longer than {MAX_LEGACY_LAYERS}")
            _, doc = _read_json_blob(container, _present(container, f"{layer_id}/json",
                                                         "repositories", where), None, where)
            if not isinstance(doc, dict):
                raise BadArchive(where, f"{layer_id}/json is not an object")
            docs.append({**doc, "id": layer_id})
            parent = doc.get("parent")
            layer_id = _v1_id(parent, where) if parent else None
        docs.reverse()
        layers = []
        for doc in docs:
            name = _present(container, f"{doc['id']}/layer.tar", f"{doc['id']}/json", where)
            layers.append(LayerBlob(where=name, open=_opener(container, name)))
        images.append(ImageSource(config=None, layers=layers, names=names,
                                  config_for=lambda ids, docs=docs: legacy_config(docs, ids)))
    return images


def _v1_id(value, where: str) -> str:
    try:
        return check_id(value)
    except BadReference:
        raise BadArchive(where, f"invalid layer id {value!r}") from None


def legacy_config(docs: list[dict], diff_ids: list[Digest]) -> bytes:
    """The image config docker makes when loading a legacy archive: the top
    layer's v1 JSON less its v1 fields, with `rootfs` and one `history` entry
    per layer (`docs` bottom first); keys sorted, compact."""
    config = {k: v for k, v in docs[-1].items()
              if k not in ("id", "parent", "Size", "parent_id", "layer_id", "throwaway")}
    history = []
    for doc in docs:
        cmd = (doc.get("container_config") or {}).get("Cmd") \
            if isinstance(doc.get("container_config"), dict) else None
        entry = {"created": doc.get("created"), "author": doc.get("author"),
                 "created_by": " ".join(cmd) if isinstance(cmd, list) else None,
                 "comment": doc.get("comment")}
        history.append({k: v for k, v in entry.items() if v})
    config["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in diff_ids]}
    config["history"] = history
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


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
