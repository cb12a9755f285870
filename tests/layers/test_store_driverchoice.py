"""Driver selection for a new store with no driver configured (issue 6
matrix), its reason recorded for `layers info`, existing stores untouched."""

import json

import pytest

from layers import driverchoice, fsprobe
from layers.store import CONFIGURED, DRIVERS, RECORDED

from storetools import StoreEnv


@pytest.mark.parametrize("fstype, available, driver, warns", [
    ("btrfs", ("fuse", "vfs", "btrfs"), "btrfs", False),
    ("btrfs", ("fuse", "vfs"), "fuse", False),
    ("ext4", DRIVERS, "fuse", False),
    ("xfs", DRIVERS, "fuse", False),
    ("tmpfs", DRIVERS, "vfs", True),
    ("nfs4", DRIVERS, "vfs", True),
    (None, DRIVERS, "vfs", True),
])
def test_matrix(fstype, available, driver, warns):
    choice = driverchoice.choose(fstype, available)
    assert choice.driver == driver
    assert (choice.warning == driverchoice.VFS_WARNING) == warns
    assert (fstype or "an unknown filesystem") in choice.reason


def fake_fs(monkeypatch, fstype):
    monkeypatch.setattr(fsprobe, "mount_of", lambda path, *a, **kw: fsprobe.MountInfo(
        "0:99", "/", "/", fstype, "fake", "rw"))


def auto_env(tmp_path):
    env = StoreEnv(tmp_path)
    env.args = lambda: ["--root", str(env.root), "--runroot", str(env.runroot)]
    return env


def test_new_store_on_ext4_gets_fuse_and_says_why(tmp_path, monkeypatch):
    fake_fs(monkeypatch, "ext4")
    env = auto_env(tmp_path)
    r = env.ok("images")
    assert "warning" not in r.err
    marker = json.loads((env.root / "strata.json").read_text())
    assert marker["driver"] == "fuse"
    info = json.loads(env.ok("info", "--format", "json").out)
    assert info["driver"] == "fuse" and "ext4" in info["driver_reason"]


def test_new_store_elsewhere_gets_vfs_with_a_warning(tmp_path, monkeypatch):
    fake_fs(monkeypatch, "tmpfs")
    env = auto_env(tmp_path)
    r = env.ok("images")
    assert r.err == f"layers: warning: {driverchoice.VFS_WARNING}\n"
    assert env.ok("images").err == ""                 # said once, at creation
    info = json.loads(env.ok("info", "--format", "json").out)
    assert info["driver"] == "vfs" and "tmpfs" in info["driver_reason"]
    assert driverchoice.VFS_WARNING in info["warnings"]
    lines = env.ok("info").lines
    assert f"driver chosen: {info['driver_reason']}" in lines
    assert any(line.startswith("filesystem: ") for line in lines)


def test_configured_and_recorded_drivers_are_kept(tmp_path, monkeypatch):
    fake_fs(monkeypatch, "tmpfs")
    env = StoreEnv(tmp_path, "fuse")
    env.ok("images")
    auto = auto_env(tmp_path)                          # no driver given now
    info = json.loads(auto.ok("info", "--format", "json").out)
    assert (info["driver"], info["driver_reason"]) == ("fuse", CONFIGURED)
    marker = json.loads((env.root / "strata.json").read_text())
    del marker["driver_reason"]                        # a store made before the choice
    (env.root / "strata.json").write_text(json.dumps(marker))
    info = json.loads(auto.ok("info", "--format", "json").out)
    assert (info["driver"], info["driver_reason"]) == ("fuse", RECORDED)
    assert driverchoice.VFS_WARNING not in info["warnings"]


def test_config_says_auto_when_no_driver_is_set(tmp_path):
    env = auto_env(tmp_path)
    assert json.loads(env.ok("config").out)["driver"] == "auto"


def test_the_vfs_warning_is_printed_once_per_command(tmp_path, monkeypatch):
    """`layers info` on a new store: the warning of its creation and that of
    info's checks are one line, not two."""
    fake_fs(monkeypatch, "tmpfs")
    env = auto_env(tmp_path)
    r = env.ok("info")
    assert r.err.count(driverchoice.VFS_WARNING) == 1, r.err
    assert env.ok("info").err.count(driverchoice.VFS_WARNING) == 1
