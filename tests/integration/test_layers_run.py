"""End to end, on the fuse driver, with crun running the containers:

import → create with a named volume, a bind and a tmpfs → bundle → crun runs
a command that writes into all three and into the root → diff shows the root
change only → commit → the new image runs and shows it → the named volume's
data outlives its container → save → a fresh store imports the same ids →
df agrees with du → prune frees exactly what is unused → check finds
nothing; a byte changed in a layer is named by check --verify.

Skips when crun or a static busybox (Debian's busybox-static) is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (StoreEnv, directory, file, oci_layout,  # noqa: E402,F401
                        store_env, symlink, tar_bytes)


def static_busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            r = subprocess.run(["ldd", path], capture_output=True, text=True)
            if "not a dynamic executable" in r.stdout + r.stderr:
                return path
    return None


def busybox_layer() -> bytes:
    data = Path(static_busybox()).read_bytes()
    return tar_bytes([directory("bin"), file("bin/busybox", data, mode=0o755),
                      symlink("bin/sh", "busybox"), symlink("bin/cat", "busybox"),
                      directory("etc"), file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                      directory("root", mode=0o700)])


def crun(bundle_config: str, cid: str, tmp: Path) -> subprocess.CompletedProcess:
    """crun in a private mount namespace without the cgroup2 mount of this
    machine's hybrid layout (crun refuses it), cgroups disabled."""
    state = tmp / "crun-state"
    script = ("umount /sys/fs/cgroup/unified 2>/dev/null; "
              f"exec crun --cgroup-manager=disabled --root '{state}' run "
              f"--bundle '{os.path.dirname(bundle_config)}' {cid}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def du(*paths) -> int:
    out = subprocess.run(["du", "-sxc", "--block-size=1"] + [str(p) for p in paths],
                         capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


def close(a: int, b: int) -> bool:
    return abs(a - b) <= 0.01 * max(a, b)


@pytest.fixture
def runnable(request):
    if shutil.which("crun") is None or shutil.which("unshare") is None:
        pytest.skip("crun is not installed")
    if static_busybox() is None:
        pytest.skip("no static busybox (busybox-static)")
    if os.geteuid() != 0:
        pytest.skip("runs crun as root")


@pytest.mark.parametrize("store_env", ["fuse"], indirect=True)
def test_run_commit_save_df_prune_check(runnable, store_env, tmp_path):
    env = store_env
    ok = env.ok
    image = oci_layout(tmp_path / "img", [busybox_layer()], ref_name="bb:1")
    ok("import", "-q", str(image.path))
    host = tmp_path / "host"
    host.mkdir()
    ok("create", "bb:1", "--name", "one", "-v", "data:/data", "-v", f"{host}:/host",
       "--tmpfs", "/scratch:size=1m")
    config = ok("bundle", "one", str(tmp_path / "b1"), "--", "/bin/sh", "-c",
                "echo root > /rootfile; echo vol > /data/v; echo bind > /host/h; "
                "echo tmp > /scratch/t; cat /scratch/t").out.strip()
    r = crun(config, "strata-one", tmp_path)
    assert (r.returncode, r.stdout) == (0, "tmp\n"), r.stderr
    ok("umount", "one")
    assert (host / "h").read_text() == "bind\n"
    assert (env.root / "volumes/data/_data/v").read_text() == "vol\n"
    assert ok("diff", "one").lines == ["A /rootfile"]

    new_id = ok("commit", "one", "bb:2").out.strip()
    ok("create", "bb:2", "--name", "two")
    config = ok("bundle", "two", str(tmp_path / "b2"), "--", "/bin/cat",
                "/rootfile").out.strip()
    r = crun(config, "strata-two", tmp_path)
    assert (r.returncode, r.stdout) == (0, "root\n"), r.stderr
    ok("umount", "two")

    ok("rm", "one")
    ok("create", "bb:1", "--name", "three", "-v", "data:/data")
    config = ok("bundle", "three", str(tmp_path / "b3"), "--", "/bin/cat",
                "/data/v").out.strip()
    r = crun(config, "strata-three", tmp_path)
    assert (r.returncode, r.stdout) == (0, "vol\n"), r.stderr
    ok("umount", "three")

    ok("save", "bb:2", "-o", str(tmp_path / "bb2.tar"))
    (tmp_path / "fresh").mkdir()
    fresh = StoreEnv(tmp_path / "fresh", "vfs")
    assert fresh.ok("import", "-q", str(tmp_path / "bb2.tar")).out.strip() == new_id
    layers = json.loads(ok("inspect", "bb:2").out)["layers"]
    assert json.loads(fresh.ok("inspect", new_id).out)["layers"] == layers

    df = {u["type"]: u for u in json.loads(ok("df", "--format", "json").out)}
    layer_dirs = [env.root / "layers" / lid[7:] for lid in layers]
    assert close(df["images"]["size"], du(*layer_dirs))
    assert close(df["volumes"]["size"], du(env.root / "volumes/data"))
    containers = {c["name"]: c for c in df["containers"]["items"]}
    cids = {n: c["id"] for n, c in containers.items()}
    assert close(containers["two"]["size"], du(env.root / "containers" / cids["two"]))

    # in use: container three (mounted), its image bb:1 and the volume data;
    # unused: container two (unmounted), then image bb:2 and its top layer
    ok("mount", "three")
    expected = du(env.root / "containers" / cids["two"], env.root / "layers" / layers[1][7:])
    out = ok("prune", "-a", "-f").lines
    assert [line.split(" (")[0] for line in out[:-1]] == [
        "removed container two", f"removed image {new_id[:12]}",
        f"removed layer {layers[1][7:19]}"]
    freed = int(out[-1].split("(")[1].split()[0])
    assert close(freed, expected), (freed, expected)
    assert ok("ps", "-q").out.split() == [cids["three"]]
    assert ok("images", "-q").out.split() == [image.config_digest[7:]]
    assert ok("volume", "ls", "-q").out.split() == ["data"]
    ok("umount", "three")
    r = env.cli("check", "--verify")
    assert (r.code, r.out) == (0, "")

    base = env.root / "layers" / layers[0][7:] / "diff" / "etc/passwd"
    data = bytearray(base.read_bytes())
    data[0] ^= 0x20
    base.write_bytes(bytes(data))
    r = env.cli("check", "--verify")
    assert (r.code, r.out) == (1, f"layer {layers[0][7:19]} is corrupt: etc/passwd: "
                                  "contents differ from the layer's tar\n")
    data[0] ^= 0x20
    base.write_bytes(bytes(data))
