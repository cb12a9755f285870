"""The one description of the on-disk formats of a Strata store.

Store root (`graphroot`)::

    strata.json                 store marker: {"format": FORMAT, "driver": NAME,
                                "driver_reason": why it was chosen (driverchoice.py)}
    lock                        the store lock (fcntl.flock); holds the holder's pid
    layers/<chainid-hex>.json   Layer record
    layers/<chainid-hex>/diff/  the layer's content, a lowerdir
    layers/<chainid-hex>/toc    a layer pulled from a seekable blob: its table of
                                contents as fetched (estargz.py reads it, checking
                                the digest in the record)
    layers/<chainid-hex>/contents.json  the same layer's file contents by digest:
                                {"sha256:…": "relpath"}, where a pull finds
                                content the store holds (lazylayer.py)
    layers/<chainid-hex>/btrfs/ the btrfs driver's subvolume: the full tree of
                                the image up to this layer (drivers/btrfs.py)
    layers/<chainid-hex>/tar-split.gz  what rebuilds the layer's exact tar from
                                diff/ (see tarsplit.py); absent for a layer
                                whose tar replaced its own files, and for a
                                lazy layer until it is complete
    images/<id>.json            Image record (id = hex of the config digest)
    containers/<id>.json        Container record
    containers/<id>/            the driver's dirs: upper/ work/ merged/ (fuse,
                                overlay) or rootfs/ (vfs); fsd.log (fuse: what
                                fsd logs for the container's mount)
    volumes/<name>.json         Volume record
    volumes/<name>/_data/       the volume's data, bind-mounted into containers
    staging/<token>/            in-flight work of one command; its `lease`
                                file is flock'ed while the command lives
    staging/<hex>.lock          taken while one process imports that layer or image
    registry/parked/<chainid-hex>/  a layer a pull extracted and verified, not yet
    registry/parked/<chainid-hex>.json  published (its record); see parkedstore.py
    registry/blobinfo.json      blobs pulled or pushed: digest → size, media type,
                                diffID, repositories holding it (a cache)
    als/<reader>/<blob digest>/ podman's additional layer stores (als.py), one
                                per kind of reader (fsd, kernel): `diff`
                                (symlink to the layer's diff/), `info`, `blob`
    als.json                    the images served there: {"images": [ids],
                                "mount_lazy": [ids]} (als.py)

Runtime root (`runroot`)::

    <store-key>/mounts.json     mount registry: container id → mount point,
                                count, daemon pid (store-key derives from the
                                graphroot, so stores never share a registry)
    <store-key>/fetcher.sock    the fetcher's socket (fetcher.py), while it runs
    <store-key>/fetcher.pid     its pid, flock'ed while it runs
    <store-key>/fetcher.log     one line per failure of a fetch
    <store-key>/als/<blob hex>  read-only fsd mount of a lazy layer, for the
                                kernel overlay (als.py); its log beside it

A lazy layer (lazylayer.py: pulled with `pull --lazy`, its record's `lazy`
set) has a placeholder tree as its diff/: every entry of the layer's tar as
extraction makes it, but a regular file whose content is still in the
registry is a sparse file of its full size carrying the xattr LAZY_XATTR
(empty value), removed once its content is written, verified and synced.
The diff dir itself carries LAZY_XATTR = the fetcher socket's absolute path
while any file in it is incomplete.

Markers inside layer dirs and uppers (OCI image spec and kernel overlayfs):
whiteouts are `.wh.NAME` files (OCI form) or char devices 0/0 (overlay form);
an opaque directory holds `.wh..wh..opq` (OCI) or carries the
`trusted.overlay.opaque` / `user.overlay.opaque` xattr set to `y`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from .digest import Digest, check_id
from .errors import BadReference

FORMAT = 1
MARKER = "strata.json"
LOCK = "lock"
LAYERS = "layers"
IMAGES = "images"
CONTAINERS = "containers"
VOLUMES = "volumes"
VOLUME_DATA = "_data"
STAGING = "staging"
REGISTRY = "registry"
LEASE = "lease"
MOUNTS = "mounts.json"
SPLIT = "tar-split.gz"
TOC = "toc"
CONTENTS = "contents.json"
FETCHER_SOCKET = "fetcher.sock"
FETCHER_PID = "fetcher.pid"
FETCHER_LOG = "fetcher.log"
LAYER_DIFF = "diff"
LAYER_SUBVOLUME = "btrfs"
ALS = "als"
ALS_RECORD = "als.json"

# Marks of a directory that is some other program's store: refused.
FOREIGN_STORES = (
    ("overlay-layers/layers.json", "it holds a containers/storage store"),
    ("vfs-layers/layers.json", "it holds a containers/storage store"),
    ("btrfs-layers/layers.json", "it holds a containers/storage store"),
    ("storage.lock", "it holds a containers/storage store"),
)

# Marker forms --------------------------------------------------------------

WHITEOUT_PREFIX = ".wh."
OPAQUE_NAME = ".wh..wh..opq"
# aufs bookkeeping (".wh..wh.plnk", ".wh..wh.aufs"): meaningless, skipped.
META_PREFIX = ".wh..wh."
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque",
                 "user.fuseoverlayfs.opaque")
KERNEL_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERRIDE_STAT_XATTR = "user.containers.override_stat"
# The store's own xattrs (a lazy file, a lazy layer's root: see above).
STRATA_XATTR_PREFIX = "user.strata."
LAZY_XATTR = "user.strata.lazy"
# xattrs an archive may never set: they would forge overlay state, owners,
# or a lazy file (whose placeholder content would then be served).
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.",
                          "user.fuseoverlayfs.", "security.fuseoverlayfs.",
                          OVERRIDE_STAT_XATTR, STRATA_XATTR_PREFIX)

FORM_OCI = "oci"          # whiteouts as .wh. files: what fsd and vfs read
FORM_OVERLAY = "overlay"  # char dev 0/0 and trusted.overlay.opaque: the kernel's


def parse_override_stat(raw: bytes) -> tuple[int, int, int, str | None] | None:
    """`uid:gid:0mode[:type]` (containers/storage's override_stat, as fsd's
    `xattr_permissions=2` writes it) → (uid, gid, permission bits, type), the
    type being None, `file`, `dir`, `symlink`, `pipe`, `socket`, `char-MAJ-MIN`
    or `block-MAJ-MIN`; None when malformed."""
    try:
        fields = raw.decode().split(":")
        uid, gid, mode = int(fields[0]), int(fields[1]), int(fields[2], 8)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return uid, gid, mode & 0o7777, fields[3] if len(fields) > 3 else None


def seen_owner_mode(path: str, st: os.stat_result) -> tuple[int, int, int, str | None]:
    """(uid, gid, permission bits, override type) of the entry at `path`
    (lstat `st`) as a container sees them: its `override_stat` xattr in a
    rootless store, else the real ones (type None)."""
    if not stat.S_ISLNK(st.st_mode):
        try:
            found = parse_override_stat(
                os.getxattr(path, OVERRIDE_STAT_XATTR, follow_symlinks=False))
        except OSError:
            found = None
        if found is not None:
            return found
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), None


def format_override_stat(uid: int, gid: int, mode: int, kind: str) -> bytes:
    return f"{uid}:{gid}:0{mode & 0o7777:03o}:{kind}".encode()


def is_private_xattr(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def is_whiteout_dev(st: os.stat_result) -> bool:
    """A char device 0/0: the overlay form of a whiteout."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def whiteout_target(name: str) -> str | None:
    """`.wh.NAME` → NAME; None for other names, the opaque and meta markers."""
    if name.startswith(WHITEOUT_PREFIX) and not name.startswith(META_PREFIX):
        target = name[len(WHITEOUT_PREFIX):]
        return target or None
    return None


def is_opaque_dir(path: str, names: set[str] | None = None) -> bool:
    """Whether the directory at `path` is opaque, in either form."""
    if names is not None and OPAQUE_NAME in names:
        return True
    if names is None and os.path.lexists(os.path.join(path, OPAQUE_NAME)):
        return True
    for xattr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, xattr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")


def check_volume_name(text: str) -> str:
    """A volume name, safe as a file name (never `.`-led, no `/`)."""
    if not isinstance(text, str) or not _VOLUME_NAME.fullmatch(text):
        raise BadReference(str(text), "volume name")
    return text


def record_file(directory: str, key: str) -> str:
    """`<dir>/<key>.json`: where every record lives (key: 64 hex, checked)."""
    return os.path.join(directory, check_id(key) + ".json")


class StorePaths:
    """Paths of one store.  Every id passes `check_id`/`Digest` first."""

    def __init__(self, root: str, runroot: str):
        self.root = os.path.abspath(root)
        key = hashlib.sha256(os.path.realpath(self.root).encode()).hexdigest()[:16]
        self.runroot = os.path.join(os.path.abspath(runroot), key)

    @property
    def marker(self) -> str:
        return os.path.join(self.root, MARKER)

    @property
    def lock(self) -> str:
        return os.path.join(self.root, LOCK)

    @property
    def layers(self) -> str:
        return os.path.join(self.root, LAYERS)

    @property
    def images(self) -> str:
        return os.path.join(self.root, IMAGES)

    @property
    def containers(self) -> str:
        return os.path.join(self.root, CONTAINERS)

    @property
    def volumes(self) -> str:
        return os.path.join(self.root, VOLUMES)

    def volume_record(self, name: str) -> str:
        return os.path.join(self.volumes, check_volume_name(name) + ".json")

    def volume_dir(self, name: str) -> str:
        return os.path.join(self.volumes, check_volume_name(name))

    def volume_data(self, name: str) -> str:
        return os.path.join(self.volume_dir(name), VOLUME_DATA)

    @property
    def staging(self) -> str:
        return os.path.join(self.root, STAGING)

    @property
    def parked(self) -> str:
        return os.path.join(self.root, REGISTRY, "parked")

    @property
    def blobinfo(self) -> str:
        return os.path.join(self.root, REGISTRY, "blobinfo.json")

    @property
    def als(self) -> str:
        return os.path.join(self.root, ALS)

    @property
    def als_record(self) -> str:
        return os.path.join(self.root, ALS_RECORD)

    @property
    def als_mounts(self) -> str:
        return os.path.join(self.runroot, ALS)

    @property
    def mounts(self) -> str:
        return os.path.join(self.runroot, MOUNTS)

    @property
    def fetcher_socket(self) -> str:
        return os.path.join(self.runroot, FETCHER_SOCKET)

    @property
    def fetcher_pid(self) -> str:
        return os.path.join(self.runroot, FETCHER_PID)

    @property
    def fetcher_log(self) -> str:
        return os.path.join(self.runroot, FETCHER_LOG)

    def layer_dir(self, layer_id: Digest) -> str:
        return os.path.join(self.layers, layer_id.hex)

    def layer_diff(self, layer_id: Digest) -> str:
        return os.path.join(self.layers, layer_id.hex, "diff")

    def layer_split(self, layer_id: Digest) -> str:
        return os.path.join(self.layers, layer_id.hex, SPLIT)

    def layer_toc(self, layer_id: Digest) -> str:
        return os.path.join(self.layers, layer_id.hex, TOC)

    def layer_contents(self, layer_id: Digest) -> str:
        return os.path.join(self.layers, layer_id.hex, CONTENTS)

    def layer_extract_lock(self, layer_id: Digest) -> str:
        return os.path.join(self.staging, layer_id.hex + ".lock")

    def image_import_lock(self, image_id: str) -> str:
        return os.path.join(self.staging, check_id(image_id) + ".lock")

    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.containers, check_id(container_id))

    def record_dirs(self) -> tuple[str, ...]:
        return (self.layers, self.images, self.containers, self.volumes, self.staging)
