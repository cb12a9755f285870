"""The bench's test data, built once and kept under `.cache/bench/<size>/`.

Each component is a directory published whole: built under a temporary name,
its `spec.json` written last, then renamed into place. A component whose
spec.json is missing or describes other parameters (or an older DATA_VERSION)
is rebuilt; two runs building at once both succeed, the second rename loses
and its copy is thrown away. `ensure(cache, size, name)` returns the
component's directory.

Components (the numbers are those of `full`; `small` is a toy of each):
  lower   tree/rootfs   a copy of the Python stdlib and /usr/share/doc
          tree/small    20,000 files in 200 dirs, seeded sizes, mean 4 KiB, as
                        5 groups g0..g4 of 40 dirs (g0 is w7's subtree)
          tree/big      a 256 MiB file
          spec.json     also lists w4's 2,000 files (from g1..g4)
  stack   layers/00..63 a 64-layer stack, 00 at the bottom; each layer adds
                        files, rewrites some and whites out files and
                        directories of the layers below (character device 0/0,
                        the format all three implementations read)
          paths.txt     every path of the merged view, shuffled (w9)
  untar   untar.tar     a 40 MB tarball of seeded files (w6)
  import  layer.tar     a 200 MB layer tar: files of mixed sizes, half random,
                        half zeros (w10)

`ensure_owned(cache, size, name, uid, gid)` is a copy of a component with
every file owned by an unprivileged user (`<name>.owned-<uid>`), built and
published the same way: the lowers of the rootless runs, as a rootless
podman's store holds files of the user's own.

`publish`, `seeded_tree` and `tar_tree` also build lazyimage.py's layers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sysconfig
from pathlib import Path

DATA_VERSION = 1
MiB = 1 << 20

SIZES = {
    "full": {
        "rootfs": ["stdlib", "/usr/share/doc"],
        "groups": 5, "dirs_per_group": 40, "files_per_dir": 100, "mean_size": 4096,
        "big_bytes": 256 * MiB, "append_files": 2000,
        "layers": 64, "layer_own_files": 20, "layer_shared_files": 60, "layer_rewrites": 5,
        "layer_whiteouts": 10, "untar_bytes": 40_000_000, "import_bytes": 200_000_000,
    },
    "small": {
        "rootfs": ["stdlib/json", "stdlib/email"],
        "groups": 5, "dirs_per_group": 2, "files_per_dir": 20, "mean_size": 4096,
        "big_bytes": 4 * MiB, "append_files": 20,
        "layers": 64, "layer_own_files": 2, "layer_shared_files": 2, "layer_rewrites": 1,
        "layer_whiteouts": 1, "untar_bytes": 1_000_000, "import_bytes": 4_000_000,
    },
}

COMPONENTS = ("lower", "stack", "untar", "import")


def _spec(size: str, name: str) -> dict:
    p = SIZES[size]
    keys = {
        "lower": ("rootfs", "groups", "dirs_per_group", "files_per_dir", "mean_size", "big_bytes",
                  "append_files"),
        "stack": ("layers", "layer_own_files", "layer_shared_files", "layer_rewrites", "layer_whiteouts"),
        "untar": ("untar_bytes",),
        "import": ("import_bytes",),
    }[name]
    return {"version": DATA_VERSION, "component": name, "size": size, **{k: p[k] for k in keys}}


def load_spec(path: Path) -> dict | None:
    try:
        return json.loads((path / "spec.json").read_text())
    except (OSError, ValueError):
        return None


def ensure(cache: Path, size: str, name: str, say=print) -> Path:
    """The directory of component `name`, built first if missing or stale."""
    final = cache / size / name
    want = _spec(size, name)
    have = load_spec(final)
    if have is not None and {k: have.get(k) for k in want} == want:
        return final
    say(f"bench: building {size} test data: {name} (once, kept in {final})")

    def build(tmp: Path) -> dict:
        tmp.mkdir()
        return {**want, **BUILDERS[name](tmp, SIZES[size])}
    publish(final, build)
    return final


def ensure_owned(cache: Path, size: str, name: str, uid: int, gid: int, say=print) -> Path:
    """The directory of a copy of component `name` owned by uid:gid, made
    (again) when missing or when the component changed."""
    src = ensure(cache, size, name, say)
    final = cache / size / f"{name}.owned-{uid}"
    want = {**(load_spec(src) or {}), "owner": [uid, gid]}
    if load_spec(final) == want:
        return final
    say(f"bench: copying {size} test data {name} for uid {uid} (once, kept in {final})")

    def build(tmp: Path) -> dict:
        subprocess.run(["cp", "-a", "--reflink=auto", "--", str(src), str(tmp)], check=True)
        subprocess.run(["chown", "-R", "--no-dereference", f"{uid}:{gid}", str(tmp)], check=True)
        return want
    publish(final, build)
    return final


def publish(final: Path, build) -> None:
    """Replace `final` with what build(tmp) makes at a temporary name next to
    it (build returns the spec, written last), synced, then renamed into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.build-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        spec = build(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
        os.sync()
        try:
            os.rename(tmp, final)
        except OSError:  # another run published it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_partial(cache: Path) -> None:
    """Remove half-built components of runs that no longer exist."""
    for size_dir in cache.glob("*"):
        for d in size_dir.glob(".*.build-*"):
            pid = d.name.rpartition("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(d, ignore_errors=True)


# -- builders: each fills a fresh directory, returns facts for spec.json ---------------

def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _count(top: Path) -> tuple[int, int]:
    entries = size = 0
    for root, dirs, files in os.walk(top):
        entries += len(dirs) + len(files)
        for n in files:
            st = os.lstat(os.path.join(root, n))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return entries, size


def _build_lower(out: Path, p: dict) -> dict:
    tree = out / "tree"
    stdlib = sysconfig.get_paths()["stdlib"]
    for src in p["rootfs"]:
        src = src.replace("stdlib", stdlib, 1)
        dst = tree / "rootfs" / src.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(src):
            subprocess.run(["cp", "-a", "--", src, str(dst)], check=True)
    rng = random.Random(4096)
    for g in range(p["groups"]):
        for d in range(p["dirs_per_group"]):
            for f in range(p["files_per_dir"]):
                size = min(max(1, int(rng.expovariate(1 / p["mean_size"]))), 16 * p["mean_size"])
                rel = f"small/g{g}/d{d:03d}/f{f:03d}"
                _write(tree / rel, rng.randbytes(size))
    files_after_g0 = [f"small/g{g}/d{d:03d}/f{f:03d}" for g in range(1, p["groups"])
                      for d in range(p["dirs_per_group"]) for f in range(p["files_per_dir"])]
    step = max(1, len(files_after_g0) // p["append_files"])
    appended = files_after_g0[::step][:p["append_files"]]
    with open(tree / "big", "wb") as f:
        for _ in range(p["big_bytes"] // MiB):
            f.write(os.urandom(MiB))
    entries, size = _count(tree)
    rootfs_entries, _ = _count(tree / "rootfs")
    g0_entries, _ = _count(tree / "small" / "g0")
    return {"entries": entries, "bytes": size, "rootfs_entries": rootfs_entries,
            "w7_entries": g0_entries + 1, "w4_files": appended}


def _mknod_whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _build_stack(out: Path, p: dict) -> dict:
    rng = random.Random(64)
    merged: dict[str, str] = {}  # path -> "f" | "d", the view from the top layer down

    def add_file(layer: Path, rel: str):
        _write(layer / rel, rng.randbytes(rng.randint(0, 2048)))
        parts = rel.split("/")
        for i in range(1, len(parts)):
            merged["/".join(parts[:i])] = "d"
        merged[rel] = "f"

    whiteouts = 0
    for i in range(p["layers"]):
        layer = out / "layers" / f"{i:02d}"
        layer.mkdir(parents=True)
        own = f"l{i:02d}"
        for k in range(p["layer_own_files"]):
            add_file(layer, f"{own}/sub{k % 4}/f{k:03d}")
        for k in range(p["layer_shared_files"]):
            add_file(layer, f"usr/share/d{rng.randrange(16):02d}/f{i:02d}_{k:03d}")
        below_files = sorted(r for r, kind in merged.items()
                             if kind == "f" and not r.startswith(own + "/"))
        if i == 0:
            continue
        for rel in rng.sample(below_files, min(p["layer_rewrites"], len(below_files))):
            add_file(layer, rel)
        below_files = [r for r in below_files if not (layer / r).exists()]
        for rel in rng.sample(below_files, min(p["layer_whiteouts"], len(below_files))):
            _mknod_whiteout(layer / rel)
            del merged[rel]
            whiteouts += 1
        if i % 8 == 0:  # a whole directory of a layer below goes
            victim = f"l{rng.randrange(i):02d}"
            if merged.get(victim) == "d" and not (layer / victim).exists():
                _mknod_whiteout(layer / victim)
                for r in [r for r in merged if r == victim or r.startswith(victim + "/")]:
                    del merged[r]
                whiteouts += 1
    paths = sorted(merged)
    random.Random(9).shuffle(paths)
    (out / "paths.txt").write_text("".join(r + "\n" for r in paths))
    return {"paths": len(paths), "whiteouts": whiteouts}


def seeded_tree(top: Path, total: int, mean: int, seed: int, half_zero: bool) -> None:
    rng = random.Random(seed)
    written = i = 0
    while written < total:
        size = min(max(1, int(rng.expovariate(1 / mean))), 64 * mean)
        data = rng.randbytes(size // 2) + bytes(size - size // 2) if half_zero else rng.randbytes(size)
        _write(top / f"d{i // 50:03d}" / f"f{i:05d}", data)
        written += size
        i += 1


def tar_tree(src: Path, tarfile: Path) -> None:
    subprocess.run(["tar", "-C", str(src), "--sort=name", "--owner=0", "--group=0",
                    "--numeric-owner", "-cf", str(tarfile), "."], check=True)
    shutil.rmtree(src)


def _build_untar(out: Path, p: dict) -> dict:
    seeded_tree(out / "src", p["untar_bytes"], 20_000, 40, half_zero=False)
    tar_tree(out / "src", out / "untar.tar")
    return {"tar_bytes": (out / "untar.tar").stat().st_size}


def _build_import(out: Path, p: dict) -> dict:
    seeded_tree(out / "src", p["import_bytes"], 100_000, 200, half_zero=True)
    tar_tree(out / "src", out / "layer.tar")
    return {"tar_bytes": (out / "layer.tar").stat().st_size}


BUILDERS = {"lower": _build_lower, "stack": _build_stack, "untar": _build_untar, "import": _build_import}
