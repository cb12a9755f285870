"""Helpers shared by the layer-store tests (unit and integration).

- `TarEntry`/`make_tar`: build layer tars entry by entry (plain, gzip, zstd).
- `oci_layout`/`docker_archive`: write a multi-layer image in either form,
  as a directory or a tar, from a list of layer tars.
- `StoreEnv`: a store in a temp dir with its own runroot and storage.conf,
  the CLI run in-process (`cli`) or as a real process (`cli_proc`), and
  `cleanup()` that undoes every mount under the test's temp dir (called by
  the fixtures, even on failure) and `assert_consistent()` (the store's own
  check, run at the end of every test that uses the fixture).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from layers import cli, config as configmod
from layers.drivers.base import mount_fstype
from layers.store import Store

VENV_BIN = Path(sys.executable).parent
LAYERS_EXE = str(VENV_BIN / "layers")


# -- building tars -------------------------------------------------------------------

@dataclass
class TarEntry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    mtime: int = 1_700_000_000
    size: int | None = None          # a lie in the header, when set
    devmajor: int = 0
    devminor: int = 0
    pax: dict = field(default_factory=dict)


def file(name, data=b"", mode=0o644, **kw) -> TarEntry:
    return TarEntry(name, tarfile.REGTYPE, data if isinstance(data, bytes) else data.encode(),
                    mode, **kw)


def directory(name, mode=0o755, **kw) -> TarEntry:
    return TarEntry(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name, target, **kw) -> TarEntry:
    return TarEntry(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)


def hardlink(name, target, **kw) -> TarEntry:
    return TarEntry(name, tarfile.LNKTYPE, linkname=target, **kw)


def tar_bytes(entries: list[TarEntry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = e.type
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime
            ti.linkname = e.linkname
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            ti.pax_headers = dict(e.pax)
            if e.type == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def compress(raw: bytes, compression: str | None) -> bytes:
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                              check=True).stdout
    raise ValueError(compression)


def make_tar(path, entries: list[TarEntry], compression: str | None = None) -> Path:
    path = Path(path)
    path.write_bytes(compress(tar_bytes(entries), compression))
    return path


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    out = []
    for d in diff_ids:
        out.append(d if not out else sha256(f"{out[-1]} {d}".encode()))
    return out


# -- images in OCI layout and docker-archive form --------------------------------------

@dataclass
class BuiltImage:
    path: Path
    diff_ids: list[str]
    chain_ids: list[str]
    config_digest: str


def _config(diff_ids: list[str], cmd=("/bin/sh",)) -> bytes:
    doc = {"architecture": "amd64", "os": "linux",
           "config": {"Cmd": list(cmd), "Env": ["PATH=/usr/bin:/bin"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    return json.dumps(doc, sort_keys=True).encode()


def _tar_dir(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tf:
        for name in sorted(os.listdir(src)):
            tf.add(src / name, arcname=name)


def oci_layout(dest, layers: list[bytes], ref_name: str | None = None,
               as_tar: bool = False, compression: str | None = "gzip",
               corrupt_layer: int | None = None) -> BuiltImage:
    """An OCI image layout of `layers` (uncompressed tars, bottom first)."""
    dest = Path(dest)
    root = dest.with_name(dest.name + ".d") if as_tar else dest
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = sha256(data)
        (blobs / d[7:]).write_bytes(data)
        return d

    diff_ids = [sha256(raw) for raw in layers]
    descs = []
    for i, raw in enumerate(layers):
        blob = compress(raw, compression)
        d = put(blob)
        if corrupt_layer == i:
            (blobs / d[7:]).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
        media = "application/vnd.oci.image.layer.v1.tar" + (
            {"gzip": "+gzip", "zstd": "+zstd"}.get(compression, ""))
        descs.append({"mediaType": media, "digest": d, "size": len(blob)})
    config = _config(diff_ids)
    cdigest = put(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cdigest, "size": len(config)},
        "layers": descs}).encode()
    mdigest = put(manifest)
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": mdigest, "size": len(manifest)}
    if ref_name:
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if as_tar:
        _tar_dir(root, dest)
        shutil.rmtree(root)
    return BuiltImage(dest, diff_ids, chain_ids(diff_ids), cdigest)


def docker_archive(dest, layers: list[bytes], repo_tags=(), as_tar: bool = True) -> BuiltImage:
    """A `docker save` archive (legacy layout: <id>/layer.tar, <config>.json)."""
    dest = Path(dest)
    root = dest.with_name(dest.name + ".d") if as_tar else dest
    root.mkdir(parents=True)
    diff_ids = [sha256(raw) for raw in layers]
    paths = []
    for raw, d in zip(layers, diff_ids):
        (root / d[7:]).mkdir()
        (root / d[7:] / "layer.tar").write_bytes(raw)
        (root / d[7:] / "VERSION").write_text("1.0")
        paths.append(f"{d[7:]}/layer.tar")
    config = _config(diff_ids)
    cdigest = sha256(config)
    (root / f"{cdigest[7:]}.json").write_bytes(config)
    (root / "manifest.json").write_text(json.dumps(
        [{"Config": f"{cdigest[7:]}.json", "RepoTags": list(repo_tags), "Layers": paths}]))
    if as_tar:
        _tar_dir(root, dest)
        shutil.rmtree(root)
    return BuiltImage(dest, diff_ids, chain_ids(diff_ids), cdigest)


def podman_archive(dest, layers: list[bytes], repo_tags=(), omit=()) -> BuiltImage:
    """A docker-archive as podman and skopeo write it: the layers as
    `<diffID>.tar` first, then the config, per layer a legacy `<v1 id>/`
    (`layer.tar` a symlink to `../<diffID>.tar`, `json`, `VERSION`), and last
    `manifest.json` and `repositories`.  Members named in `omit` are left out
    (without `manifest.json` it is an archive of the legacy format)."""
    dest = Path(dest)
    diff_ids = [sha256(raw) for raw in layers]
    config = _config(diff_ids)
    cdigest = sha256(config)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def add(name: str, data: bytes | None = None, link: str | None = None) -> None:
        ti = tarfile.TarInfo(name)
        if link is not None:
            ti.type, ti.linkname = tarfile.SYMTYPE, link
        else:
            ti.size, ti.mode = len(data), 0o444
        members.append((ti, data))

    for raw, d in zip(layers, diff_ids):
        add(f"{d[7:]}.tar", raw)
    add(f"{cdigest[7:]}.json", config)
    parent = None
    for i, d in enumerate(diff_ids):
        v1 = sha256(f"{parent} {d}".encode())[7:]
        doc = {"id": v1, **({"parent": parent} if parent else {})}
        if i == len(diff_ids) - 1:
            doc.update({k: v for k, v in json.loads(config).items() if k != "rootfs"})
        add(f"{v1}/layer.tar", link=f"../{d[7:]}.tar")
        add(f"{v1}/VERSION", b"1.0")
        add(f"{v1}/json", json.dumps(doc).encode())
        parent = v1
    add("manifest.json", json.dumps([{"Config": f"{cdigest[7:]}.json",
                                      "RepoTags": list(repo_tags),
                                      "Layers": [f"{d[7:]}.tar" for d in diff_ids]}]).encode())
    repos: dict = {}
    for tag in repo_tags:
        repo, _, t = tag.rpartition(":")
        repos.setdefault(repo, {})[t] = parent
    add("repositories", json.dumps(repos).encode())
    with tarfile.open(dest, "w") as tf:
        for ti, data in members:
            if ti.name not in omit:
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return BuiltImage(dest, diff_ids, chain_ids(diff_ids), cdigest)


# -- a store under test ------------------------------------------------------------------

@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class StoreEnv:
    def __init__(self, tmp_path: Path, driver: str = "vfs"):
        self.tmp = Path(tmp_path)
        self.root = self.tmp / "store"
        self.runroot = self.tmp / "run"
        self.driver = driver
        self.conf = self.tmp / "storage.conf"
        if not self.conf.exists():
            self.conf.write_text("")
        self.env = {"STRATA_STORAGE_CONF": str(self.conf)}
        self._stores: list[Store] = []

    def config(self, driver: str | None = "default"):
        return configmod.load(root=str(self.root), runroot=str(self.runroot),
                              driver=self.driver if driver == "default" else driver,
                              env=self.env)

    def open(self, **kw) -> Store:
        store = Store.open(self.config(), **kw)
        self._stores.append(store)
        return store

    def args(self) -> list[str]:
        return ["--root", str(self.root), "--runroot", str(self.runroot),
                "--driver", self.driver]

    def cli(self, *args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        old = os.environ.get("STRATA_STORAGE_CONF")
        os.environ["STRATA_STORAGE_CONF"] = str(self.conf)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(self.args() + list(args))
        finally:
            if old is None:
                del os.environ["STRATA_STORAGE_CONF"]
            else:
                os.environ["STRATA_STORAGE_CONF"] = old
        return CliResult(code, out.getvalue(), err.getvalue())

    def proc_env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra)
        return env

    def cli_proc(self, *args: str, timeout: float = 60, **extra_env) -> CliResult:
        p = subprocess.run([LAYERS_EXE] + self.args() + list(args), capture_output=True,
                           text=True, timeout=timeout, env=self.proc_env(**extra_env),
                           stdin=subprocess.DEVNULL)
        return CliResult(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str) -> CliResult:
        r = self.cli(*args)
        assert r.code == 0, f"layers {' '.join(args)} → {r.code}: {r.err}"
        return r

    def assert_consistent(self) -> None:
        store = Store.open(self.config(driver=None))
        problems = store.check()
        assert problems == [], problems
        leftovers = [n for n in os.listdir(store.paths.staging) if not n.endswith(".lock")]
        assert leftovers == []

    def cleanup(self) -> list[str]:
        """Undo every mount under the temp dir; returns what had to be undone."""
        undone = []
        if (self.root / "strata.json").exists():
            try:
                store = Store.open(self.config(driver=None), lock_timeout=5, repair=False)
                for state in store.list_containers():
                    if state.mount is not None:
                        store.umount(state.container.id, force=True)
                        undone.append(state.container.name)
            except Exception as e:  # keep cleaning whatever broke
                undone.append(f"error: {e}")
        undone += unmount_under(self.tmp)
        return undone


def run_on_terminal(argv: list[str], env: dict, answer: bytes | None = None,
                    timeout: float = 60) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a new pseudo-terminal (as
    a user at a terminal runs it); type `answer` once a `[y/N]` question
    shows.  (exit code, everything it wrote, CRs and all)."""
    master, slave = os.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise TimeoutError(f"{argv} wrote nothing for {timeout}s: {out!r}")
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: every writer of the terminal has gone
                break
            if not data:
                break
            out += data
            if answer is not None and b"[y/N]" in out:
                os.write(master, answer)
                answer = None
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace")


def unmount_under(top: Path) -> list[str]:
    """Lazily unmount everything mounted under `top` (deepest first) and kill
    any fsd serving it."""
    top = os.path.realpath(top)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == top or mp.startswith(top + "/"):
                points.append(mp)
    for mp in sorted(set(points), key=len, reverse=True):
        for pid in _daemons_for(mp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", mp], capture_output=True)
    return points


def _daemons_for(mountpoint: str) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in argv and any(b"lowerdir=" in a for a in argv):
            out.append(int(name))
    return out


def driver_skip_reason(driver: str) -> str | None:
    if driver == "overlay":
        if os.geteuid() != 0:
            return "the kernel overlay driver needs root"
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "no overlay filesystem in this kernel"
    if driver == "fuse":
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing"
        if shutil.which("fsd") is None and not (VENV_BIN / "fsd").exists():
            return "fsd is not installed"
        if shutil.which("fusermount3") is None:
            return "fusermount3 is missing"
    if driver == "btrfs":
        if os.geteuid() != 0:
            return "a btrfs on a loop device needs root to mount"
        if "btrfs" not in Path("/proc/filesystems").read_text():
            return "no btrfs filesystem in this kernel"
        if shutil.which("mkfs.btrfs") is None:
            return "mkfs.btrfs is missing (apt-get install btrfs-progs)"
        if not os.path.exists("/dev/loop-control"):
            return "no loop devices"
    return None


@contextlib.contextmanager
def btrfs_loop(size: str = "300M"):
    """A fresh btrfs on a loop device, mounted on a temp dir outside any
    test's tmp_path (whose cleanup unmounts everything below it); unmounted
    and removed on exit, even on failure."""
    top = Path(tempfile.mkdtemp(prefix="strata-btrfs-"))
    img, mnt = top / "img", top / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        subprocess.run(["truncate", "-s", size, str(img)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True,
                       capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            unmount_under(mnt)
            subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def store_env(request, tmp_path):
    """A StoreEnv for the driver in `request.param` (vfs when not parametrized);
    every mount is undone and the store checked at teardown."""
    driver = getattr(request, "param", "vfs")
    reason = driver_skip_reason(driver)
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        env = StoreEnv(tmp_path, driver)
        if driver == "btrfs":
            env.root = stack.enter_context(btrfs_loop()) / "store"
        yield env
        env.cleanup()
        if not _failed(request):
            env.assert_consistent()


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


# -- as an unprivileged user ------------------------------------------------------------

NOBODY = 65534


@pytest.fixture
def nobody_dir():
    """A world-writable temp dir (not under pytest's root-only tmp_path) for
    commands run as `nobody`."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    d = Path(tempfile.mkdtemp(prefix="strata-nobody-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_as_nobody(d: Path, *args: str, store: str = "store",
                  driver: str = "vfs") -> subprocess.CompletedProcess:
    """`layers … ARGS` as nobody on the store `d/store` (vfs by default)."""
    conf = d / "storage.conf"
    if not conf.exists():
        conf.write_text("")
        conf.chmod(0o644)
    env = {"PATH": os.environ["PATH"], "HOME": str(d), "STRATA_STORAGE_CONF": str(conf),
           "XDG_RUNTIME_DIR": str(d / "run")}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", LAYERS_EXE, "--root", str(d / store),
                           "--runroot", str(d / "run"), "--driver", driver, *args],
                          capture_output=True, text=True, env=env, timeout=60)


def make_tree(base, files: dict) -> None:
    """Files under `base` from {relative path: content (str or bytes), or
    None for a directory}."""
    for rel, content in files.items():
        path = os.path.join(base, rel)
        if content is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())


def tree_snapshot(root) -> dict:
    """path → (kind, mode, uid, gid, content-or-target) for a merged tree."""
    root = str(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                snap[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                snap[rel] = ("dir", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
            elif os.path.isfile(path):
                snap[rel] = ("file", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid,
                             Path(path).read_bytes())
            else:
                snap[rel] = ("other", oct(st.st_mode))
    return snap


def wait_until(cond, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


__all__ = ["TarEntry", "file", "directory", "symlink", "hardlink", "tar_bytes", "make_tar",
           "compress", "sha256", "chain_ids", "oci_layout", "docker_archive",
           "podman_archive", "StoreEnv",
           "store_env", "tree_snapshot", "wait_until", "mount_fstype", "unmount_under",
           "driver_skip_reason", "LAYERS_EXE", "NOBODY", "nobody_dir", "run_as_nobody"]


# -- the hostile corpus ---------------------------------------------------------------------

def _raw_header(name: str, size: int, type_: bytes = tarfile.REGTYPE,
                fmt=tarfile.GNU_FORMAT) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = type_
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


def _truncated() -> bytes:
    raw = tar_bytes([file("ok", b"y" * 5000)])
    return raw[:512 + 2048]


@dataclass
class Hostile:
    id: str
    data: bytes
    message: str          # the full error line after "layers: "
    needs_unprivileged: bool = False


def hostile_corpus(canary: str) -> list[Hostile]:
    """Crafted layer tars, each with the exact error it must produce.
    `canary` is an absolute directory outside the store that must stay empty."""
    R = "refusing archive entry"
    return [
        Hostile("dotdot", tar_bytes([file("../evil", "x")]),
                f"{R} '../evil': path contains '..'"),
        Hostile("nested-dotdot", tar_bytes([directory("a"), file("a/../../evil", "x")]),
                f"{R} 'a/../../evil': path contains '..'"),
        # a leading "/" is the layer's root (as docker and GNU tar take it): the
        # rules for what follows are the same
        Hostile("absolute-dotdot", tar_bytes([file("/../evil", "x")]),
                f"{R} '/../evil': path contains '..'"),
        Hostile("absolute-through-symlink",
                tar_bytes([symlink("/s", canary), file("/s/evil", "x")]),
                f"{R} '/s/evil': 's' is a symlink or not a directory"),
        Hostile("symlink-then-write", tar_bytes([symlink("s", canary), file("s/evil", "x")]),
                f"{R} 's/evil': 's' is a symlink or not a directory"),
        Hostile("symlink-dotdot-then-write",
                tar_bytes([symlink("s", "../../../../../../.."), file("s/tmp/evil", "x")]),
                f"{R} 's/tmp/evil': 's' is a symlink or not a directory"),
        Hostile("dir-replaced-by-symlink",
                tar_bytes([directory("d"), symlink("d", canary), file("d/evil", "x")]),
                f"{R} 'd/evil': 'd' is a symlink or not a directory"),
        Hostile("write-through-file", tar_bytes([file("f", "x"), file("f/evil", "x")]),
                f"{R} 'f/evil': 'f' is a symlink or not a directory"),
        Hostile("hardlink-dotdot", tar_bytes([hardlink("h", "../../etc/passwd")]),
                f"{R} 'h': hard link to '../../etc/passwd' leaves the layer"),
        Hostile("hardlink-absolute", tar_bytes([hardlink("h", "/etc/passwd")]),
                f"{R} 'h': hard link to missing '/etc/passwd'"),
        Hostile("hardlink-absolute-dotdot", tar_bytes([hardlink("h", "/../etc/passwd")]),
                f"{R} 'h': hard link to '/../etc/passwd' leaves the layer"),
        Hostile("hardlink-through-symlink",
                tar_bytes([symlink("s", "/etc"), hardlink("h", "s/passwd")]),
                f"{R} 'h': 's' is a symlink or not a directory"),
        Hostile("hardlink-missing", tar_bytes([hardlink("h", "nothing")]),
                f"{R} 'h': hard link to missing 'nothing'"),
        Hostile("absurd-size", _raw_header("big", 10**13) + b"\0" * 1024,
                f"{R} 'big': absurd size 10000000000000"),
        Hostile("huge-pax-header", _raw_header("././@PaxHeader", 200 << 20,
                                               tarfile.XHDTYPE, tarfile.USTAR_FORMAT)
                + b"\0" * 4096,
                f"{R} '././@PaxHeader': extended header of {200 << 20} bytes"),
        Hostile("whiteout-dotdot", tar_bytes([file(".wh..", "")]),
                f"{R} '.wh..': whiteout of an invalid name"),
        Hostile("long-name", tar_bytes([file("n" * 300, "x")]),
                f"{R} '{'n' * 300}': name component longer than 255 bytes"),
        Hostile("device-unprivileged",
                tar_bytes([TarEntry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)]),
                f"{R} 'dev/sda': device node not allowed when not root",
                needs_unprivileged=True),
        Hostile("truncated", _truncated(),
                "cannot read {where}: truncated archive (unexpected end of data)"),
        Hostile("bad-gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage" * 50,
                "cannot read {where}: corrupt gzip data ({detail})"),
        Hostile("bad-zstd", b"\x28\xb5\x2f\xfd" + b"garbage" * 50,
                "cannot read {where}: zstd: {detail}"),
    ]
