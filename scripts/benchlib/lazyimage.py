"""The lazy benchmark's images, as layer tars built once under
`.cache/bench/<size>/lazy/` (published whole as data.py publishes its
components; rebuilt when the spec or the base changed).

    first   base.tar + data.tar    the image the command starts from
    second  second.tar             an updated base: shares most files with base.tar

- base.tar: a real root filesystem. Full size: the podman section's Debian 12
  minbase (podman.debootstrap_image, 216 MB; referred to where it is kept in
  /var/cache/strata-bench, not copied); small: the podman tests' busybox tree.
- data.tar: an application's data directory, /srv/data, seeded files of
  mixed sizes (half random, half zeros, so they compress about 2:1), the
  biggest cut into several chunks by eStargz.
- second.tar: base.tar as a later build of it would be: the apt package cache
  gone (as `apt-get clean`), every 20th regular file changed (16 bytes
  appended), one new file. Pulled into a store that holds the first image,
  a partial pull by content fetches only what changed.

The command of the benchmark (`COMMAND`) reads a few files of each layer:
the shell, an interpreter and the libraries they load, one data file. Its
expected output is in the spec, so a lazy container that served a wrong byte
fails the run instead of looking fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tarfile
from pathlib import Path

from . import data as datamod

LAZY_VERSION = 1
MiB = 1 << 20

SIZES = {
    "full": {"data_bytes": 64 * MiB, "data_mean": 256 * 1024, "change_every": 20},
    "small": {"data_bytes": 2 * MiB, "data_mean": 16 * 1024, "change_every": 20},
}
DATA_FILE = "srv/data/d000/f00001"
# What runs in the container, by the kind of base: the first line is its first output.
COMMAND = {
    "debian": ["/bin/sh", "-c", f"perl -e 'print qq(hello from perl\\n)' && sha256sum /{DATA_FILE}"],
    "busybox": ["/bin/sh", "-c", f"echo hello from busybox && sha256sum /{DATA_FILE}"],
}
FIRST_LINE = {"debian": "hello from perl", "busybox": "hello from busybox"}
APT_CACHE = "var/cache/apt/archives/"


def ensure(cache: Path, size: str, base_tar: Path | None, say=print) -> Path:
    """The component's directory: base.tar (small) or the spec's `base` path
    (full: `base_tar`), data.tar, second.tar, spec.json."""
    final = cache / size / "lazy"
    p = SIZES[size]
    want = {"version": LAZY_VERSION, "component": "lazy", "size": size, **p}
    if base_tar is not None:
        st = base_tar.stat()
        want["base"] = {"path": str(base_tar), "bytes": st.st_size, "mtime": int(st.st_mtime)}
    have = datamod.load_spec(final)
    if have is not None and {k: have.get(k) for k in want} == want:
        return final
    say(f"bench-lazy: building the {size} images' layers (once, kept in {final})")

    def build(tmp: Path) -> dict:
        tmp.mkdir()
        if base_tar is None:
            _busybox_base(tmp / "base.tar")
            base, kind = tmp / "base.tar", "busybox"
        else:
            base, kind = base_tar, "debian"
        datamod.seeded_tree(tmp / "src" / "srv" / "data", p["data_bytes"], p["data_mean"], 17, half_zero=True)
        data_sha = hashlib.sha256((tmp / "src" / DATA_FILE).read_bytes()).hexdigest()
        datamod.tar_tree(tmp / "src", tmp / "data.tar")
        second = _derive(base, tmp / "second.tar", p["change_every"])
        return {**want, "kind": kind, "data_file_sha256": data_sha,
                "expected_output": f"{FIRST_LINE[kind]}\n{data_sha}  /{DATA_FILE}\n",
                "tar_bytes": {"base": base.stat().st_size, "data": (tmp / "data.tar").stat().st_size,
                              "second": (tmp / "second.tar").stat().st_size},
                "second": second}
    datamod.publish(final, build)
    return final


def base_of(component: Path) -> Path:
    spec = datamod.load_spec(component) or {}
    return Path(spec["base"]["path"]) if "base" in spec else component / "base.tar"


def _busybox_base(out: Path) -> None:
    from .podman import Sandbox, tiny_image
    box = Sandbox(None, prefix="strata-bench-lazy-image-")
    try:
        shutil.move(tiny_image(box), out)
    finally:
        box.cleanup()


def _derive(base: Path, out: Path, change_every: int) -> dict:
    """second.tar from base: see the module's docstring. Facts for the spec:
    regular files and their bytes, shared with base or not."""
    rng = random.Random(20)
    shared = changed = dropped = 0
    shared_bytes = new_bytes = 0
    regular = 0
    with tarfile.open(base) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            name = m.name.removeprefix("./")
            if m.isreg() and name.startswith(APT_CACHE) and name.endswith(".deb"):
                dropped += 1
                continue
            if not m.isreg():
                dst.addfile(m)
                continue
            regular += 1
            f = src.extractfile(m)
            if regular % change_every == 0:
                content = f.read() + rng.randbytes(16)
                m.size = len(content)
                dst.addfile(m, io.BytesIO(content))
                changed += 1
                new_bytes += m.size
            else:
                dst.addfile(m, f)
                shared += 1
                shared_bytes += m.size
        extra = rng.randbytes(MiB // 2) + bytes(MiB // 2)
        info = tarfile.TarInfo("./etc/bench-second-release")
        info.size, info.mode, info.mtime = len(extra), 0o644, 1_700_000_000
        dst.addfile(info, io.BytesIO(extra))
        new_bytes += len(extra)
    return {"files_shared": shared, "files_changed": changed, "files_new": 1, "files_dropped": dropped,
            "bytes_shared": shared_bytes, "bytes_new": new_bytes}
