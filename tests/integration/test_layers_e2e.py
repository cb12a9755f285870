"""End to end through the real `layers` program: multi-layer images made by the
test in OCI layout and docker-archive form → import → create → mount → write →
umount → rm → rmi, and the layer another image shares stays and works."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (StoreEnv, directory, docker_archive, file, oci_layout,  # noqa: E402
                        store_env, symlink, tar_bytes, tree_snapshot)

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n"),
                  file("bin/sh", "#!sh\n", mode=0o755), symlink("bin/bash", "sh"),
                  file("lib/libc.so", os.urandom(200_000))])
WEB = tar_bytes([file("srv/index.html", "<h1>web</h1>\n"), file("etc/.wh.os-release")])
DB = tar_bytes([file("var/lib/db/data", "rows\n"), file("etc/os-release", "ID=db\n")])


def run(env: StoreEnv, *args: str) -> str:
    r = env.cli_proc(*args)
    assert r.code == 0, f"layers {' '.join(args)}: {r.err}"
    return r.out.strip()


@pytest.mark.parametrize("store_env", ["vfs", "overlay", "fuse", "btrfs"], indirect=True)
def test_import_create_mount_write_umount_rm_keeps_shared_layer(store_env, tmp_path):
    env = store_env
    web = oci_layout(tmp_path / "web.tar", [BASE, WEB], as_tar=True, compression="gzip")
    db = docker_archive(tmp_path / "db.tar", [BASE, DB], repo_tags=["db:1"])
    web_id = run(env, "import", "-q", str(web.path), "--name", "web:1")
    db_id = run(env, "import", "-q", str(db.path))
    assert web.chain_ids[0] == db.chain_ids[0]
    layers = sorted(n for n in os.listdir(env.root / "layers") if not n.endswith(".json"))
    assert layers == sorted({c[7:] for c in web.chain_ids + db.chain_ids})   # 3, not 4
    images = json.loads(run(env, "images", "--format", "json"))
    assert {tuple(i["names"]) for i in images} == {("web:1",), ("db:1",)}

    cid = run(env, "create", "web:1", "--name", "site")
    mp = run(env, "mount", "site")
    assert Path(mp, "srv/index.html").read_text() == "<h1>web</h1>\n"
    assert not Path(mp, "etc/os-release").exists()
    Path(mp, "srv/index.html").write_text("<h1>changed</h1>\n")
    Path(mp, "srv/new.txt").write_text("new\n")
    os.unlink(os.path.join(mp, "bin/bash"))
    assert run(env, "diff", "site").splitlines() == [
        "D /bin/bash", "C /srv/index.html", "A /srv/new.txt"]
    run(env, "umount", "site")
    assert run(env, "rm", "site") == cid
    assert not (env.root / "containers" / cid).exists()

    out = run(env, "rmi", "web:1").splitlines()
    assert out[0] == f"removed image {web_id[:12]}"
    assert out[1:] == [f"removed unreferenced layer {web.chain_ids[1][7:19]}"]
    remaining = sorted(n for n in os.listdir(env.root / "layers") if not n.endswith(".json"))
    assert remaining == sorted(c[7:] for c in db.chain_ids)      # the shared base stays

    run(env, "create", db_id[:12], "--name", "dbc")
    mp = run(env, "mount", "dbc")
    assert Path(mp, "etc/os-release").read_text() == "ID=db\n"
    assert Path(mp, "lib/libc.so").stat().st_size == 200_000
    assert Path(mp, "var/lib/db/data").read_text() == "rows\n"
    run(env, "umount", "dbc")
    run(env, "rm", "dbc")


@pytest.mark.parametrize("form", ["oci-dir", "oci-tar", "oci-zstd", "docker-tar",
                                  "docker-dir"])
def test_every_form_gives_the_same_identity(tmp_path, form):
    layers = [BASE, WEB, DB]
    maker = {
        "oci-dir": lambda p: oci_layout(p, layers),
        "oci-tar": lambda p: oci_layout(p, layers, as_tar=True, compression=None),
        "oci-zstd": lambda p: oci_layout(p, layers, compression="zstd"),
        "docker-tar": lambda p: docker_archive(p, layers),
        "docker-dir": lambda p: docker_archive(p, layers, as_tar=False),
    }[form]
    built = maker(tmp_path / "img")
    (tmp_path / form).mkdir()
    env = StoreEnv(tmp_path / form, "vfs")
    image_id = run(env, "import", "-q", str(built.path), "--name", "same:1")
    info = json.loads(run(env, "inspect", "same:1"))
    assert image_id == built.config_digest[7:]
    assert info["layers"] == built.chain_ids
    top = json.loads(run(env, "inspect", built.chain_ids[-1]))
    assert top["diff_id"] == built.diff_ids[-1] and top["parent"] == built.chain_ids[-2]
    if form == "oci-zstd":
        assert top["compressed_digest"] is not None
    snap = tree_snapshot(top["dir"])
    assert snap["/etc/os-release"][4] == b"ID=db\n"
    assert run(env, "check") == ""
