"""What the btrfs driver adds to the shared suite: layers are subvolumes
made by snapshot and shared between images, a container is a snapshot of
its top layer's subvolume, and removal leaves nothing behind.  Each test
gets a fresh btrfs on a loop device (`btrfs_loop`), undone even on failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (LAYERS_EXE, NOBODY, StoreEnv, file, oci_layout,  # noqa: E402
                        store_env, tar_bytes)

from layers.drivers.btrfs import is_subvolume  # noqa: E402

pytestmark = pytest.mark.parametrize("store_env", ["btrfs"], indirect=True)

BASE = tar_bytes([file("etc/os-release", "ID=base\n"), file("big", "x" * 100_000)])
APP = tar_bytes([file("app", "one\n"), file(".wh.big")])
OTHER = tar_bytes([file("other", "two\n")])


def layer_subvolumes(env) -> list[str]:
    top = env.root / "layers"
    return sorted(d for d in os.listdir(top) if is_subvolume(str(top / d / "btrfs")))


def test_layers_and_containers_are_snapshots(store_env, tmp_path):
    oci_layout(tmp_path / "a", [BASE, APP], ref_name="latest")
    oci_layout(tmp_path / "b", [BASE, OTHER], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "a"), "--name", "a:1")
    store_env.ok("import", "-q", str(tmp_path / "b"), "--name", "b:1")
    assert layer_subvolumes(store_env) == []            # made when first needed
    store_env.ok("create", "a:1", "--name", "ca")
    assert len(layer_subvolumes(store_env)) == 2
    store_env.ok("create", "b:1", "--name", "cb")
    assert len(layer_subvolumes(store_env)) == 3        # the base is shared
    mp = store_env.ok("mount", "ca").out.strip()
    assert is_subvolume(mp) and sorted(os.listdir(mp)) == ["app", "etc"]
    Path(mp, "etc/os-release").write_text("ID=changed\n")
    assert store_env.ok("diff", "ca").lines == ["C /etc/os-release"]
    other = store_env.ok("mount", "cb").out.strip()
    assert Path(other, "etc/os-release").read_text() == "ID=base\n"
    assert Path(other, "big").stat().st_size == 100_000
    store_env.ok("create", "a:1", "--name", "ca2")       # the layer tree is untouched
    assert Path(store_env.ok("mount", "ca2").out.strip(),
                "etc/os-release").read_text() == "ID=base\n"
    for c in ("ca", "cb", "ca2"):
        store_env.ok("umount", c)
        store_env.ok("rm", c)
    store_env.ok("rmi", "a:1")
    store_env.ok("rmi", "b:1")
    assert os.listdir(store_env.root / "layers") == []
    assert os.listdir(store_env.root / "containers") == []


def test_commit_of_a_btrfs_container(store_env, tmp_path):
    oci_layout(tmp_path / "a", [BASE, APP], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "a"), "--name", "a:1")
    store_env.ok("create", "a:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    Path(mp, "new").write_text("n\n")
    os.unlink(os.path.join(mp, "app"))
    store_env.ok("umount", "c")
    store_env.ok("commit", "c", "a:2")
    store_env.ok("create", "a:2", "--name", "d")
    mp = store_env.ok("mount", "d").out.strip()
    assert sorted(os.listdir(mp)) == ["etc", "new"]
    store_env.ok("umount", "d")


def test_empty_image(store_env, tmp_path):
    oci_layout(tmp_path / "e", [], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "e"), "--name", "empty:1")
    store_env.ok("create", "empty:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    assert is_subvolume(mp) and os.listdir(mp) == []
    store_env.ok("umount", "c")


def test_a_store_on_btrfs_chooses_btrfs(store_env):
    auto = StoreEnv(store_env.tmp)
    auto.root = store_env.root
    auto.args = lambda: ["--root", str(auto.root), "--runroot", str(auto.runroot)]
    info = json.loads(auto.ok("info", "--format", "json").out)
    assert info["driver"] == "btrfs" and "btrfs" in info["driver_reason"]
    assert info["filesystem"]["fstype"] == "btrfs"


def test_btrfs_refused_off_btrfs(store_env, tmp_path):
    (tmp_path / "plain").mkdir()
    env = StoreEnv(tmp_path / "plain", "btrfs")
    r = env.cli("images")
    assert r.code == 1 and "is not on btrfs (" in r.err, r.err


def test_rootless_store_on_btrfs(store_env):
    """As nobody, with no driver given: the store picks btrfs, makes and
    removes subvolumes without privileges (rmdir of an empty subvolume)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as an unprivileged user")
    mnt = store_env.root.parent
    mnt.parent.chmod(0o755)
    home = mnt / "nobody"
    home.mkdir()
    oci_layout(home / "img", [BASE, APP], ref_name="latest")
    (home / "storage.conf").write_text("")
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home),
           "STRATA_STORAGE_CONF": str(home / "storage.conf"),
           "XDG_RUNTIME_DIR": str(home / "run")}

    def layers(*args: str) -> str:
        p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", LAYERS_EXE, "--root", str(home / "store"),
                            "--runroot", str(home / "run"), *args],
                           capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 0, (args, p.stderr)
        return p.stdout

    layers("import", "-q", str(home / "img"), "--name", "r:1")
    assert json.loads(layers("info", "--format", "json"))["driver"] == "btrfs"
    layers("create", "r:1", "--name", "c")
    mp = layers("mount", "c").strip()
    assert is_subvolume(mp) and Path(mp, "app").read_text() == "one\n"
    assert os.lstat(mp).st_uid == NOBODY
    layers("umount", "c")
    layers("rm", "c")
    layers("rmi", "r:1")
    assert os.listdir(home / "store" / "layers") == []
    assert layers("check") == ""
