"""commit, export and save on the vfs driver: the new layer and image, the
rules (unmounted, busy), reproducible commits, byte-exact layer tars, and
saved images that import back to the same ids."""

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from layers import fsutil
from layers.digest import Digest
from layers.drivers.base import Mounted
from layers.drivers.fuse import FuseDriver
from layers.errors import ContainerBusy, ContainerMounted, DriverError, LayerCorrupt

from storetools import StoreEnv, directory, docker_archive, file, oci_layout, tar_bytes

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n"),
                  file("etc/hosts", "127.0.0.1\n"), directory("usr/share/doc"),
                  file("usr/share/doc/README", "doc\n"), file("bin/sh", "sh", mode=0o755)])
APP = tar_bytes([file("app/run", "run\n", mode=0o755), file("etc/.wh.hosts")])


@pytest.fixture
def image(store_env, tmp_path):
    built = oci_layout(tmp_path / "img", [BASE, APP], ref_name="base:1")
    store_env.ok("import", "-q", str(built.path))
    return built


def change(mp):
    Path(mp, "etc/os-release").write_text("ID=changed\n")
    Path(mp, "new.txt").write_text("new\n")
    os.unlink(os.path.join(mp, "bin/sh"))


def test_commit_makes_an_image_of_the_changes(store_env, image):
    store = store_env.open()
    store.create("base:1", name="c")
    change(store.mount("c"))
    with pytest.raises(ContainerMounted) as e:
        store.commit("c")
    assert str(e.value) == ("container c is mounted (1x); umount it before commit (the vfs "
                            "driver cannot hold a mounted container still)")
    store.umount("c")
    new = store.commit("c", "app:2")
    assert new.names == ("app:2",)
    base = store.image("base:1")
    assert new.layers[:-1] == base.layers
    layer = store.layers.get(new.layers[-1])
    assert layer.parent == base.layers[-1]
    config = json.loads(new.config)
    assert config["rootfs"]["diff_ids"] == \
        json.loads(base.config)["rootfs"]["diff_ids"] + [str(layer.diff_id)]
    assert config["config"] == json.loads(base.config)["config"]
    # the layer holds the changes as an OCI changeset, read back as a tar
    tar = store_env.tmp / "layer.tar"
    store.export(str(layer.id), str(tar))
    assert "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest() == str(layer.diff_id)
    with tarfile.open(tar) as tf:
        assert tf.getnames() == ["bin", "bin/.wh.sh", "etc", "etc/os-release", "new.txt"]
    # a container of the new image sees them
    store.create("app:2", name="d")
    mp = store.mount("d")
    assert Path(mp, "etc/os-release").read_text() == "ID=changed\n"
    assert Path(mp, "new.txt").read_text() == "new\n"
    assert not os.path.exists(os.path.join(mp, "bin/sh"))
    assert not os.path.exists(os.path.join(mp, "etc/hosts"))
    assert store.diff("d") == []
    store.umount("d")


def test_an_empty_file_is_committed(store_env, image):
    """An empty file of the upper comes without a source to clone; the commit
    failed with an internal error on it."""
    store = store_env.open()
    store.create("base:1", name="c")
    Path(store.mount("c"), "empty").write_bytes(b"")
    store.umount("c")
    new = store.commit("c", "app:2")
    layer = Path(store.layers.diff_dir(new.layers[-1]))
    assert (layer / "empty").read_bytes() == b""
    store_env.assert_consistent()


def test_nothing_mounts_or_removes_a_container_being_committed(store_env, image):
    store = store_env.open()
    c = store.create("base:1", name="c")
    with fsutil.Lease(store.paths.staging) as lease:    # a commit in flight
        store.containers.save(c.id, type(c)(**{**c.__dict__, "lease": lease.token}))
        for op in (store.mount, store.rm, store.commit):
            with pytest.raises(ContainerBusy) as e:
                op("c")
            assert str(e.value) == "container c is busy: a commit is reading it"
    store.mount("c")          # the committing command died: not busy any more
    store.umount("c")


def test_same_changes_and_epoch_give_the_same_image(tmp_path, image):
    ids = []
    for n in range(2):
        (tmp_path / f"s{n}").mkdir()
        env = StoreEnv(tmp_path / f"s{n}")
        store = env.open()
        store.import_path(str(image.path))
        store.create("base:1", name="c")
        change(store.mount("c"))
        store.umount("c")
        ids.append(store.commit("c", epoch=1_000_000).id)
        env.assert_consistent()
    assert ids[0] == ids[1]
    cfg = json.loads(store.image(ids[1]).config)
    assert cfg["created"] == "1970-01-12T13:46:40Z"


def test_commit_of_a_removed_dir_and_replaced_tree(store_env, image):
    store = store_env.open()
    store.create("base:1", name="c")
    mp = store.mount("c")
    fsutil.remove_tree(os.path.join(mp, "usr"))
    os.makedirs(os.path.join(mp, "usr/share/doc"))
    Path(mp, "usr/share/doc/NEW").write_text("n")
    store.umount("c")
    new = store.commit("c")
    store.create(new.id, name="d")
    mp = store.mount("d")
    assert sorted(os.listdir(os.path.join(mp, "usr/share/doc"))) == ["NEW"]
    store.umount("d")


@pytest.mark.parametrize("as_tar", [True, False])
def test_save_imports_back_to_the_same_ids(store_env, tmp_path, image, as_tar):
    store = store_env.open()
    store.create("base:1", name="c")
    change(store.mount("c"))
    store.umount("c")
    new = store.commit("c", "app:2")
    out = str(tmp_path / "app.tar") if as_tar else f"{tmp_path}/app-dir/"
    assert store.save("app:2", out) == []
    assert os.path.isfile(out) == as_tar
    (tmp_path / "fresh").mkdir()
    fresh = StoreEnv(tmp_path / "fresh").open()
    (again,) = fresh.import_path(out)
    assert (again.id, again.layers, again.names) == (new.id, new.layers, ("app:2",))
    # the docker-archive image of issue 5 comes back the same too
    docker = docker_archive(tmp_path / "d.tar", [BASE], repo_tags=["d:1"])
    (d,) = store.import_path(str(docker.path))
    store.save("d:1", str(tmp_path / "d-oci.tar"))
    (d2,) = fresh.import_path(str(tmp_path / "d-oci.tar"))
    assert (d2.id, d2.layers) == (d.id, d.layers)


def test_export_refuses_a_corrupt_layer_and_names_the_file(store_env, tmp_path, image):
    store = store_env.open()
    lid = store.image("base:1").layers[0]
    path = Path(store.layers.diff_dir(lid), "etc/os-release")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    with pytest.raises(LayerCorrupt) as e:
        store.export(str(lid), str(tmp_path / "l.tar"))
    assert str(e.value) == (f"layer {lid.short} is corrupt: etc/os-release: "
                            "contents differ from the layer's tar")
    assert not (tmp_path / "l.tar").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".l.tar")] == []
    with pytest.raises(LayerCorrupt):
        store.save("base:1", str(tmp_path / "s.tar"))
    assert not (tmp_path / "s.tar").exists()
    with open(path, "r+b") as f:
        f.write(b"I")


def test_export_of_a_container_is_its_merged_tree(store_env, tmp_path, image):
    store = store_env.open()
    store.create("base:1", name="c")
    change(store.mount("c"))
    store.umount("c")
    out = tmp_path / "c.tar"
    store.export("c", str(out), epoch=5)
    with tarfile.open(out) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert sorted(members) == ["app", "app/run", "bin", "etc", "etc/os-release",
                                   "new.txt", "usr", "usr/share", "usr/share/doc",
                                   "usr/share/doc/README"]
        assert tf.extractfile("etc/os-release").read() == b"ID=changed\n"
        assert {m.mtime for m in members.values()} == {5}
    (tmp_path / "fresh").mkdir()
    fresh = StoreEnv(tmp_path / "fresh").open()
    (img,) = fresh.import_path(str(out))
    assert img.layers == (Digest(hashlib.sha256(out.read_bytes()).hexdigest()),)


def test_a_mount_program_that_cannot_freeze_is_not_signalled(tmp_path):
    """SIGUSR1 would end a mount program that does not catch it (fuse-overlayfs):
    the fuse driver asks only a daemon that catches both freeze signals."""
    daemon = subprocess.Popen(["sleep", "600"])
    try:
        (tmp_path / "work" / "fsd").mkdir(parents=True)
        with pytest.raises(DriverError) as e:
            with FuseDriver().frozen(str(tmp_path), Mounted(str(tmp_path), daemon.pid)):
                pass
        assert str(e.value) == (f"fuse driver: the daemon of {tmp_path} (pid {daemon.pid}) "
                                "cannot freeze the upper (not an fsd that can); umount it "
                                "before commit")
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait()
