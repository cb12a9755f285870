"""Hostile input through `layers import`: every crafted archive is refused with
a one-line message naming the entry, nothing is written outside the store,
and nothing of the import stays in it (not even its good layers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (LAYERS_EXE, NOBODY, StoreEnv, TarEntry, directory,  # noqa: E402
                        docker_archive, file, hostile_corpus, nobody_dir, oci_layout,
                        run_as_nobody, sha256, store_env, symlink, tar_bytes)

ROOT = os.geteuid() == 0


def assert_empty_store(env: StoreEnv) -> None:
    assert env.ok("images", "-q").out == ""
    root = env.root
    assert [n for n in os.listdir(root / "layers")] == []
    assert [n for n in os.listdir(root / "staging") if not n.endswith(".lock")] == []


def _ids(privileged: bool):
    return [h.id for h in hostile_corpus("/x") if not (h.needs_unprivileged and privileged)]


@pytest.mark.parametrize("case", _ids(ROOT))
def test_hostile_layer_tar(store_env, tmp_path, case):
    canary = tmp_path / "canary"
    canary.mkdir()
    h = next(h for h in hostile_corpus(str(canary)) if h.id == case)
    path = tmp_path / f"{case}.tar"
    path.write_bytes(h.data)
    r = store_env.cli("import", str(path))
    want = "layers: " + h.message.replace("{where}", str(path)) + "\n"
    assert r.code == 1
    assert re.fullmatch(re.escape(want).replace(re.escape("{detail}"), ".+"), r.err), r.err
    assert os.listdir(canary) == []
    assert_empty_store(store_env)


def test_hostile_layer_inside_an_image_takes_the_good_layers_with_it(store_env, tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    good = tar_bytes([file("etc/ok", "ok")])
    bad = tar_bytes([symlink("s", str(canary)), file("s/evil", "x")])
    built = oci_layout(tmp_path / "img", [good, bad], compression="zstd")
    r = store_env.cli("import", str(built.path))
    assert (r.code, r.err) == (1, "layers: refusing archive entry 's/evil': "
                                  "'s' is a symlink or not a directory\n")
    assert os.listdir(canary) == []
    assert_empty_store(store_env)


def test_manifest_that_lies_about_a_layer(store_env, tmp_path):
    one = tar_bytes([file("a", "1")])
    built = docker_archive(tmp_path / "img", [one, tar_bytes([file("b", "2")])],
                           as_tar=False)
    config_name = json.loads((built.path / "manifest.json").read_text())[0]["Config"]
    # swap the second layer for different content: its diffID no longer matches
    layer_dir = built.diff_ids[1][7:]
    (built.path / layer_dir / "layer.tar").write_bytes(tar_bytes([file("b", "evil")]))
    r = store_env.cli("import", str(built.path))
    got = sha256((built.path / layer_dir / "layer.tar").read_bytes())
    assert r.code == 1
    assert r.err == (f"layers: digest mismatch for layer 2/2 ({layer_dir}/layer.tar) "
                     f"diffID: expected {built.diff_ids[1]}, got {got}\n")
    assert config_name.endswith(".json")
    assert_empty_store(store_env)


def test_truncated_image_archive(store_env, tmp_path):
    built = oci_layout(tmp_path / "img.tar", [tar_bytes([file("a", "1" * 20000)])],
                       as_tar=True, compression=None)
    data = built.path.read_bytes()
    built.path.write_bytes(data[: len(data) // 2])
    r = store_env.cli("import", str(built.path))
    assert r.code == 1 and r.err.startswith("layers: ") and r.err.count("\n") == 1
    assert_empty_store(store_env)


# -- as an unprivileged user ---------------------------------------------------------------

def test_unprivileged_import_keeps_owners_and_devices_in_xattr(nobody_dir):
    dev = nobody_dir / "dev.tar"
    dev.write_bytes(tar_bytes([file("ok", "1"),
                               TarEntry("dev/sda", b"4", devmajor=8, devminor=0, gid=6)]))
    dev.chmod(0o644)
    r = run_as_nobody(nobody_dir, "import", "-q", str(dev), "--name", "dev")
    assert (r.returncode, r.stderr) == (0, "layers: 1 device node kept as empty files with "
                                           "type, numbers, owner and mode in "
                                           "user.containers.override_stat (no device can "
                                           "be made rootless); fsd mounts show them as "
                                           "devices\n")
    info = json.loads(run_as_nobody(nobody_dir, "inspect", "dev").stdout)
    diff = nobody_dir / "store" / "layers" / info["layers"][0][7:] / "diff"
    assert os.getxattr(diff / "dev/sda", "user.containers.override_stat") == \
        b"0:6:0644:block-8-0"
    owned = nobody_dir / "owned.tar"
    owned.write_bytes(tar_bytes([directory("home/u", mode=0o700, uid=1000, gid=1000),
                                 file("home/u/secret", "s", mode=0o400, uid=1000, gid=1000),
                                 file("etc/shadow", "x", mode=0o000, uid=0, gid=42)]))
    owned.chmod(0o644)
    r = run_as_nobody(nobody_dir, "import", "-q", str(owned), "--name", "owned")
    assert r.returncode == 0, r.stderr
    r = run_as_nobody(nobody_dir, "inspect", "owned")
    info = json.loads(r.stdout)
    diff = nobody_dir / "store" / "layers" / info["layers"][0][7:] / "diff"
    assert os.getxattr(diff / "home/u/secret", "user.containers.override_stat") == \
        b"1000:1000:0400:file"
    assert os.getxattr(diff / "etc/shadow", "user.containers.override_stat") == \
        b"0:42:0000:file"
    assert os.stat(diff / "home/u/secret").st_uid == NOBODY
    r = run_as_nobody(nobody_dir, "check")
    assert (r.returncode, r.stdout) == (0, "")


def test_unprivileged_user_cannot_make_a_kernel_overlay_store(nobody_dir):
    conf = nobody_dir / "storage.conf"
    conf.write_text("")
    conf.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "HOME": str(nobody_dir),
           "STRATA_STORAGE_CONF": str(conf)}
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        LAYERS_EXE, "--root", str(nobody_dir / "ov"), "--runroot",
                        str(nobody_dir / "run"), "--driver", "overlay", "images"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (1, "layers: overlay driver: the kernel overlay "
                                           "needs root; use fuse\n")
    assert not (nobody_dir / "ov").exists()
