"""`layers als`: the additional layer stores podman reads (layers/als.py):
their entries follow the served images, each exactly what containers/storage
1.43 stats and reads; the kernel's gets only the layers it reads right; a
served image cannot be removed."""

import contextlib
import json
import os
import subprocess

import pytest

from layers import als, layout
from layers.drivers.base import mount_fstype
from layers.errors import ImageServed

from storetools import directory, driver_skip_reason, file, make_tar, oci_layout, tar_bytes

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n")])
APP1 = tar_bytes([file("app/one", "1")])
APP2 = tar_bytes([file("app/two", "2")])
WHITEOUT = tar_bytes([file("etc/.wh.os-release")])


@pytest.fixture
def images(store_env, tmp_path):
    """Two images sharing their base layer, imported from gzip OCI layouts
    (their layers keep blob digests)."""
    store = store_env.open()
    a = oci_layout(tmp_path / "a", [BASE, APP1])
    b = oci_layout(tmp_path / "b", [BASE, APP2])
    store.import_path(str(a.path), name="a")
    store.import_path(str(b.path), name="b")
    return store


def entries(store, reader=als.FSD):
    return sorted(os.listdir(als.reader_dir(store, reader)))


def blobs(store, ref):
    return [str(store.layers.get(lid).compressed_digest) for lid in store.image(ref).layers]


def test_an_entry_is_what_containers_storage_stats_and_reads(images, store_env):
    store = images
    r = store_env.ok("als", "add", "a")
    assert r.out.splitlines() == [
        "serving a: 2 layers to podman with fsd as mount_program: "
        f'additionallayerstores = ["{store.paths.als}/fsd"]',
        "2 of them to the kernel overlay or another mount program: "
        f'additionallayerstores = ["{store.paths.als}/kernel"]']
    assert entries(store) == entries(store, als.KERNEL) == sorted(blobs(store, "a"))
    for lid in store.image("a").layers:
        layer = store.layers.get(lid)
        entry = als.entry_dir(store, als.FSD, layer.compressed_digest)
        assert os.readlink(os.path.join(entry, "diff")) == store.layers.diff_dir(lid)
        info = json.loads(open(os.path.join(entry, "info"), "rb").read())
        assert info == {"compressed-diff-digest": str(layer.compressed_digest),
                        "diff-digest": str(layer.diff_id), "diff-size": layer.tar_size,
                        "compression": 0}
        # the store keeps no blob: reading it fails rather than giving wrong bytes
        assert os.path.isdir(os.path.join(entry, "blob"))
        assert os.listdir(os.path.join(entry, "blob")) == []
    assert store_env.ok("als", "ls").out == \
        f"{store.image('a').id[:12]}  a:latest  2 layers, 2 to the kernel, 0 lazy\n"


def test_entries_follow_the_served_images(images, store_env):
    store = images
    store_env.ok("als", "add", "a")
    store_env.ok("als", "add", "b")
    assert entries(store) == sorted(set(blobs(store, "a")) | set(blobs(store, "b")))
    assert store_env.ok("als", "rm", "a").out == "no longer serving a\n"
    assert entries(store) == sorted(blobs(store, "b"))       # the shared base stays
    store_env.ok("als", "rm", "b")
    assert entries(store) == entries(store, als.KERNEL) == []
    assert store_env.ok("als", "rm", "b").out == "b was not served\n"


def test_a_served_image_is_not_removed(images, store_env):
    store = images
    store_env.ok("als", "add", "a")
    r = store_env.cli("rmi", "a")
    assert (r.code, r.err) == (1, "layers: image a is served to podman "
                                  "(`layers als rm a` first)\n")
    with pytest.raises(ImageServed):
        store.rmi("a", force=True)
    store_env.ok("als", "rm", "a")
    store_env.ok("rmi", "a")


def test_an_interrupted_entry_build_is_cleared_by_the_next_change(images, store_env):
    store = images
    store_env.ok("als", "add", "a")
    leftover = os.path.join(als.reader_dir(store, als.FSD), ".0123.tmp-1-abcd")
    os.makedirs(os.path.join(leftover, "blob"))
    store_env.ok("als", "add", "b")
    assert entries(store) == sorted(set(blobs(store, "a")) | set(blobs(store, "b")))


def test_a_layer_without_a_blob_digest_is_refused(store_env, tmp_path):
    store = store_env.open()
    tar = make_tar(tmp_path / "plain.tar", [file("x", "1")])
    store.import_path(str(tar), name="plain")
    lid = store.image("plain").layers[0]
    assert store.layers.get(lid).compressed_digest is None
    r = store_env.cli("als", "add", "plain")
    assert (r.code, r.err) == (1, f"layers: image plain cannot be served to podman: layer "
                                  f"{lid} has no blob digest, which is what podman asks for\n")


def test_the_kernel_gets_no_layer_it_would_misread(store_env, tmp_path):
    """A `.wh.` file of the OCI form is a plain file to the kernel overlay; a
    lazy layer would reach it through an fsd mount, which shows no marker of
    either form: podman pulls those layers itself."""
    store = store_env.open()
    assert store.driver.form == layout.FORM_OCI
    store.import_path(str(oci_layout(tmp_path / "w", [BASE, WHITEOUT, APP1]).path), name="w")
    base, whiteout, app = store.image("w").layers
    lazy = store.layers.diff_dir(app)
    os.setxattr(lazy, layout.LAZY_XATTR, b"/run/fetcher.sock")
    os.setxattr(os.path.join(lazy, "app"), layout.KERNEL_OPAQUE_XATTR, b"y")
    r = store_env.ok("als", "add", "--mount-lazy", "w")
    assert r.out.splitlines()[1].startswith("1 of them to the kernel overlay or another "
                                            "mount program: ")
    assert entries(store) == sorted(blobs(store, "w"))
    assert entries(store, als.KERNEL) == [str(store.layers.get(base).compressed_digest)]
    assert os.readlink(os.path.join(als.entry_dir(store, als.KERNEL, store.layers.get(
        base).compressed_digest), "diff")) == store.layers.diff_dir(base)
    # once complete, the next change serves it to the kernel too, as it is
    os.removexattr(lazy, layout.LAZY_XATTR)
    os.removexattr(os.path.join(lazy, "app"), layout.KERNEL_OPAQUE_XATTR)
    store_env.ok("als", "add", "w")
    assert entries(store, als.KERNEL) == sorted(
        str(store.layers.get(lid).compressed_digest) for lid in (base, app))


def test_a_lazy_layer_reaches_the_kernel_only_when_asked(images, store_env):
    """Mounting it costs a daemon: without --mount-lazy the line says what is
    left out."""
    store = images
    base, app = store.image("a").layers
    os.setxattr(store.layers.diff_dir(app), layout.LAZY_XATTR, b"/run/fetcher.sock")
    r = store_env.ok("als", "add", "a")
    assert r.out.splitlines()[1] == ("1 of them to the kernel overlay or another mount program "
                                     "(1 lazy more with --mount-lazy): additionallayerstores = "
                                     f'["{store.paths.als}/kernel"]')
    assert entries(store, als.KERNEL) == [str(store.layers.get(base).compressed_digest)]
    assert "  2 layers, 1 to the kernel, " in store_env.ok("als", "ls").out
    os.removexattr(store.layers.diff_dir(app), layout.LAZY_XATTR)


def test_prune_keeps_a_served_image(images, store_env):
    store = images
    store_env.ok("als", "add", "a")
    removed = [label for label, _ in store.prune(kinds=("images",), all=True)]
    assert any("(b:latest)" in label for label in removed), removed
    assert not any("(a:latest)" in label for label in removed), removed
    assert entries(store) == sorted(blobs(store, "a"))


@pytest.fixture
def lazy_mounted(images, store_env):
    """Image a served with --mount-lazy, its top layer marked lazy (nothing
    reads it here, so no fetcher is needed): the kernel's entry of that layer
    is a read-only fsd mount.  (mount point, the layer's blob digest)"""
    reason = driver_skip_reason("fuse")
    if reason:
        pytest.skip(reason)
    store = images
    top = store.image("a").layers[-1]
    os.setxattr(store.layers.diff_dir(top), layout.LAZY_XATTR, b"/run/fetcher.sock")
    store_env.ok("als", "add", "--mount-lazy", "a")
    blob = store.layers.get(top).compressed_digest
    mountpoint = os.readlink(os.path.join(als.entry_dir(store, als.KERNEL, blob), "diff"))
    assert mountpoint == os.path.join(store.paths.als_mounts, blob.hex)
    assert mount_fstype(mountpoint) == "fuse.fsd"
    assert sorted(os.listdir(mountpoint)) == sorted(os.listdir(store.layers.diff_dir(top)))
    yield mountpoint, blob
    with contextlib.suppress(FileNotFoundError):      # not after a reset
        os.removexattr(store.layers.diff_dir(top), layout.LAZY_XATTR)


def test_a_lazy_layer_mount_follows_the_layer(images, store_env, lazy_mounted):
    store = images
    mountpoint, blob = lazy_mounted
    # unmounted behind the store's back (a reboot): made again by the next als command
    subprocess.run(["umount", "-l", mountpoint], check=True)
    store_env.ok("als", "add", "--mount-lazy", "a")
    assert mount_fstype(mountpoint) == "fuse.fsd"
    # complete: the entry reads the layer's dir, and the mount goes
    top = store.image("a").layers[-1]
    os.removexattr(store.layers.diff_dir(top), layout.LAZY_XATTR)
    store_env.ok("als", "add", "--mount-lazy", "a")
    entry = als.entry_dir(store, als.KERNEL, blob)
    assert os.readlink(os.path.join(entry, "diff")) == store.layers.diff_dir(top)
    assert mount_fstype(mountpoint) is None and not os.path.exists(mountpoint)
    os.setxattr(store.layers.diff_dir(top), layout.LAZY_XATTR, b"/run/fetcher.sock")


def test_als_rm_and_reset_unmount_the_lazy_layer_mounts(images, store_env, lazy_mounted):
    mountpoint, _ = lazy_mounted
    store_env.ok("als", "rm", "a")
    assert mount_fstype(mountpoint) is None and not os.path.exists(mountpoint)
    store_env.ok("als", "add", "--mount-lazy", "a")
    assert mount_fstype(mountpoint) == "fuse.fsd"
    store_env.ok("reset", "-f")
    assert mount_fstype(mountpoint) is None
