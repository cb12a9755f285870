"""diff, commit, export and save through the `layers` command line on every
driver (commit as a process of its own): what a container did through its
mount (write, delete, replace a directory, rename one) comes out of the upper
as D/A/C, goes into a layer, and a container of the committed image sees
exactly the merged tree the first one saw.  The saved image loads into podman
with the same ids; an exported container imports into podman as into Strata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (NOBODY, StoreEnv, directory, file, nobody_dir,  # noqa: E402,F401
                        oci_layout, run_as_nobody, store_env, symlink, tar_bytes,
                        tree_snapshot, wait_until)

BASE = tar_bytes([
    directory("etc"), file("etc/os-release", "ID=base\n"), file("etc/hosts", "h\n"),
    directory("usr/share/doc/pkg"), file("usr/share/doc/pkg/README", "r\n"),
    file("usr/share/doc/pkg/NEWS", "n\n"), file("usr/share/doc/other", "o\n"),
    directory("srv/data"), file("srv/data/a", "a\n"), file("bin/sh", "sh\n", mode=0o755),
    symlink("bin/bash", "sh"),
])
TOP = tar_bytes([file("etc/.wh.hosts"), file("app/main", "main\n", mode=0o755)])


def run(env: StoreEnv, *args: str, **kw) -> str:
    """In-process, but as a real `layers` process when given its environment."""
    r = env.cli_proc(*args, **kw) if kw else env.cli(*args)
    assert r.code == 0, f"layers {' '.join(args)}: {r.err}"
    return r.out.strip()


@pytest.mark.parametrize("store_env", ["vfs", "overlay", "fuse", "btrfs"], indirect=True)
def test_diff_commit_and_a_container_of_the_new_image(store_env, tmp_path):
    env = store_env
    built = oci_layout(tmp_path / "img", [BASE, TOP], ref_name="base:1")
    run(env, "import", "-q", str(built.path))
    run(env, "create", "base:1", "--name", "c")
    mp = run(env, "mount", "c")
    Path(mp, "etc/os-release").write_text("ID=changed\n")
    Path(mp, "etc/motd").write_text("hello\n")
    os.unlink(os.path.join(mp, "bin/bash"))
    shutil.rmtree(os.path.join(mp, "usr/share/doc"))          # replaced: opaque
    os.makedirs(os.path.join(mp, "usr/share/doc/pkg"))
    Path(mp, "usr/share/doc/pkg/README").write_text("new readme\n")
    # mv: the kernel overlay answers EXDEV (no redirect_dir) and mv copies
    shutil.move(os.path.join(mp, "srv/data"), os.path.join(mp, "srv/moved"))
    os.chmod(os.path.join(mp, "app"), 0o700)
    seen = tree_snapshot(mp)
    diff = run(env, "diff", "c").splitlines()
    run(env, "umount", "c")
    assert run(env, "diff", "c").splitlines() == diff      # read from disk, not the mount
    expected = {"C /app", "D /bin/bash", "A /etc/motd", "C /etc/os-release",
                "D /srv/data", "A /srv/moved", "A /srv/moved/a",
                "D /usr/share/doc/other", "D /usr/share/doc/pkg/NEWS",
                "C /usr/share/doc/pkg/README"}
    if env.driver not in ("vfs", "btrfs"):               # a full tree, compared
        expected.add("C /usr/share/doc")                  # replaced
    assert set(diff) == expected, diff
    new_id = run(env, "commit", "c", "app:2", SOURCE_DATE_EPOCH="1700000000")
    info = json.loads(run(env, "inspect", "app:2"))
    assert info["id"] == new_id and len(info["layers"]) == 3
    assert info["config"]["created"] == "2023-11-14T22:13:20Z"
    run(env, "create", "app:2", "--name", "d")
    mp2 = run(env, "mount", "d")
    assert tree_snapshot(mp2) == seen
    assert run(env, "diff", "d") == ""
    run(env, "export", "d", "-o", str(tmp_path / "d.tar"))       # the merged tree
    with tarfile.open(tmp_path / "d.tar") as tf:
        names = {"/" + m.name for m in tf.getmembers()}
        assert tf.extractfile("usr/share/doc/pkg/README").read() == b"new readme\n"
    assert names == set(seen)
    run(env, "umount", "d")


@pytest.mark.parametrize("store_env", ["vfs"], indirect=True)
def test_save_loads_into_podman_with_the_same_ids(store_env, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    env = store_env
    built = oci_layout(tmp_path / "img", [BASE, TOP], ref_name="base:1")
    run(env, "import", "-q", str(built.path))
    run(env, "create", "base:1", "--name", "c")
    mp = run(env, "mount", "c")
    Path(mp, "etc/motd").write_text("hello\n")
    run(env, "umount", "c")
    image_id = run(env, "commit", "c", "app:2")
    diff_ids = json.loads(run(env, "inspect", "app:2"))["config"]["rootfs"]["diff_ids"]
    run(env, "save", "app:2", "-o", str(tmp_path / "app.tar"))
    runroot = tempfile.mkdtemp(prefix="strata-podman-")   # podman wants it short
    podman = ["podman", "--root", str(tmp_path / "podman"), "--runroot", runroot,
              "--storage-driver", "vfs"]
    try:
        p = subprocess.run(podman + ["load", "-q", "-i", str(tmp_path / "app.tar")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        p = subprocess.run(podman + ["image", "inspect", "localhost/app:2"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)[0]
        assert doc["Id"] == image_id and doc["RootFS"]["Layers"] == diff_ids
        # a container's export: `podman import` gives the layer Strata's import gives
        run(env, "export", "c", "-o", str(tmp_path / "c.tar"))
        p = subprocess.run(podman + ["import", "-q", str(tmp_path / "c.tar"), "c:1"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        p = subprocess.run(podman + ["image", "inspect", "localhost/c:1"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        imported = env.open().import_path(str(tmp_path / "c.tar"))[0]
        assert json.loads(p.stdout)[0]["RootFS"]["Layers"] == [str(x) for x in imported.layers]
        # and back: what podman saves imports into Strata with the same ChainIDs
        p = subprocess.run(podman + ["save", "--format", "oci-archive", "-o",
                                     str(tmp_path / "back.tar"), "localhost/app:2"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run(podman + ["system", "reset", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)
    (tmp_path / "fresh").mkdir()
    fresh = StoreEnv(tmp_path / "fresh")
    assert run(fresh, "import", "-q", str(tmp_path / "back.tar")) == image_id
    assert json.loads(run(fresh, "inspect", image_id))["layers"] == \
        json.loads(run(env, "inspect", "app:2"))["layers"]


OWNED = tar_bytes([directory("home/u", mode=0o700, uid=1000, gid=1000),
                   file("home/u/notes", "mine\n", mode=0o600, uid=1000, gid=1000),
                   file("etc/motd", "hi\n"), file("bin/sh", "sh\n", mode=0o755)])


def test_rootless_commit_keeps_the_image_owners(nobody_dir):
    """As an unprivileged user the store keeps owners in override_stat xattrs;
    a commit writes them, not the user's own ids, into the layer tar, and
    what is saved imports into another rootless store with the same ids."""
    built = oci_layout(nobody_dir / "img", [OWNED], ref_name="owned:1")

    def nobody(*args: str, store: str = "store") -> str:
        r = run_as_nobody(nobody_dir, *args, store=store)
        assert r.returncode == 0, f"layers {' '.join(args)}: {r.stderr}"
        return r.stdout.strip()

    nobody("import", "-q", str(built.path))
    nobody("create", "owned:1", "--name", "c")
    mp = nobody("mount", "c")
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                        "--clear-groups", "sh", "-c",
                        f"echo changed > {mp}/home/u/notes && rm {mp}/bin/sh"
                        f" && echo new > {mp}/new"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nobody("umount", "c")
    assert nobody("diff", "c").splitlines() == ["D /bin/sh", "C /home/u/notes", "A /new"]
    image_id = nobody("commit", "c", "owned:2")
    top = json.loads(nobody("inspect", "owned:2"))["layers"][-1]
    nobody("export", top, "-o", str(nobody_dir / "top.tar"))
    with tarfile.open(nobody_dir / "top.tar") as tf:
        got = {m.name: (m.uid, m.gid, m.mode) for m in tf.getmembers()}
    assert got == {"bin": (0, 0, 0o755), "bin/.wh.sh": (0, 0, 0o600),
                   "home": (0, 0, 0o755), "home/u": (1000, 1000, 0o700),
                   "home/u/notes": (1000, 1000, 0o600), "new": (NOBODY, NOBODY, 0o644)}
    nobody("save", "owned:2", "-o", str(nobody_dir / "owned2.tar"))
    assert nobody("import", "-q", str(nobody_dir / "owned2.tar"), store="other") == image_id
    assert nobody("check", "--verify", store="other") == ""


# -- commit of a mounted container --------------------------------------------------------

WRITER = """
import os, sys
root = sys.argv[1]

def put(name, k):
    tmp = os.path.join(root, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(k))
    os.rename(tmp, os.path.join(root, name))

k = 0
while not os.path.exists(os.path.join(root, "stop")):
    k += 1
    put("a", k)
    put("z", k)
"""


def _counter(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


@pytest.fixture
def written(store_env, tmp_path):
    """A mounted fuse container that a process keeps writing into: it replaces
    `a`, then `z` (by renames) with its next count, so at any instant a == z or
    a == z + 1; the walk of the upper reads a thousand files between the two."""
    env = store_env
    built = oci_layout(tmp_path / "img", [BASE], ref_name="base:1")
    run(env, "import", "-q", str(built.path))
    run(env, "create", "base:1", "--name", "busy")
    mp = Path(run(env, "mount", "busy"))
    (mp / "m").mkdir()
    for i in range(1000):
        (mp / "m" / f"f{i:04d}").write_text("x" * 100)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mp)])
    try:
        assert wait_until(lambda: _counter(mp / "z") > 0, 30)
        yield env, mp, writer
    finally:
        (mp / "stop").write_text("")
        writer.wait(60)


@pytest.mark.parametrize("store_env", ["fuse"], indirect=True)
def test_commit_of_a_mounted_container_is_one_instant_of_it(written):
    env, mp, writer = written
    for n in range(3):
        r = env.cli_proc("commit", "-q", "busy", f"snap:{n}")
        assert r.code == 0, r.err
        top = json.loads(run(env, "inspect", f"snap:{n}"))["layers"][-1]
        layer = Path(json.loads(run(env, "inspect", top))["dir"])
        a, z = _counter(layer / "a"), _counter(layer / "z")
        assert a in (z, z + 1), (a, z)
        assert len(os.listdir(layer / "m")) == 1000
    seen = _counter(mp / "z")
    assert wait_until(lambda: _counter(mp / "z") > seen, 30), "the writer goes on"
    assert writer.poll() is None
    assert not list(Path(env.root).glob("containers/*/work/fsd/frozen"))


@pytest.mark.parametrize("store_env", ["fuse"], indirect=True)
def test_a_commit_that_dies_while_the_upper_is_frozen_thaws_it(written):
    env, mp, writer = written
    r = env.cli_proc("commit", "-q", "busy", "never:1", STRATA_CRASH_AT="commit-reading")
    assert r.code == -9
    seen = _counter(mp / "z")
    assert wait_until(lambda: _counter(mp / "z") > seen, 30), "fsd thawed the upper"
    assert not list(Path(env.root).glob("containers/*/work/fsd/frozen"))


@pytest.mark.parametrize("store_env", ["vfs"], indirect=True)
def test_a_driver_that_cannot_freeze_refuses_a_mounted_commit(store_env, tmp_path):
    env = store_env
    run(env, "import", "-q", str(oci_layout(tmp_path / "img", [BASE], ref_name="b:1").path))
    run(env, "create", "b:1", "--name", "c")
    run(env, "mount", "c")
    r = env.cli("commit", "c")
    assert (r.code, r.err) == (1, "layers: container c is mounted (1x); umount it before "
                                  "commit (the vfs driver cannot hold a mounted container "
                                  "still)\n")
