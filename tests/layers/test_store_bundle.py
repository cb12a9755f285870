"""The runtime bundle's config.json, without running it; and what a diff
leaves out of a container that a runtime mounted things into."""

import json
import os
import resource
from pathlib import Path

import pytest

from layers.bundle import resolve_user, runtime_config
from layers.changelist import without_mountpoints
from layers.errors import UsageError
from layers.records import MountSpec

from storetools import file, make_tar, symlink

IMAGE = {"config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"],
                    "WorkingDir": "/srv", "User": "web:staff"}}


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:34::/srv:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    return root


def test_process_mounts_and_limits(rootfs):
    mounts = [MountSpec("volume", "db", "/var/lib/db", ("ro",)),
              MountSpec("bind", "/host/x", "/x"), MountSpec("tmpfs", None, "/tmp", ("size=1m",))]
    doc = runtime_config(str(rootfs), IMAGE, mounts, lambda n: f"/store/volumes/{n}/_data",
                         "web1", euid=0, egid=0)
    p = doc["process"]
    assert p["args"] == ["/bin/app", "--serve"] and p["cwd"] == "/srv"
    assert p["env"][0].startswith("PATH=") and p["env"][1:] == ["A=1"]
    assert p["user"] == {"uid": 33, "gid": 50}
    assert doc["root"]["path"] == str(rootfs) and doc["hostname"] == "web1"
    (nofile,) = p["rlimits"]
    assert nofile["hard"] <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    mine = doc["mounts"][-3:]
    assert mine == [
        {"destination": "/var/lib/db", "type": "bind", "source": "/store/volumes/db/_data",
         "options": ["rbind", "ro"]},
        {"destination": "/x", "type": "bind", "source": "/host/x", "options": ["rbind", "rw"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "size=1m"]}]
    assert "uidMappings" not in doc["linux"] and "cgroupsPath" not in doc["linux"]
    assert {m["destination"] for m in doc["mounts"]} >= {"/proc", "/dev", "/sys"}


def test_rootless_maps_the_caller_to_root(rootfs):
    doc = runtime_config(str(rootfs), IMAGE, [], str, "h", euid=1000, egid=1000,
                         args=["/bin/sh"])
    assert doc["process"]["args"] == ["/bin/sh"]
    assert {"type": "user"} in doc["linux"]["namespaces"]
    assert doc["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    sys_mount = [m for m in doc["mounts"] if m["destination"] == "/sys"][0]
    assert sys_mount["type"] == "none" and "rbind" in sys_mount["options"]


def test_users(rootfs):
    assert resolve_user("", str(rootfs)) == (0, 0)
    assert resolve_user("1000", str(rootfs)) == (1000, 0)
    assert resolve_user("1000:7", str(rootfs)) == (1000, 7)
    assert resolve_user("web", str(rootfs)) == (33, 34)
    with pytest.raises(UsageError) as e:
        resolve_user("ghost", str(rootfs))
    assert str(e.value) == "user 'ghost' is not in the container's /etc/passwd"
    # the container's /etc/passwd is read beneath its root, links not followed
    os.unlink(rootfs / "etc/passwd")
    os.symlink("/etc/passwd", rootfs / "etc/passwd")
    with pytest.raises(UsageError):
        resolve_user("root", str(rootfs))
    with pytest.raises(UsageError) as e:
        runtime_config(str(rootfs), {"config": {}}, [], str, "h", euid=0, egid=0)
    assert str(e.value) == "the image has no command (Entrypoint/Cmd); give one"


def test_diff_leaves_out_runtime_mountpoints():
    changes = [("A", "/dev"), ("A", "/proc"), ("A", "/rootfile"), ("A", "/var"),
               ("A", "/var/lib"), ("A", "/var/lib/db"), ("C", "/etc"), ("A", "/etc/x"),
               ("A", "/etc/vol"), ("A", "/etc/vol/leaked")]
    assert without_mountpoints(changes, {"/dev", "/proc", "/sys", "/var/lib/db",
                                         "/etc/vol"}) == [
        ("A", "/rootfile"), ("C", "/etc"), ("A", "/etc/x")]


def test_bundle_writes_config_and_keeps_the_container_mounted(store_env, tmp_path):
    tar = make_tar(tmp_path / "l.tar", [file("bin/busybox", "x", mode=0o755),
                                        symlink("bin/sh", "busybox")])
    store_env.ok("import", "-q", str(tar), "--name", "bb")
    store_env.ok("create", "bb", "--name", "c", "-v", "data:/data")
    r = store_env.cli("bundle", "c", str(tmp_path / "b"))
    assert (r.code, r.err) == (2, "layers: the image has no command (Entrypoint/Cmd); "
                                  "give one\n")
    assert store_env.ok("ps").lines[1].endswith(" -")      # not left mounted
    path = store_env.ok("bundle", "c", str(tmp_path / "b"), "--", "/bin/sh", "-c",
                        "true").out.strip()
    doc = json.loads(Path(path).read_text())
    assert doc["process"]["args"] == ["/bin/sh", "-c", "true"]
    assert doc["root"]["path"] == json.loads(store_env.ok("inspect", "c").out)["mountpoint"]
    assert doc["mounts"][-1]["source"] == str(store_env.root / "volumes/data/_data")
    store_env.ok("umount", "c")
