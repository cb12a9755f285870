"""The store facade on the vfs driver (no mounts): import, sharing, rules
across records, repair of leftovers, concurrency with the lock."""

import fcntl
import json
import os
import sys
import threading

import pytest

from layers import fsutil, ingest
from layers.digest import Digest
from layers.layout import record_file
from layers.errors import (ContainerMounted, DigestMismatch, ImageInUse, NameInUse,
                           NotAStore, StoreMismatch)
from layers.records import Layer, encode
from layers.source import ImageSource, LayerBlob
from layers.store import Store

from storetools import StoreEnv, directory, file, make_tar, oci_layout, tar_bytes

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n"),
                  file("bin/sh", "sh", mode=0o755)])
MID = tar_bytes([file("etc/.wh.os-release"), file("usr/lib/libx.so", "x" * 5000)])
APP1 = tar_bytes([file("app/one", "1")])
APP2 = tar_bytes([file("app/two", "2")])


def layer_dirs(store):
    return sorted(n for n in os.listdir(store.paths.layers) if not n.endswith(".json"))


def test_bare_tar_import_is_idempotent_and_extracts_once(store_env, tmp_path, monkeypatch):
    tar = make_tar(tmp_path / "l.tar", [file("a", "x")], "gzip")
    store = store_env.open()
    (image,) = store.import_path(str(tar), name="one")
    assert image.names == ("one:latest",)
    (lid,) = image.layers
    layer = store.layers.get(lid)
    assert layer.compressed_digest is not None and layer.tar_size > 0 and layer.size > 0
    again = store.import_path(str(tar), name="two")[0]
    assert again.id == image.id and set(again.names) == {"one:latest", "two:latest"}
    assert layer_dirs(store) == [lid.hex]


def test_existing_layers_are_not_extracted_again(store_env, tmp_path, monkeypatch):
    store = store_env.open()
    a = oci_layout(tmp_path / "a", [BASE, MID, APP1])
    b = oci_layout(tmp_path / "b", [BASE, MID, APP2])
    store.import_path(str(a.path), name="a")
    before = {n: os.stat(os.path.join(store.paths.layers, n)).st_ino
              for n in layer_dirs(store)}
    calls = []
    real = ingest.extract_layer
    monkeypatch.setattr(ingest, "extract_layer",
                        lambda f, dest, *a, **k: calls.append(dest) or real(f, dest, *a, **k))
    (img_b,) = store.import_path(str(b.path), name="b")
    assert len(calls) == 1                        # only APP2
    assert [str(x) for x in img_b.layers] == b.chain_ids
    after = {n: os.stat(os.path.join(store.paths.layers, n)).st_ino
             for n in layer_dirs(store)}
    assert {k: after[k] for k in before} == before   # shared dirs untouched
    assert len(after) == 4
    layer = store.layers.get(Digest.parse(b.chain_ids[1]))
    assert layer.parent == Digest.parse(b.chain_ids[0])
    assert str(layer.diff_id) == b.diff_ids[1]


def test_digest_mismatch_names_both_and_leaves_nothing(store_env, tmp_path):
    store = store_env.open()
    built = oci_layout(tmp_path / "img", [BASE, APP1], corrupt_layer=1)
    with pytest.raises(DigestMismatch) as e:
        store.import_path(str(built.path))
    assert str(e.value).startswith("digest mismatch for layer 2/2 (blobs/sha256/")
    assert e.value.expected != e.value.got and e.value.got in str(e.value)
    assert store.list_images() == [] and store.list_layers() == []
    assert layer_dirs(store) == []


def test_rmi_rules(store_env, tmp_path):
    store = store_env.open()
    store.import_path(str(oci_layout(tmp_path / "a", [BASE, APP1]).path), name="app:1")
    store.import_path(str(oci_layout(tmp_path / "b", [BASE, APP2]).path), name="app:2")
    store.tag("app:1", ["alias"])
    assert store.rmi("alias") == ["untagged alias:latest"]
    c = store.create("app:1", name="c1")
    with pytest.raises(ImageInUse) as e:
        store.rmi("app:1")
    assert str(e.value) == ("image app:1 is in use by container(s) c1; "
                            "remove them first or use -f")
    done = store.rmi("app:1", force=True)
    assert done[0] == "removed container c1" and done[1].startswith("removed image ")
    assert len(done) == 3                           # APP1's layer went, BASE stays
    assert store.list_containers() == []
    assert len(layer_dirs(store)) == 2
    assert not os.path.exists(store.containers.container_dir(c.id))


def test_mount_counts_and_rm_refuses_while_mounted(store_env, tmp_path):
    store = store_env.open()
    store.import_path(str(make_tar(tmp_path / "l.tar", [file("f", "x")])), name="x")
    store.create("x", name="c1")
    with pytest.raises(NameInUse) as e:
        store.create("x", name="c1")
    assert str(e.value).startswith("name c1 is already used by container ")
    mp = store.mount("c1")
    assert store.mount("c1") == mp
    assert store.umount("c1") == 1
    with pytest.raises(ContainerMounted) as e:
        store.rm("c1")
    assert str(e.value) == "container c1 is mounted (1x); umount it first or use -f"
    assert store.umount("c1") == 0
    store.rm("c1")
    assert store.list_containers() == []


def test_vfs_container_gets_the_merged_tree(store_env, tmp_path):
    store = store_env.open()
    store.import_path(str(oci_layout(tmp_path / "a", [BASE, MID, APP1]).path), name="a")
    store.create("a", name="c")
    mp = store.mount("c")
    assert sorted(os.listdir(mp)) == ["app", "bin", "etc", "usr"]
    assert os.listdir(os.path.join(mp, "etc")) == []
    with open(os.path.join(mp, "new"), "w") as f:
        f.write("n")
    os.unlink(os.path.join(mp, "bin", "sh"))
    assert store.diff("c") == [("D", "/bin/sh"), ("A", "/new")]
    store.umount("c")


def test_repair_removes_leftovers_of_dead_commands(store_env, tmp_path):
    store = store_env.open()
    (image,) = store.import_path(str(make_tar(tmp_path / "l.tar", [file("f", "x")])),
                                 name="keep")
    paths = store.paths
    # a staging dir whose owner died, a temp record, an interrupted layer
    os.makedirs(os.path.join(paths.staging, "999-dead"))
    open(os.path.join(paths.images, ".x.json.tmp-1-ab"), "w").close()
    half = Digest("e" * 64)
    os.makedirs(paths.layer_diff(half))
    rec = Layer(id=half, diff_id=half, parent=None, compressed_digest=None, created=0,
                tar_size=0, size=0, incomplete=True, lease="999-dead")
    fsutil.atomic_write(record_file(paths.layers, half.hex), encode(rec))
    # and a complete layer nothing refers to (crash between rmi's steps)
    orphan = Digest("f" * 64)
    os.makedirs(paths.layer_diff(orphan))
    fsutil.atomic_write(record_file(paths.layers, orphan.hex), encode(
        Layer(id=orphan, diff_id=orphan, parent=None, compressed_digest=None, created=0,
              tar_size=0, size=0)))
    again = store_env.open()
    assert sorted(again.repaired) == sorted([
        "removed staging leftover 999-dead",
        f"removed temp file {paths.images}/.x.json.tmp-1-ab",
        f"removed interrupted layer {half.short}",
        f"removed unreferenced layer {orphan.short}",
    ])
    assert layer_dirs(again) == [image.layers[0].hex]


def test_reads_answer_while_an_import_extracts(store_env, tmp_path):
    store = store_env.open()
    raw = tar_bytes([file(f"f{i}", "x" * 1000) for i in range(50)])
    release = threading.Event()
    started = threading.Event()

    class Slow:
        def __init__(self):
            self.pos = 0

        def read(self, n=-1):
            if self.pos > 4096:
                started.set()
                release.wait(10)
            n = 1024 if n < 0 else min(n, 1024)
            data = raw[self.pos:self.pos + n]
            self.pos += len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

    src = ImageSource(config=None, layers=[LayerBlob(where="slow", open=Slow)])
    errors = []
    t = threading.Thread(target=lambda: _catch(errors, store.import_source, src, ["slow"]))
    t.start()
    try:
        assert started.wait(10)
        reader = Store.open(store_env.config(), lock_timeout=1.0)
        assert reader.list_images() == []          # incomplete work stays invisible
    finally:
        release.set()
        t.join(20)
    assert errors == []
    assert [i.names for i in store.list_images()] == [("slow:latest",)]


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as e:
        errors.append(e)


def test_refuses_foreign_and_unknown_dirs(tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "overlay-layers").mkdir(parents=True)
    (foreign / "overlay-layers" / "layers.json").write_text("[]")
    env = StoreEnv(tmp_path)
    env.root = foreign
    with pytest.raises(NotAStore) as e:
        env.open()
    assert str(e.value) == f"refusing to use {foreign}: it holds a containers/storage store"
    assert sorted(os.listdir(foreign)) == ["overlay-layers"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.jpg").write_text("")
    env.root = other
    with pytest.raises(NotAStore) as e:
        env.open()
    assert str(e.value) == f"refusing to use {other}: not a Strata store and not empty"


def test_driver_is_recorded(store_env):
    store_env.open()
    marker = json.loads((store_env.root / "strata.json").read_text())
    assert marker["driver"] == "vfs" and marker["format"] == 1
    store_env.driver = "overlay"
    with pytest.raises(StoreMismatch) as e:
        store_env.open()
    assert str(e.value) == (f"store {store_env.root}: uses the vfs driver, not overlay; "
                            "`layers reset` to switch")
    store_env.driver = "vfs"


def test_inspect(store_env, tmp_path):
    store = store_env.open()
    built = oci_layout(tmp_path / "a", [BASE, APP1])
    (image,) = store.import_path(str(built.path), name="a:1")
    c = store.create("a:1", name="web")
    info = store.inspect("a:1")
    assert info["type"] == "image" and info["layers"] == built.chain_ids
    assert info["config"]["rootfs"]["diff_ids"] == built.diff_ids
    assert store.inspect("web")["id"] == c.id
    layer = store.inspect(built.chain_ids[1])
    assert layer["type"] == "layer" and layer["diff_id"] == built.diff_ids[1]
    assert layer["parent"] == built.chain_ids[0]
    assert store.inspect(image.id[:8])["type"] == "image"


def test_layer_tars_stack_into_one_image(store_env, tmp_path):
    paths = []
    for i, raw in enumerate([BASE, MID, APP1]):
        paths.append(str(tmp_path / f"l{i}.tar"))
        (tmp_path / f"l{i}.tar").write_bytes(raw)
    store = store_env.open()
    (image,) = store.import_path(paths, name="stack:1")
    built = oci_layout(tmp_path / "same", [BASE, MID, APP1])
    assert [str(x) for x in image.layers] == built.chain_ids
    assert json.loads(image.config)["rootfs"]["diff_ids"] == built.diff_ids
    (again,) = store.import_path(paths)
    assert again.id == image.id
    store.create("stack:1", name="c")
    assert sorted(os.listdir(store.mount("c"))) == ["app", "bin", "etc", "usr"]
    store.umount("c")


def test_an_interrupted_initialization_is_taken_up(tmp_path):
    env = StoreEnv(tmp_path)
    env.root.mkdir()
    for d in ("layers", "staging"):
        (env.root / d).mkdir()
    (env.root / "lock").write_text("123\n")
    store = env.open()
    assert store.list_images() == []
    assert (env.root / "strata.json").exists()


def test_reset_removes_the_store_in_one_rename(store_env, tmp_path):
    store = store_env.open()
    store.import_path(str(make_tar(tmp_path / "l.tar", [file("f", "x")])), name="x")
    leftover = tmp_path / ".store.strata-removing-dead"
    (leftover / "layers").mkdir(parents=True)
    assert store.reset() == [f"removed store {store_env.root}"]
    assert not store_env.root.exists() and not leftover.exists()


def _dir_flags(path) -> int | None:
    """A directory's inode flags (`lsattr`), None where the filesystem keeps none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, fsutil.FS_IOC_GETFLAGS, buf)
        return int.from_bytes(buf, sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)


def test_the_staging_dir_spreads_what_each_command_stages(store_env):
    """ext4 without a journal made a pull's every new inode scan past those
    freed in the last minute where its staging dir's block group was; marked
    top of unrelated trees, each command's staging dir gets a group of its
    own (fsutil.spread_subdirs)."""
    if _dir_flags(store_env.root.parent) is None:
        pytest.skip("the test's filesystem keeps no inode flags")
    store = store_env.open()
    assert _dir_flags(store.paths.staging) & fsutil.FS_TOPDIR_FL
    # a store made before: the next command marks it
    fd = os.open(store.paths.staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, fsutil.FS_IOC_SETFLAGS,
                    (_dir_flags(store.paths.staging) & ~fsutil.FS_TOPDIR_FL).to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)
    assert not _dir_flags(store.paths.staging) & fsutil.FS_TOPDIR_FL
    store_env.open()
    assert _dir_flags(store.paths.staging) & fsutil.FS_TOPDIR_FL
