"""Images of the store served to podman as an additional layer store (ALS),
so that `podman pull`/`run` takes their layers from here instead of pulling
the blobs: a lazy layer (`pull --lazy`) then reaches podman still lazy, and
its files are fetched when fsd, podman's mount program, opens them.

What podman 4.3 reads (containers/storage 1.43 `drivers/overlay/overlay.go`,
containers/image 5.23 `storage/storage_dest.go`):
- storage.conf `[storage.options] additionallayerstores = ["DIR"]` (the
  overlay driver only).  Before copying a layer, podman stats
  `DIR/<blob digest>/diff`, `info` and `blob` (with `DIR:ref`,
  `DIR/<base64 of the image reference>/<blob digest>/`: not used here, since
  the store knows each layer by its blob digest whatever name podman pulls it
  by).  All three there: the blob is not pulled; podman records a layer
  whose `diff` is a symlink to `DIR/<digest>/diff` and mounts that as a
  lowerdir.  A plain directory does: nothing has to answer lookups.
- `info`: JSON of containers/storage's layer record; podman takes
  `diff-digest` (the diffID: the layer's id is computed from it),
  `diff-size`, `compressed-diff-digest`, `compressed-size`, `compression`.
- `blob`: read only when podman reads the layer back out (`push`, `save`)
  as the layer's blob in the `compression` `info` names.  The store keeps
  no blob, so `blob` is an empty directory: such a `push` or `save` fails
  reading it ("is a directory") instead of sending wrong bytes.
- On each use podman creates and removes `DIR/<digest>/use`, and when done
  with a handle rmdirs `DIR/<digest>` (ENOTEMPTY here, which it logs as a
  warning); these are GC hints for an ALS that counts users, which this one
  does not: an image stays served until `layers als rm`.

A layer's diff dir is read as it is by whoever mounts it, so what may be
served depends on podman's driver; there is one `DIR` per kind of reader,
under `<graphroot>/als/` (`layout.StorePaths.als`):
- `fsd/`, for a podman whose mount_program is fsd: every layer.  fsd reads
  both marker forms and fetches a lazy layer's files when they are opened.
  (A rootless store keeps owners in override_stat, which podman has fsd
  read, `xattr_permissions=2`, only when it has a `force_mask`.)
- `kernel/`, for the kernel overlay (or another mount program): the layers
  the kernel reads as the layer.  A complete one is its diff dir when the
  store keeps the overlay form or the layer holds no `.wh.` marker (the
  kernel would read a `.wh.` file as a file), and, in a rootless store,
  with every owner, mode and type on disk as the layer has them (the kernel
  reads no override_stat).  A lazy one holding no marker
  at all, of an image served with `mount_lazy`, is a read-only fsd mount of
  its diff dir (a daemon per layer), made here, in the runroot
  (`layout.StorePaths.als_mounts`): the kernel would read a lazy file as
  zeros, but reading through fsd fetches it on open.  (fsd shows
  no whiteout in such a mount, so a lazy layer with markers is not served
  to the kernel.)  podman pulls the layers left out itself.
Each holds one entry per blob digest, `diff` a symlink to what the reader
reads.  Which images are served is the record `als.json` (image ids, and
those served with `mount_lazy`); the entries are made to match it under
the store lock (`_sync`, at every `als` command), each built under a
temporary name and renamed into place; a `diff` whose target changed (a
lazy layer completed: its mount is no longer needed) is replaced by a
rename, and a mount no entry names is unmounted once no overlay uses it.
A mount gone (a reboot) is made again at the next `als` command; until then
podman's containers on it fail to mount rather than read an empty layer.
`rmi` refuses a served image and `prune` keeps it (podman's layers point
into it).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat

from . import fsutil, layout, lazylayer
from .digest import Digest
from .drivers.base import Mounted, mount_fstype
from .drivers.fuse import FuseDriver
from .errors import CorruptRecord, DriverError, ImageServed, NotServable
from .records import Image, Layer
from .storecore import StoreCore

# containers/storage's archive.Compression: the `info` field `compression`.
UNCOMPRESSED = 0
# The readers, each with its dir under als/: see above.
FSD, KERNEL = "fsd", "kernel"
READERS = (FSD, KERNEL)


def reader_dir(store: StoreCore, reader: str) -> str:
    return os.path.join(store.paths.als, reader)


def storage_conf_line(store: StoreCore, reader: str) -> str:
    """What podman's storage.conf needs, under `[storage.options]`."""
    return f'additionallayerstores = ["{reader_dir(store, reader)}"]'


def add(store: StoreCore, ref: str, mount_lazy: bool = False) -> list[str]:
    """Serve the image `ref`: an entry for each of its layers (with
    `mount_lazy`, for the kernel its lazy ones too: module doc).
    NotServable when a layer has no blob digest (imported from a plain tar):
    podman asks for a layer by the digest of its blob.  With lazy layers the
    store's fetcher is started (before the lock: it opens the store), so that
    the fsd podman runs can ask it for their files."""
    lazylayer.start_fetcher(store.paths, store.config.root, store.config.runroot,
                            map(store.layers.get, store.images.resolve(ref).layers))
    with store.lock:
        image = store.images.resolve(ref)
        layers = _layers_of(store, image)
        missing = [str(layer.id) for layer in layers if layer.compressed_digest is None]
        if missing:
            raise NotServable(ref, f"layer {missing[0]} has no blob digest, which is "
                                   "what podman asks for")
        served, mounted = _load(store)
        mounted = mounted | {image.id} if mount_lazy else mounted - {image.id}
        _save(store, served | {image.id}, mounted)
        to_kernel, unmounted = _sync(store)
        blobs = {str(layer.compressed_digest) for layer in layers}
        kernel, unmounted = len(blobs & to_kernel), len(blobs & unmounted)
    return [f"serving {ref}: {len(layers)} layers to podman with fsd as mount_program: "
            f"{storage_conf_line(store, FSD)}",
            f"{kernel} of them to the kernel overlay or another mount program"
            + (f" ({unmounted} lazy more with --mount-lazy)" if unmounted else "")
            + f": {storage_conf_line(store, KERNEL)}"]


def remove(store: StoreCore, ref: str) -> list[str]:
    """Serve the image `ref` no more: the entries of its layers that no other
    served image has go (podman's layers made from them break)."""
    with store.lock:
        image = store.images.resolve(ref)
        served, mounted = _load(store)
        if image.id not in served:
            return [f"{ref} was not served"]
        _save(store, served - {image.id}, mounted - {image.id})
        _sync(store)
    return [f"no longer serving {ref}"]


def listing(store: StoreCore) -> list[str]:
    """A line per served image: its id, names, layers, how many of them the
    kernel gets and how many are lazy still."""
    with store.lock:
        kernel = set(os.listdir(reader_dir(store, KERNEL))) \
            if os.path.isdir(reader_dir(store, KERNEL)) else set()
        out = []
        for image_id in sorted(_load(store)[0]):
            image = store.images.get(image_id)
            if image is None:
                continue
            layers = _layers_of(store, image)
            to_kernel = sum(1 for layer in layers if str(layer.compressed_digest) in kernel)
            lazy = sum(1 for layer in layers if layer.lazy is not None)
            out.append(f"{image.id[:12]}  {','.join(image.names) or '<none>'}  "
                       f"{len(layers)} layers, {to_kernel} to the kernel, {lazy} lazy")
        return out


def served_ids(store: StoreCore) -> set[str]:
    """Ids of the served images (the caller holds the lock): `prune` keeps them."""
    return _load(store)[0]


def refuse_served(store: StoreCore, image: Image, ref: str) -> None:
    """ImageServed when `image` is served (the caller holds the lock)."""
    if image.id in _load(store)[0]:
        raise ImageServed(ref)


def entry_dir(store: StoreCore, reader: str, blob: Digest) -> str:
    return os.path.join(reader_dir(store, reader), str(blob))


def info_json(layer: Layer) -> bytes:
    """The `info` file: containers/storage's layer record, as much of it as
    podman takes from an ALS (`blob` holds nothing to decompress)."""
    doc = {"compressed-diff-digest": str(layer.compressed_digest),
           "diff-digest": str(layer.diff_id), "diff-size": layer.tar_size,
           "compression": UNCOMPRESSED}
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


# -- under the lock ---------------------------------------------------------------

def _layers_of(store: StoreCore, image: Image) -> list[Layer]:
    out = []
    for lid in image.layers:
        layer = store.layers.get(lid)
        if layer is None:
            raise CorruptRecord(store.paths.als_record, f"image {image.id}: layer {lid} is missing")
        out.append(layer)
    return out


def _load(store: StoreCore) -> tuple[set[str], set[str]]:
    """(ids of the served images, those served with `mount_lazy`)."""
    try:
        with open(store.paths.als_record, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return set(), set()
    except ValueError as e:
        raise CorruptRecord(store.paths.als_record, str(e)) from None
    if not isinstance(doc, dict) or any(
            not isinstance(doc.get(key), list) or not all(isinstance(i, str) for i in doc[key])
            for key in ("images", "mount_lazy")):
        raise CorruptRecord(store.paths.als_record,
                            'expected {"images": [ids], "mount_lazy": [ids]}')
    return set(doc["images"]), set(doc["mount_lazy"])


def _save(store: StoreCore, images: set[str], mount_lazy: set[str]) -> None:
    doc = {"images": sorted(images), "mount_lazy": sorted(mount_lazy)}
    fsutil.atomic_write(store.paths.als_record, json.dumps(doc).encode() + b"\n", mode=0o600)


def _sync(store: StoreCore) -> tuple[set[str], set[str]]:
    """Make the entries under `als/` those of the served images' layers, for
    each reader what it reads right (module doc).  A served image removed
    behind our back is dropped.  The blob digests served to the kernel, and
    those it would read through a mount but was not given for want of
    `mount_lazy`."""
    served, mounted = _load(store)
    present = {i for i in served if store.images.get(i) is not None}
    if present != served:
        _save(store, present, mounted & present)
    layers: dict[str, Layer] = {}
    mount_lazy: set[str] = set()       # blob digests of layers that may be mounted
    for image_id in present:
        for layer in _layers_of(store, store.images.get(image_id)):
            if layer.compressed_digest is not None:
                layers[str(layer.compressed_digest)] = layer
                if image_id in mounted:
                    mount_lazy.add(str(layer.compressed_digest))
    os.makedirs(store.paths.als, mode=0o755, exist_ok=True)
    kernel: dict[str, tuple[str, Layer]] = {}
    unmounted: set[str] = set()
    for name, layer in layers.items():
        diff = store.layers.diff_dir(layer.id)
        view = _kernel_view(store, layer)
        if view is None:
            continue
        if view != diff:
            if name not in mount_lazy:
                unmounted.add(name)
                continue
            _ensure_mounted(view, diff)
        kernel[name] = (view, layer)
    _sync_reader(store, FSD, {name: (store.layers.diff_dir(layer.id), layer)
                              for name, layer in layers.items()})
    _sync_reader(store, KERNEL, kernel)
    _unmount_unused(store, {view for view, _ in kernel.values()})
    return set(kernel), unmounted


def _sync_reader(store: StoreCore, reader: str,
                 wanted: dict[str, tuple[str, Layer]]) -> None:
    """The reader's entries: one per blob digest in `wanted`, its `diff` a
    symlink to the path given with the layer; missing ones built aside and
    renamed in, a changed `diff` replaced, others (and leftovers of an
    interrupted build) removed."""
    directory = reader_dir(store, reader)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for name in os.listdir(directory):
        if name not in wanted:
            fsutil.remove_tree(os.path.join(directory, name))
    for name, (target, layer) in sorted(wanted.items()):
        entry = os.path.join(directory, name)
        if not os.path.lexists(entry):
            _build_entry(entry, target, layer)
        elif os.readlink(os.path.join(entry, "diff")) != target:
            _replace_symlink(os.path.join(entry, "diff"), target)
    fsutil.fsync_dir(directory)


def _kernel_view(store: StoreCore, layer: Layer) -> str | None:
    """What the kernel overlay may read as the layer (module doc): its diff
    dir, the mount point of an fsd mount of it (a lazy layer), or None."""
    diff = store.layers.diff_dir(layer.id)
    try:
        os.getxattr(diff, layout.LAZY_XATTR)
        lazy = True
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        lazy = False
    if _kernel_misreads(store, diff, lazy):
        return None
    return os.path.join(store.paths.als_mounts, layer.compressed_digest.hex) if lazy else diff


def _kernel_misreads(store: StoreCore, tree: str, lazy: bool) -> bool:
    """Whether the kernel overlay would read `tree` otherwise than the layer
    is: a `.wh.` name (unless the store keeps the overlay form), any marker
    at all when `lazy` (fsd's mount of it shows none), or an owner, mode or
    type kept in override_stat (a rootless store: the kernel shows the
    files' own, the store's user being a rootless podman's root)."""
    markers = lazy or store.driver.form != layout.FORM_OVERLAY
    for parent, dirs, files in os.walk(tree):
        names = dirs + files
        if markers and any(n.startswith(layout.WHITEOUT_PREFIX) for n in names):
            return True
        if lazy and layout.is_opaque_dir(parent, set(names)):
            return True
        if not (lazy or store.override_stat):
            continue
        for path in [parent, *(os.path.join(parent, n) for n in files)]:
            st = os.lstat(path)
            if lazy and layout.is_whiteout_dev(st):
                return True
            if store.override_stat and not stat.S_ISLNK(st.st_mode):
                uid, gid, mode, kind = layout.seen_owner_mode(path, st)
                if (uid, gid) != (0, 0) or mode != stat.S_IMODE(st.st_mode) \
                        or kind not in (None, "file", "dir"):
                    return True
    return False


def _ensure_mounted(mountpoint: str, diff: str) -> None:
    """A live read-only fsd mount of the lazy layer `diff` at `mountpoint`; a
    dead one (its daemon gone) is unmounted and made again."""
    if mount_fstype(mountpoint) is not None:
        try:
            os.stat(mountpoint)
            return
        except OSError:
            FuseDriver().umount("", Mounted(mountpoint, None), lazy=True)
    os.makedirs(mountpoint, mode=0o755, exist_ok=True)
    others = ("allow_other",) if _others_may_read() else ()
    FuseDriver().mount_read_only([diff], mountpoint, (*others, f"logfile={mountpoint}.log"))


def _others_may_read() -> bool:
    """Whether a mount of ours may let other users in (`allow_other`): a
    container's processes run as other users than the store's.  Root may; a
    user only where /etc/fuse.conf says `user_allow_other`, else the
    container's root (the user, rootless) alone reads the mount."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in f)
    except FileNotFoundError:
        return False


def _unmount_unused(store: StoreCore, views: set[str]) -> None:
    """Unmount the fsd mounts no entry names, and remove their mount points;
    one an overlay still uses (busy) stays until a later `als` command."""
    for name in _listdir(store.paths.als_mounts):
        mountpoint = os.path.join(store.paths.als_mounts, name)
        if name.endswith(".log") or mountpoint in views:
            continue
        try:
            FuseDriver().umount("", Mounted(mountpoint, None))
        except DriverError:
            continue
        os.rmdir(mountpoint)
        fsutil.remove_file(mountpoint + ".log")


def unmount_all(store: StoreCore) -> None:
    """Unmount every fsd mount made for the kernel (`reset`); DriverError
    when one is busy."""
    _unmount_unused(store, set())
    leftover = [n for n in _listdir(store.paths.als_mounts) if not n.endswith(".log")]
    if leftover:
        raise DriverError("fuse", f"{os.path.join(store.paths.als_mounts, leftover[0])} is "
                                  "busy: a container of podman's still reads it")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _replace_symlink(path: str, target: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    os.rename(tmp, path)


def _build_entry(entry: str, target: str, layer: Layer) -> None:
    directory, name = os.path.split(entry)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp, 0o755)
    try:
        os.symlink(target, os.path.join(tmp, "diff"))
        fsutil.atomic_write(os.path.join(tmp, "info"), info_json(layer))
        os.mkdir(os.path.join(tmp, "blob"), 0o755)
        os.rename(tmp, entry)
    except BaseException:
        fsutil.remove_tree(tmp)
        raise
