"""Images as podman and skopeo write them, imported with `layers import` and
compared with what podman itself says of the image (`podman inspect`).

One image for the module: a base imported from a tar that holds a real /dev
(device nodes, a fifo, owners other than root), plus three `COPY` steps,
built by podman 4.3 (`podman build` with COPY runs no container) in a
throw-away rootful vfs store.  It is saved in every format podman and skopeo
write; each test imports one.  The image id is the config's digest in every
format but the legacy one (it has no config; the id is ours).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import (LAYERS_EXE, NOBODY, StoreEnv, nobody_dir,  # noqa: E402,F401
                        run_as_nobody, store_env)

from support import podman as podman_support  # noqa: E402
from support import rootless  # noqa: E402
from support.registryd import ensure_installed  # noqa: E402
from support.rootless import Agent, Sandbox  # noqa: E402

NAME = "localhost/strata-formats:1"
BASE = "localhost/strata-formats-base:1"

# (kind, major, minor) of the device nodes the base image's /dev holds
DEVICES = {"dev/null": ("char", 1, 3), "dev/full": ("char", 1, 7),
           "dev/tty": ("char", 5, 0), "dev/loop0": ("block", 7, 0),
           "dev/loop300": ("block", 7, 300)}


def base_rootfs_tar() -> bytes:
    """A small root filesystem as GNU tar would pack one from a real system."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def add(name, type_=tarfile.DIRTYPE, data=b"", mode=0o755, uid=0, gid=0, **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, 1_700_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data) if type_ == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("./")
        for d in ("bin", "dev", "etc", "home", "tmp"):
            add(f"./{d}/", mode=0o1777 if d == "tmp" else 0o755)
        add("./etc/passwd", tarfile.REGTYPE, b"root:x:0:0::/root:/bin/sh\n", 0o644)
        add("./etc/shadow", tarfile.REGTYPE, b"root:*:1::::::\n", 0o640, gid=42)
        add("./home/user/", mode=0o700, uid=1000, gid=1000)
        add("./home/user/notes", tarfile.REGTYPE, b"mine\n", 0o600, uid=1000, gid=1000)
        add("./bin/tool", tarfile.REGTYPE, b"#!/bin/sh\necho tool\n", 0o4755)
        add("./bin/tool-link", tarfile.LNKTYPE, linkname="./bin/tool", mode=0o4755)
        add("./bin/sh", tarfile.SYMTYPE, linkname="tool", mode=0o777)
        for name, (kind, major, minor) in DEVICES.items():
            add(f"./{name}", tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE,
                mode=0o666 if kind == "char" else 0o660, gid=0 if kind == "char" else 6,
                devmajor=major, devminor=minor)
        add("./dev/initctl", tarfile.FIFOTYPE, mode=0o600)
    return buf.getvalue()


@dataclass
class Saved:
    """The built image as podman sees it, and where each format was written."""
    image_id: str
    diff_ids: list[str]
    names: list[str]
    paths: dict[str, Path]
    base_id: str                  # the base image, saved with it in `podman save -m`


# format → the names the format carries (docker-dir and dir: carry none)
NAMED = {"podman-docker-archive": True, "podman-oci-archive": True,
         "podman-docker-dir": False, "podman-oci-dir": True,
         "skopeo-docker-archive": True, "skopeo-oci-archive": True,
         "skopeo-oci": True, "skopeo-dir": False}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Saved:
    reason = podman_support.ensure_podman()
    if reason:
        pytest.skip(reason)
    skopeo = ensure_installed("skopeo", "skopeo")
    work = tmp_path_factory.mktemp("podman-formats")
    graph, tmp = work / "graph", work / "libpod-tmp"
    # podman refuses a runroot over 50 characters, which pytest's numbered
    # base directory passes once a machine has run it a thousand times
    run = Path(tempfile.mkdtemp(prefix="pf-run-"))
    conf = work / "containers.conf"
    conf.write_text(podman_support.CONTAINERS_CONF)
    env = dict(os.environ, CONTAINERS_CONF=str(conf), TMPDIR=str(work))
    store_opts = ["--root", str(graph), "--runroot", str(run), "--tmpdir", str(tmp),
                  "--storage-driver", "vfs"]

    def podman(*args) -> str:
        r = subprocess.run(["podman", *store_opts, *map(str, args)], capture_output=True,
                           text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"podman {' '.join(map(str, args))}: {r.stderr}"
        return r.stdout

    try:
        (work / "base.tar").write_bytes(base_rootfs_tar())
        podman("import", work / "base.tar", BASE)
        ctx = work / "context"
        (ctx / "conf").mkdir(parents=True)
        (ctx / "app.txt").write_text("app\n")
        (ctx / "conf" / "a.conf").write_text("a=1\n")
        (ctx / "conf" / "b.conf").write_text("b=2\n")
        (ctx / "Containerfile").write_text(
            f"FROM {BASE}\nCOPY app.txt /opt/app/app.txt\nCOPY conf/ /etc/app/\n"
            "COPY app.txt /usr/share/app.txt\n")
        podman("build", "--pull=never", "--network=none", "-q", "-t", NAME, ctx)
        (info,) = json.loads(podman("inspect", "--type", "image", NAME))
        paths = {}
        for fmt in ("docker-archive", "oci-archive", "docker-dir", "oci-dir"):
            paths[f"podman-{fmt}"] = work / f"podman-{fmt}"
            podman("save", "-q", "--format", fmt, "-o", paths[f"podman-{fmt}"], NAME)
        paths["podman-multi"] = work / "podman-multi"
        podman("save", "-q", "-m", "-o", paths["podman-multi"], NAME, BASE)
        (base,) = json.loads(podman("inspect", "--type", "image", BASE))
        source = f"containers-storage:[vfs@{graph}+{run}]{NAME}"
        for transport in ("docker-archive", "oci-archive", "oci", "dir"):
            path = paths[f"skopeo-{transport}"] = work / f"skopeo-{transport}"
            dest = f"{transport}:{path}" + ("" if transport == "dir" else f":{NAME}")
            r = subprocess.run([skopeo, "copy", "-q", source, dest], capture_output=True,
                               text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, f"skopeo copy {dest}: {r.stderr}"
        yield Saved(info["Id"], info["RootFS"]["Layers"], info["RepoTags"], paths, base["Id"])
    finally:
        subprocess.run(["podman", *store_opts, "system", "reset", "-f"], capture_output=True,
                       env=env, timeout=300, stdin=subprocess.DEVNULL)
        shutil.rmtree(run, ignore_errors=True)


def imported(env: StoreEnv, path: Path) -> dict:
    r = env.cli("import", "-q", str(path))
    assert r.code == 0, r.err
    (image_id,) = r.out.split()
    return json.loads(env.ok("inspect", image_id).out)


def layer_diff_ids(env: StoreEnv, image: dict) -> list[str]:
    return [json.loads(env.ok("inspect", layer).out)["diff_id"] for layer in image["layers"]]


@pytest.mark.parametrize("fmt", sorted(NAMED))
def test_every_format_imports_as_podman_sees_the_image(store_env, saved, tmp_path, fmt):
    image = imported(store_env, saved.paths[fmt])
    assert image["id"] == saved.image_id
    assert layer_diff_ids(store_env, image) == saved.diff_ids
    assert image["names"] == (saved.names if NAMED[fmt] else [])
    # each layer's tar comes back byte for byte: its sha256 is podman's diffID
    for layer, diff_id in zip(image["layers"], saved.diff_ids):
        out = tmp_path / "layer.tar"
        store_env.ok("export", "-o", str(out), layer)
        assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == diff_id
    store_env.assert_consistent()


def test_podman_save_of_two_images_imports_both(store_env, saved):
    r = store_env.cli("import", "-q", str(saved.paths["podman-multi"]))
    assert (r.code, r.out.split()) == (0, [saved.image_id, saved.base_id]), r.err
    images = {i["id"]: i["names"] for i in json.loads(store_env.ok("images", "--format",
                                                                   "json").out)}
    assert images == {saved.image_id: saved.names, saved.base_id: [BASE]}


def _copy_tar(src: Path, dest: Path, drop: set[str]) -> None:
    """`src` less the members named in `drop`, the others in their order."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tin.format) as tout:
        for m in tin:
            if m.name not in drop:
                tout.addfile(m, tin.extractfile(m) if m.isreg() else None)


def test_legacy_archive_of_the_same_image(store_env, saved, tmp_path):
    """podman's docker-archive without manifest.json is the pre-1.10 format:
    `repositories` and `<id>/{json,layer.tar}`."""
    legacy = tmp_path / "legacy.tar"
    _copy_tar(saved.paths["podman-docker-archive"], legacy, {"manifest.json"})
    image = imported(store_env, legacy)
    assert layer_diff_ids(store_env, image) == saved.diff_ids
    assert image["names"] == saved.names
    assert image["config"]["rootfs"]["diff_ids"] == saved.diff_ids
    store_env.assert_consistent()


def test_archive_lacking_a_layer_is_refused_in_one_line(store_env, saved, tmp_path):
    broken = tmp_path / "broken.tar"
    missing = saved.diff_ids[1][7:] + ".tar"
    _copy_tar(saved.paths["podman-docker-archive"], broken, {missing})
    r = store_env.cli("import", str(broken))
    assert (r.code, r.err) == (1, f"layers: cannot read {broken}: manifest.json lists "
                                  f"{missing}, which the archive lacks\n")
    assert store_env.ok("images", "-q").out == ""


# -- rootless: the base layer's /dev ---------------------------------------------------

DEVICE_NOTE = (f"layers: {len(DEVICES)} device nodes kept as empty files with type, numbers, "
               "owner and mode in user.containers.override_stat (no device can be made "
               "rootless); fsd mounts show them as devices\n")


def test_rootless_import_keeps_device_nodes_and_every_layer_byte_for_byte(saved, nobody_dir):
    archive = nobody_dir / "img.tar"
    shutil.copyfile(saved.paths["podman-docker-archive"], archive)
    archive.chmod(0o644)

    def nobody(*args: str, store: str = "store") -> subprocess.CompletedProcess:
        r = run_as_nobody(nobody_dir, *args, store=store)
        assert r.returncode == 0, f"layers {' '.join(args)}: {r.stderr}"
        return r

    r = nobody("import", "-q", str(archive))
    assert (r.stdout.split(), r.stderr) == ([saved.image_id], DEVICE_NOTE)
    image = json.loads(nobody("inspect", saved.image_id).stdout)
    base = json.loads(nobody("inspect", image["layers"][0]).stdout)["dir"]
    for rel, (kind, major, minor) in DEVICES.items():
        st = os.lstat(os.path.join(base, rel))
        assert stat.S_ISREG(st.st_mode) and st.st_uid == NOBODY, rel
        owner = "0:0:0666" if kind == "char" else "0:6:0660"
        assert os.getxattr(os.path.join(base, rel), "user.containers.override_stat") == \
            f"{owner}:{kind}-{major}-{minor}".encode()
    for layer, diff_id in zip(image["layers"], saved.diff_ids):
        out = nobody_dir / "layer.tar"
        nobody("export", "-o", str(out), layer)
        assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == diff_id
    nobody("save", saved.image_id, "-o", str(nobody_dir / "saved.tar"))
    r = nobody("import", "-q", str(nobody_dir / "saved.tar"), store="other")
    assert (r.stdout.split(), r.stderr) == ([saved.image_id], DEVICE_NOTE)
    assert nobody("check", "--verify").stdout == ""


def test_rootless_fsd_mount_shows_the_device_nodes(saved):
    """As the rootless test user, with the fuse driver: the container's /dev holds
    the devices, type, numbers, owner and mode as the image has them."""
    user, reason = rootless.fsd_user()
    if reason:
        pytest.skip(reason)
    box = Sandbox(user, prefix="strata-devnodes-")
    agent = None
    problems: list[str] = []
    try:
        archive = box.root / "img.tar"
        shutil.copyfile(saved.paths["podman-docker-archive"], archive)
        archive.chmod(0o644)
        store, run = box.dir("store"), box.dir("run", mode=0o700)
        conf = box.file("storage.conf")
        agent = Agent(box)

        def layers(*args) -> str:
            r = agent.run([LAYERS_EXE, "--root", store, "--runroot", run, "--driver", "fuse",
                           *args], env={"STRATA_STORAGE_CONF": str(conf),
                                        "XDG_RUNTIME_DIR": str(run)})
            assert r.returncode == 0, r.describe()
            return r.stdout.strip()

        layers("import", "-q", archive)
        layers("create", NAME, "--name", "c")
        merged = Path(layers("mount", "c"))
        try:
            for rel, (kind, major, minor) in DEVICES.items():
                st = agent.stat(merged / rel)
                fmt = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
                want = (fmt, major, minor, 0, 0 if kind == "char" else 6,
                        0o666 if kind == "char" else 0o660)
                assert (stat.S_IFMT(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev),
                        st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == want, rel
        finally:
            layers("umount", "c")
    finally:
        if agent is not None:
            problems += agent.close()
        problems += box.cleanup()
    assert not problems, problems
