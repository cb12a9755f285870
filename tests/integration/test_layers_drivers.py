"""The shared driver suite: the same scenarios on vfs, the kernel overlay,
fuse (fsd) and btrfs (a fresh btrfs on a loop device per test).  Every mount is undone by the `store_env` fixture, even on failure,
and every test ends with the store's own consistency check."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (TarEntry, directory, file, hardlink, mount_fstype,  # noqa: E402
                        oci_layout, store_env, symlink, tar_bytes, tree_snapshot,
                        wait_until)

ROOT = os.geteuid() == 0
DRIVERS = ["vfs", "overlay", "fuse", "btrfs"]
NO_MOUNT = ("vfs", "btrfs")     # the rootfs is a plain dir (a copy, a snapshot)
pytestmark = pytest.mark.parametrize("store_env", DRIVERS, indirect=True)

BASE = tar_bytes([
    directory("etc"),
    file("etc/os-release", "ID=strata\n"),
    file("etc/legacy.conf", "old\n"),
    file("etc/shadow", "secret\n", mode=0o640, uid=0, gid=42),
    directory("home/user", mode=0o700, uid=1000, gid=1000),
    file("home/user/notes", "mine\n", mode=0o600, uid=1000, gid=1000),
    directory("usr/share/doc"),
    file("usr/share/doc/a", "a\n"),
    file("usr/share/doc/b", "b\n"),
    file("bin/busybox", "#!/bin/sh\n", mode=0o755),
    symlink("bin/sh", "busybox"),
    hardlink("bin/ls", "bin/busybox"),
    TarEntry("run/initctl", tarfile.FIFOTYPE, mode=0o600),
    file("opt/was-file", "f\n"),
])
MIDDLE = tar_bytes([
    file("etc/.wh.legacy.conf"),
    file("usr/share/doc/.wh..wh..opq"),
    file("usr/share/doc/NEWS", "replaced\n"),
    directory("opt/was-file"),
    file("opt/was-file/now-a-dir", "d\n"),
])
TOP = tar_bytes([
    file("etc/os-release", "ID=strata\nVERSION=2\n"),
    file("app/main", "run\n", mode=0o755),
])

EXPECTED = {
    "/app": "dir", "/app/main": "run\n", "/bin": "dir", "/bin/busybox": "#!/bin/sh\n",
    "/bin/ls": "#!/bin/sh\n", "/bin/sh": "->busybox", "/etc": "dir",
    "/etc/os-release": "ID=strata\nVERSION=2\n", "/etc/shadow": "secret\n",
    "/home": "dir", "/home/user": "dir", "/home/user/notes": "mine\n", "/opt": "dir",
    "/opt/was-file": "dir", "/opt/was-file/now-a-dir": "d\n", "/run": "dir",
    "/run/initctl": "fifo", "/usr": "dir", "/usr/share": "dir", "/usr/share/doc": "dir",
    "/usr/share/doc/NEWS": "replaced\n",
}


def summary(root) -> dict:
    out = {}
    for path, info in tree_snapshot(root).items():
        kind = info[0]
        if kind == "file":
            out[path] = info[4].decode()
        elif kind == "link":
            out[path] = "->" + info[1]
        elif kind == "dir":
            out[path] = "dir"
        else:
            out[path] = "fifo" if stat.S_ISFIFO(int(info[1], 8)) else info[1]
    return out


@pytest.fixture
def image(store_env, tmp_path):
    built = oci_layout(tmp_path / "img", [BASE, MIDDLE, TOP], compression="gzip")
    store_env.ok("import", "-q", str(built.path), "--name", "suite:1")
    return built


def is_live_mount(env, mp: str) -> bool:
    if env.driver in NO_MOUNT:
        return os.path.isdir(mp)
    return mount_fstype(mp) is not None


def test_merged_view(store_env, image):
    store_env.ok("create", "suite:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    assert summary(mp) == EXPECTED
    st = os.lstat(os.path.join(mp, "home/user/notes"))
    assert stat.S_IMODE(st.st_mode) == 0o600
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert os.lstat(os.path.join(mp, "etc/shadow")).st_gid == 42
    assert os.stat(os.path.join(mp, "bin/ls")).st_ino == \
        os.stat(os.path.join(mp, "bin/busybox")).st_ino
    store_env.ok("umount", "c")


def test_write_delete_diff_and_persistence(store_env, image):
    store_env.ok("create", "suite:1", "--name", "c")
    store_env.ok("create", "suite:1", "--name", "other")
    mp = store_env.ok("mount", "c").out.strip()
    Path(mp, "app/new").write_text("new\n")
    Path(mp, "etc/os-release").write_text("ID=changed\n")
    os.unlink(os.path.join(mp, "etc/shadow"))
    os.unlink(os.path.join(mp, "usr/share/doc/NEWS"))
    diff = store_env.ok("diff", "c").lines
    assert "A /app/new" in diff and "C /etc/os-release" in diff
    assert "D /etc/shadow" in diff and "D /usr/share/doc/NEWS" in diff
    assert not any(line.endswith(("/bin", "/home", "/run")) for line in diff)
    store_env.ok("umount", "c")
    assert not is_live_mount(store_env, mp) or store_env.driver in NO_MOUNT
    mp = store_env.ok("mount", "c").out.strip()
    assert Path(mp, "etc/os-release").read_text() == "ID=changed\n"
    assert not os.path.exists(os.path.join(mp, "etc/shadow"))
    other = store_env.ok("mount", "other").out.strip()
    assert summary(other) == EXPECTED           # the image itself is untouched
    store_env.ok("umount", "c")
    store_env.ok("umount", "other")


def test_mount_counts_users(store_env, image):
    store_env.ok("create", "suite:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    assert store_env.ok("mount", "c").out.strip() == mp
    store_env.ok("umount", "c")
    assert is_live_mount(store_env, mp)
    assert os.path.exists(os.path.join(mp, "app/main"))
    store_env.ok("umount", "c")
    if store_env.driver not in NO_MOUNT:
        assert not is_live_mount(store_env, mp)
    assert store_env.ok("ps").lines[1].endswith(" -")


def test_rm_force_unmounts(store_env, image):
    store_env.ok("create", "suite:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    r = store_env.cli("rm", "c")
    assert r.code == 1 and "is mounted" in r.err
    store_env.ok("rm", "-f", "c")
    assert not os.path.exists(mp)


def test_stale_mount_is_cleaned_by_the_next_command(store_env, image):
    if store_env.driver in NO_MOUNT:
        pytest.skip(f"{store_env.driver} mounts nothing")
    store_env.ok("create", "suite:1", "--name", "c")
    mp = store_env.ok("mount", "c").out.strip()
    info = json.loads(store_env.ok("inspect", "c").out)
    if store_env.driver == "fuse":
        assert info["pid"] is not None
        os.kill(info["pid"], signal.SIGKILL)
        assert wait_until(lambda: not _reachable(mp), 5)
    else:
        os.system(f"umount '{mp}'")
    ps = store_env.ok("ps").lines
    assert ps[1].endswith(" -")                  # the dead mount is gone
    mp2 = store_env.ok("mount", "c").out.strip()
    assert mp2 == mp and Path(mp, "app/main").read_text() == "run\n"
    store_env.ok("umount", "c")


def _reachable(path: str) -> bool:
    try:
        os.statvfs(path)     # stat may be answered from the kernel's cache
        return True
    except OSError:
        return False
