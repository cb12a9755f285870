"""Lazy pulling: `layers pull --lazy` of seekable (eStargz) images from a real
registry on loopback (Debian's docker-registry, through the test's own proxy,
tests/support/registryd.py), and the store's fetcher that completes them.

The images are built by the store (`import`) and pushed with
`push --compression-format estargz`.  The fetcher is spoken to through its
socket as fsd speaks to it (LAZY-CONTRACT.md); contents are compared with a
full pull of the same image.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import stat
import threading
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storetools import (NOBODY, directory, driver_skip_reason, file,  # noqa: E402,F401
                        hardlink, nobody_dir, oci_layout, run_as_nobody, symlink,
                        tar_bytes, tree_snapshot, wait_until)
from support.registryd import Proxy, Registry  # noqa: E402
from test_layers_registry import INSECURE, Machine, proxy, registry  # noqa: E402,F401

from layers import elfdeps, estargz, fetcher, layout  # noqa: E402
from layers.digest import Digest  # noqa: E402
from layers.store import Store  # noqa: E402

MiB = 1 << 20
BIG = os.urandom(9 * MiB + 123)                 # three chunks
SPARSE = b"\0" * (5 * MiB) + b"middle" + b"\0" * (3 * MiB)
BASE_ONE = os.urandom(70_000)
BASE = tar_bytes([
    file("big", BIG), directory("etc"), file("etc/os-release", "ID=lazy\n"),
    file("empty"), file("one", BASE_ONE, mode=0o4755),
    file("sparse", SPARSE), hardlink("one-again", "one"), symlink("link", "one"),
    directory("opaque"), file("opaque/kept", "kept\n"), file("gone", "gone\n"),
])
TOP = tar_bytes([
    file(".wh.gone"), directory("opaque"), file("opaque/.wh..wh..opq"),
    file("opaque/new", os.urandom(3000)), file("top", os.urandom(200_000)),
])
FILES = ["big", "one", "one-again", "sparse", "etc/os-release", "opaque/kept"]
LAZY_FILES = ["big", "etc/os-release", "one", "sparse", "opaque/kept", "gone"]  # BASE's, with content


class LazyMachine(Machine):
    """A fuse-driver store (lazy layers need it) that stops its fetcher when
    the test ends."""

    def __init__(self, tmp: Path, name: str):
        super().__init__(tmp, name)
        self.driver = "fuse"

    def store(self) -> Store:
        return self.open()

    def fetcher_pid(self) -> int | None:
        store = self.store()
        if not _flock_held(store.paths.fetcher_pid):
            return None
        return int(Path(store.paths.fetcher_pid).read_text())

    def stop_fetcher(self) -> None:
        pid = self.fetcher_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: self.fetcher_pid() is None, 30)

    def record(self, layer: str) -> dict:
        return json.loads((self.root / "layers" / f"{layer}.json").read_text())

    def diff(self, layer: str) -> Path:
        return self.root / "layers" / layer / "diff"


def _flock_held(path: str) -> bool:
    from layers.fsutil import flock_held
    return flock_held(path)


@pytest.fixture
def lazy_machines(tmp_path):
    made = [LazyMachine(tmp_path, "lazy"), Machine(tmp_path, "full")]
    yield made
    made[0].stop_fetcher()
    for m in made:
        m.cleanup()
        m.assert_consistent()


def push_estargz(tmp: Path, registry_host: str, layers: list[bytes],
                 name: str) -> tuple[str, list[str], int, Machine]:
    """Import `layers` into a store of its own and push them seekable: the
    reference pushed to, the blobs' digests, their total size, and that
    store (whose layers, extracted from the plain tars, are the oracle)."""
    src = Machine(tmp, f"src-{name}")
    built = oci_layout(tmp / f"layout-{name}", layers, compression="gzip")
    src.ok("import", "-q", str(built.path), "--name", f"{name}:1")
    ref = f"{registry_host}/lazy/{name}:1"
    rep = src.report("push", "-q", f"{name}:1", ref, INSECURE,
                     "--compression-format", "estargz")
    return ref, [b["digest"] for b in rep["layers"]], sum(b["size"] for b in rep["layers"]), src


def hold_background(proxy: Proxy, blob: str) -> None:
    """Hold the fetcher's first request for `blob` (after the footer and TOC
    a lazy pull reads: the background's, for the first file, `big`), so that
    the layer stays lazy until `proxy.release`."""
    proxy.stall, proxy.stall_skip, proxy.stall_once = blob.split(":")[1], 2, True


def ask(socket_path: str, layer: Path, path: str) -> dict:
    """One request to the fetcher, as fsd sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(socket_path)
        s.sendall(json.dumps({"layer": str(layer), "path": path}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(4096)
            if not more:
                break
            data += more
    return json.loads(data)


def lazy_mark(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, layout.LAZY_XATTR, follow_symlinks=False)
    except OSError:
        return None


def test_lazy_pull_records_the_image_fetching_only_tables_of_contents(
        lazy_machines, proxy, tmp_path):
    lazy, full = lazy_machines
    ref, blobs, size, src = push_estargz(tmp_path, proxy.host, [BASE, TOP], "kinds")
    proxy.reset()
    hold_background(proxy, blobs[0])
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    assert [t["outcome"] for t in rep["layers"]] == ["lazy", "lazy"]
    assert rep["received"] < size // 20
    bottom, top = (t["layer"].split(":")[1] for t in rep["layers"])
    rec = lazy.record(bottom)["lazy"]
    assert rec["fetched"] < rec["total"] and rec["toc_digest"].startswith("sha256:")
    # the placeholder tree: every entry there, contents not yet
    store = lazy.store()
    diff = lazy.diff(bottom)
    assert lazy_mark(diff) == os.fsencode(store.paths.fetcher_socket)
    assert os.stat(diff / "big").st_size == len(BIG)
    assert os.stat(diff / "big").st_blocks == 0
    assert lazy_mark(diff / "big") == b"" and lazy_mark(diff / "one-again") == b""
    assert lazy_mark(diff / "empty") is None and os.stat(diff / "empty").st_size == 0
    assert os.readlink(diff / "link") == "one"
    assert os.stat(diff / "one").st_ino == os.stat(diff / "one-again").st_ino
    assert (lazy.diff(top) / ".wh.gone").exists()
    assert (lazy.diff(top) / "opaque" / ".wh..wh..opq").exists()
    ref_diff = src.root / "layers" / bottom / "diff"
    for name in ["etc", "big", "one", "link", "opaque", "sparse"]:
        a, b = os.lstat(diff / name), os.lstat(ref_diff / name)
        assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == \
            (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns), name
    img = json.loads(lazy.ok("inspect", ref))
    assert img["layers"] == [t["layer"] for t in rep["layers"]]
    proxy.release.set()


def test_the_fetcher_completes_files_on_request_then_the_layer_in_the_background(
        lazy_machines, proxy, tmp_path):
    lazy, full = lazy_machines
    ref, blobs, _, src = push_estargz(tmp_path, proxy.host, [BASE, TOP], "fetch")
    hold_background(proxy, blobs[0])
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    bottom, top = (t["layer"].split(":")[1] for t in rep["layers"])
    want = src.root / "layers" / bottom / "diff"
    diff = lazy.diff(bottom)
    sock = lazy.store().paths.fetcher_socket
    assert wait_until(proxy.stalled.is_set, 30)      # the background waits on the proxy
    for name in ["one-again", "sparse", "etc/os-release", "opaque/kept", "empty", "link"]:
        assert ask(sock, diff, name) == {"ok": True}, name
    for name in ["one", "one-again", "sparse", "etc/os-release"]:
        assert lazy_mark(diff / name) is None
        assert (diff / name).read_bytes() == (want / name).read_bytes(), name
        a, b = os.lstat(diff / name), os.lstat(want / name)
        assert (a.st_mode, a.st_mtime_ns, a.st_nlink) == (b.st_mode, b.st_mtime_ns, b.st_nlink)
    assert os.stat(diff / "sparse").st_blocks * 512 < len(SPARSE) // 2   # holes kept
    assert lazy_mark(diff / "big") == b""              # the held background's file
    assert lazy.record(bottom)["lazy"] is not None
    answer = ask(sock, diff, "nowhere")
    assert answer["ok"] is False and "nowhere" in answer["error"]
    answer = ask(sock, tmp_path, "big")
    assert answer == {"ok": False, "error": f"{tmp_path}: not a layer of the store at "
                                            f"{lazy.root}"}
    proxy.release.set()
    assert wait_until(lambda: lazy.record(bottom)["lazy"] is None
                      and lazy.record(top)["lazy"] is None, 120)
    assert lazy_mark(diff) is None and lazy_mark(diff / "big") is None
    assert (diff / "big").read_bytes() == BIG
    assert (lazy.root / "layers" / bottom / "tar-split.gz").exists()
    assert lazy.ok("check", "--verify") == ""
    for layer in (bottom, top):
        out = tmp_path / f"{layer}.tar"
        lazy.ok("export", layer, "-o", str(out))
        assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == \
            lazy.record(layer)["diff_id"]
    assert wait_until(lambda: lazy.fetcher_pid() is None, 30)  # nothing left: it left


def test_a_driver_that_reads_layer_dirs_directly_refuses_a_lazy_pull(tmp_path, proxy):
    m = Machine(tmp_path, "vfs")
    r = m.run("pull", "-q", "--lazy", f"{proxy.host}/lazy/none:1", INSECURE)
    assert (r.code, r.err) == (2, "layers: pull --lazy needs the fuse driver (fsd fetches "
                                  "a lazy file when it is opened); the vfs driver reads "
                                  "layer dirs directly: pull without --lazy\n")
    assert proxy.requests == []


def _chunk_of(registry: Registry, blob: str, toc_digest: str, name: str):
    """The first chunk of file `name` in the registry's copy of `blob`."""
    data = registry.blob_path(blob).read_bytes()
    offset = estargz.parse_footer(data[-estargz.FOOTER_SIZE:])
    toc = estargz.parse_toc_region(data[offset:-estargz.FOOTER_SIZE],
                                   Digest.parse(toc_digest))
    return toc.chunks(toc.entries[name])[0]


def test_a_tampered_chunk_is_refused_and_nothing_of_it_kept(lazy_machines, proxy, registry,
                                                            tmp_path):
    lazy, _ = lazy_machines
    victim = os.urandom(300_000)
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host,
                                    [tar_bytes([file("big", BIG), file("victim", victim)])],
                                    "tamper")
    hold_background(proxy, blobs[0])
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    layer = rep["layers"][0]["layer"].split(":")[1]
    assert wait_until(proxy.stalled.is_set, 30)      # the background waits on the proxy
    chunk = _chunk_of(registry, blobs[0], lazy.record(layer)["lazy"]["toc_digest"], "victim")
    stored = registry.blob_path(blobs[0])
    good = stored.read_bytes()
    at = (chunk.blob_start + chunk.blob_end) // 2
    stored.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
    try:
        diff = lazy.diff(layer)
        answer = ask(lazy.store().paths.fetcher_socket, diff, "victim")
        assert answer["ok"] is False
        assert answer["error"].startswith(f"layer {layer[:12]}: victim: bytes "
                                          f"{chunk.blob_start}-{chunk.blob_end} of the blob: ")
        assert lazy_mark(diff / "victim") == b"" and os.stat(diff / "victim").st_blocks == 0
        log = (Path(lazy.store().paths.fetcher_log)).read_text().splitlines()
        assert [line for line in log if "victim" in line][0].endswith(answer["error"])
    finally:
        stored.write_bytes(good)
    assert ask(lazy.store().paths.fetcher_socket, diff, "victim") == {"ok": True}
    assert (diff / "victim").read_bytes() == victim
    proxy.release.set()


def test_a_fetcher_killed_mid_file_leaves_it_marked_and_a_new_one_completes_it(
        lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [BASE], "killed")
    proxy.stall, proxy.stall_skip, proxy.stall_once = blobs[0].split(":")[1], 3, True
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    layer = rep["layers"][0]["layer"].split(":")[1]
    diff = lazy.diff(layer)
    assert wait_until(proxy.stalled.is_set, 30)   # big's first chunk written, its second held
    assert os.stat(diff / "big").st_blocks > 0 and lazy_mark(diff / "big") == b""
    os.kill(lazy.fetcher_pid(), signal.SIGKILL)
    assert wait_until(lambda: lazy.fetcher_pid() is None, 30)
    assert lazy_mark(diff / "big") == b"" and lazy.record(layer)["lazy"] is not None
    proxy.stall = None
    proxy.release.set()
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)    # starts a fetcher again
    assert [t["outcome"] for t in rep["layers"]] == ["present"]
    assert wait_until(lambda: lazy.record(layer)["lazy"] is None, 120)
    assert (diff / "big").read_bytes() == BIG
    assert lazy.ok("check", "--verify") == ""


def lazy_container(lazy: LazyMachine, proxy: Proxy, tmp_path: Path, name: str) -> tuple[Machine, str]:
    """Container `c` of `lazy` on BASE and TOP pulled lazily from image `name`,
    the background held on its first file: the store pushed from, and the
    bottom layer's id.  Skips without the fuse driver."""
    reason = driver_skip_reason("fuse")
    if reason:
        pytest.skip(reason)
    ref, blobs, _, src = push_estargz(tmp_path, proxy.host, [BASE, TOP], name)
    hold_background(proxy, blobs[0])
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    lazy.ok("create", ref, "--name", "c")
    return src, rep["layers"][0]["layer"].split(":")[1]


def test_a_container_on_a_lazy_image_mounts_at_once_and_reads_what_a_full_pull_has(
        lazy_machines, proxy, tmp_path):
    lazy, full = lazy_machines
    src, bottom = lazy_container(lazy, proxy, tmp_path, "mounted")
    src.ok("create", "mounted:1", "--name", "c")
    merged = Path(lazy.ok("mount", "c").strip())
    want = Path(src.ok("mount", "c").strip())
    assert wait_until(proxy.stalled.is_set, 30)      # the background waits on the proxy
    try:
        for name in ["one", "one-again", "sparse", "etc/os-release", "opaque/new", "top",
                     "empty"]:
            assert (merged / name).read_bytes() == (want / name).read_bytes(), name
        assert lazy_mark(lazy.diff(bottom) / "big") == b""   # held: not read yet
        assert sorted(os.listdir(merged)) == sorted(os.listdir(want))
        assert sorted(os.listdir(merged / "opaque")) == ["new"]
        assert not (merged / "gone").exists()
        proxy.release.set()
        assert (merged / "big").read_bytes() == BIG
        assert tree_snapshot(merged) == tree_snapshot(want)
    finally:
        proxy.release.set()
        lazy.ok("umount", "c")
        src.ok("umount", "c")


def test_a_lazy_file_a_container_cannot_get_is_eio_with_its_reason_in_the_containers_log(
        lazy_machines, proxy, tmp_path):
    """fsd, mounted by the store, logs beside the container's upper: this
    machine has no /dev/log, so syslog (fsd's default) would lose the line."""
    lazy, _ = lazy_machines
    _, bottom = lazy_container(lazy, proxy, tmp_path, "logged")
    merged = Path(lazy.ok("mount", "c").strip())
    try:
        lazy.stop_fetcher()
        with pytest.raises(OSError) as failed:
            (merged / "big").read_bytes()
        assert failed.value.errno == errno.EIO
        (log,) = lazy.root.glob("containers/*/fsd.log")
        assert wait_until(lambda: "big" in log.read_text(), 10), log.read_text()
        assert bottom[:12] in log.read_text()
    finally:
        proxy.release.set()
        lazy.ok("umount", "c")


def test_a_plain_pull_fetches_only_the_files_the_store_lacks(lazy_machines, proxy, tmp_path):
    lazy, full = lazy_machines
    ref1, _, _, src1 = push_estargz(tmp_path, proxy.host, [BASE, TOP], "partial1")
    changed = os.urandom(1 * MiB)
    v2 = tar_bytes([file("big", BIG), file("one", BASE_ONE, mode=0o4755),
                    file("changed", changed), file("sparse", SPARSE)])
    ref2, blobs2, size2, src2 = push_estargz(tmp_path, proxy.host, [v2], "partial2")
    rep1 = full.report("pull", "-q", ref1, INSECURE)
    assert [t["saved"] for t in rep1["layers"]] == [0, 0]
    bottom = rep1["layers"][0]["layer"].split(":")[1]
    assert tree_snapshot(full.root / "layers" / bottom / "diff") == \
        tree_snapshot(src1.root / "layers" / bottom / "diff")
    rep2 = full.report("pull", "-q", ref2, INSECURE)
    (t,) = rep2["layers"]
    assert t["outcome"] == "fetched"
    assert len(BIG) < t["saved"] and t["received"] < size2 - len(BIG)
    assert t["received"] + t["saved"] <= size2
    layer = t["layer"].split(":")[1]
    assert tree_snapshot(full.root / "layers" / layer / "diff") == \
        tree_snapshot(src2.root / "layers" / layer / "diff")
    assert full.ok("check", "--verify") == ""
    out = tmp_path / "v2.tar"
    full.ok("export", layer, "-o", str(out))
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == \
        json.loads((full.root / "layers" / f"{layer}.json").read_text())["diff_id"]
    # a lazy pull takes them from the store too: only `changed` is left to fetch
    lazy.ok("pull", "-q", "--lazy", ref1, INSECURE)
    assert wait_until(lambda: all(lazy.record(t["layer"].split(":")[1])["lazy"] is None
                                  for t in rep1["layers"]), 60)
    (t,) = lazy.report("pull", "-q", "--lazy", ref2, INSECURE)["layers"]
    assert t["outcome"] == "lazy" and t["saved"] == rep2["layers"][0]["saved"]
    assert wait_until(lambda: lazy.record(layer)["lazy"] is None, 60)
    assert tree_snapshot(lazy.diff(layer)) == tree_snapshot(src2.root / "layers" / layer / "diff")


def spec_estargz(files: dict[str, bytes]) -> tuple[bytes, bytes, bytes]:
    """A layer blob in the eStargz spec's own form, as stargz tooling writes it:
    each tar entry in a gzip member of its own, the TOC JSON the tar's last
    entry (`stargz.index.json`), then the 51-byte footer pointing at that
    entry's member.  → (blob, its uncompressed tar, the TOC JSON)."""
    import gzip
    import io
    import tarfile
    out = io.BytesIO()
    tar = tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT)
    starts = []                         # where each entry starts in the tar

    def add(name: str, data: bytes) -> None:
        starts.append(tar.offset)
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    for name, data in files.items():
        add(name, data)
    raw = out.getvalue()
    members = [gzip.compress(raw[a:b], mtime=0) for a, b in zip(starts, starts[1:] + [len(raw)])]
    offsets = [sum(len(m) for m in members[:i]) for i in range(len(members))]
    toc = json.dumps({"version": 1, "entries": [
        {"name": name, "type": "reg", "size": len(data), "mode": 0o644, "offset": offset,
         "digest": str(Digest.of_bytes(data))}
        for (name, data), offset in zip(files.items(), offsets)]}).encode()
    toc_offset = sum(len(m) for m in members)
    add("stargz.index.json", toc)
    tar.close()
    raw = out.getvalue()
    members.append(gzip.compress(raw[starts[-1]:], mtime=0))
    return b"".join(members) + estargz.footer(toc_offset), raw, toc


def _upload(host: str, repository: str, data: bytes, media: str = "") -> dict:
    """`data` as a blob of `repository` (POST, then PUT with its digest): its descriptor."""
    digest = str(Digest.of_bytes(data))
    r = httpx.post(f"http://{host}/v2/{repository}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    r = httpx.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data,
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return {"mediaType": media, "digest": digest, "size": len(data)}


def test_a_layer_in_the_estargz_specs_own_form_is_pulled_whole(lazy_machines, proxy, tmp_path):
    """An image converted by stargz tooling: its layer annotated with the TOC
    digest, but the TOC a tar entry (no tar-split to rebuild the tar from).
    A plain pull and a lazy one both take the blob whole, as a gzip layer."""
    lazy, full = lazy_machines
    files = {"hello": b"hello from estargz\n", "data": os.urandom(300_000)}
    blob, tar, toc = spec_estargz(files)
    diff_id = str(Digest.of_bytes(tar))
    repository = "lazy/spec-form"
    layer = _upload(proxy.host, repository, blob, "application/vnd.oci.image.layer.v1.tar+gzip")
    layer["annotations"] = {estargz.TOC_DIGEST_ANNOTATION: str(Digest.of_bytes(toc))}
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": _upload(proxy.host, repository, config,
                                  "application/vnd.oci.image.config.v1+json"),
                "layers": [layer]}
    r = httpx.put(f"http://{proxy.host}/v2/{repository}/manifests/1", content=json.dumps(manifest),
                  headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 201, r.text
    ref = f"{proxy.host}/{repository}:1"
    for m, how in ((full, ()), (lazy, ("--lazy",))):
        (t,) = m.report("pull", "-q", *how, ref, INSECURE)["layers"]
        assert t["outcome"] == "fetched" and t["layer"] == diff_id
        chain = diff_id.split(":")[1]
        if m is lazy:
            assert m.record(chain)["lazy"] is None
        assert (m.root / "layers" / chain / "diff" / "hello").read_bytes() == files["hello"]
        assert (m.root / "layers" / chain / "diff" / "stargz.index.json").read_bytes() == toc
        assert m.ok("check", "--verify") == ""


def test_inspect_df_check_and_rmi_of_a_lazy_image(lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [BASE, TOP], "status")
    hold_background(proxy, blobs[0])
    rep = lazy.report("pull", "-q", "--lazy", ref, INSECURE)
    bottom = rep["layers"][0]["layer"].split(":")[1]
    assert wait_until(proxy.stalled.is_set, 30)      # the background waits on the proxy
    diff = lazy.diff(bottom)
    assert ask(lazy.store().paths.fetcher_socket, diff, "one") == {"ok": True}
    # with `one`, the small files stored next to it (read-around); not the held `big`
    complete = [p for p in LAZY_FILES if lazy_mark(diff / p) is None]
    assert "one" in complete and "big" not in complete
    doc = json.loads(lazy.ok("inspect", bottom))["lazy"]
    assert doc["blob"] == blobs[0] and doc["repository"] == "lazy/status"
    assert doc["fetched"] < doc["total"] and doc["error"] is None
    assert (doc["files"], doc["files_complete"]) == (len(LAZY_FILES), len(complete))
    assert doc["content_complete"] == sum(os.stat(diff / p).st_size for p in complete)
    img = json.loads(lazy.ok("inspect", ref))
    assert bottom in [z["layer"].split(":")[1] for z in img["lazy_layers"]]
    df = lazy.ok("df")
    assert "lazy layers: " in df and " fetched" in df
    r = lazy.run("check", "--verify")
    assert r.code == 0
    assert f"note: layer {bottom[:12]} is lazy: {len(complete)} of 6 files fetched and " \
           "verified against its table of contents" in r.out
    good = (diff / "one").read_bytes()
    with open(diff / "one", "r+b") as f:
        f.write(b"X")
    r = lazy.run("check", "--verify")
    assert r.code == 1 and f"layer {bottom[:12]} is corrupt: one: content hashes to " in r.out
    with open(diff / "one", "r+b") as f:
        f.write(good[:1])
    lazy.ok("rmi", ref)
    assert lazy.layers() == []
    proxy.release.set()
    assert wait_until(lambda: lazy.fetcher_pid() is None, 60)


def test_a_registry_gone_fails_requests_clearly_and_the_next_pull_retries(
        lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    ref, blobs, _, src = push_estargz(tmp_path, proxy.host, [BASE], "gone")
    hold_background(proxy, blobs[0])
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    layer = layer.split(":")[1]
    diff = lazy.diff(layer)
    assert wait_until(proxy.stalled.is_set, 30)
    proxy.fail_with = 503                         # gone: every request fails from now on
    proxy.drop.set()                              # and the held fetch is cut
    answer = ask(lazy.store().paths.fetcher_socket, diff, "one")
    assert answer["ok"] is False
    assert answer["error"].startswith(f"layer {layer[:12]}: one: bytes ")
    assert lazy_mark(diff / "one") == b""
    assert wait_until(lambda: lazy.record(layer)["lazy"]["error"] is not None, 60)
    assert lazy_mark(diff / "big") == b""
    proxy.fail_with = None                        # it is back
    lazy.ok("pull", "-q", "--lazy", ref, INSECURE)  # and the fetcher is told to retry
    assert wait_until(lambda: lazy.record(layer)["lazy"] is None, 120)
    assert tree_snapshot(diff) == tree_snapshot(src.root / "layers" / layer / "diff")


def test_requests_for_a_file_being_fetched_share_its_fetch(lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    ref, blobs, size, src = push_estargz(tmp_path, proxy.host, [BASE], "shared")
    hold_background(proxy, blobs[0])                  # the background's fetch of `big`
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    diff = lazy.diff(layer.split(":")[1])
    assert wait_until(proxy.stalled.is_set, 30)
    sock = lazy.store().paths.fetcher_socket
    answers = []
    askers = [threading.Thread(target=lambda: answers.append(ask(sock, diff, "big")))
              for _ in range(3)]
    for t in askers:
        t.start()
    pid = lazy.fetcher_pid()
    assert wait_until(lambda: _connections(pid) >= 3, 30)    # all three are waiting
    proxy.release.set()
    for t in askers:
        t.join(120)
    assert answers == [{"ok": True}] * 3
    assert (diff / "big").read_bytes() == BIG
    assert wait_until(lambda: lazy.record(layer.split(":")[1])["lazy"] is None, 60)
    # every chunk came once: the blob's bytes, less what no request needs (the TOC's
    # carriers, fetched once by the pull), were sent once
    assert proxy.sent_bytes("GET", blobs[0]) <= size


def _blob_gets(proxy: Proxy, blob: str) -> list[int]:
    """Body bytes of each GET of `blob` the proxy answered, in order."""
    with proxy.lock:
        return [s.sent for s in proxy.requests if s.method == "GET" and s.path.endswith(blob)]


def test_a_request_brings_the_small_files_stored_next_to_its_file_in_the_same_range(
        lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    small = {f"locale/{c}": os.urandom(1000 + 300 * i) for i, c in enumerate("abcdefgh")}
    tail = os.urandom(fetcher.READ_AROUND + 1000)          # too big to come along
    ref, blobs, _, src = push_estargz(
        tmp_path, proxy.host,
        [tar_bytes([file("big", BIG), directory("locale"),
                    *(file(n, data) for n, data in small.items()), file("tail", tail)])],
        "around")
    hold_background(proxy, blobs[0])                  # the background's fetch of `big`
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    diff = lazy.diff(layer.split(":")[1])
    assert wait_until(proxy.stalled.is_set, 30)
    before = len(_blob_gets(proxy, blobs[0]))
    assert ask(lazy.store().paths.fetcher_socket, diff, "locale/c") == {"ok": True}
    gets = _blob_gets(proxy, blobs[0])[before:]
    assert len(gets) == 1 and gets[0] < sum(map(len, small.values())) + 8 * 1024
    for name, data in small.items():                  # each whole, verified, complete
        assert lazy_mark(diff / name) is None and (diff / name).read_bytes() == data, name
    assert lazy_mark(diff / "tail") == b"" and lazy_mark(diff / "big") == b""
    proxy.release.set()
    assert wait_until(lambda: lazy.record(layer.split(":")[1])["lazy"] is None, 60)
    assert lazy.ok("check", "--verify") == ""


def _host_shell() -> tuple[bytes, str, str, dict[str, bytes]]:
    """This host's /bin/sh (a real ELF program), its loader's path, the
    library dir a layer holds its libraries in (usr/lib/<triplet>) and, by
    path there, made-up contents for the libraries it names."""
    sh = Path(os.path.realpath("/bin/sh")).read_bytes()
    with open("/bin/sh", "rb") as f:
        interp, needed, machine = elfdeps.needs(f.fileno())
    if not interp or not interp.startswith("/lib64/"):
        pytest.skip(f"this test's tree is x86_64 Debian's (/bin/sh's loader: {interp})")
    libdir = elfdeps.library_dirs(machine)[1]
    return sh, interp, libdir, {f"{libdir}/{n}": os.urandom(3000) for n in needed}


def test_a_program_asked_for_brings_its_interpreter_and_libraries_unasked(
        lazy_machines, proxy, tmp_path):
    sh, interp, libdir, libs = _host_shell()
    filler = os.urandom(fetcher.READ_AROUND + 1000)            # no read-around reaches them
    entries = [file("big", BIG), directory("usr"), directory("usr/bin"),
               file("usr/bin/prog", sh), file("usr/filler", filler), directory("usr/lib"),
               directory(libdir), *(file(n, data) for n, data in libs.items()),
               file(f"{libdir}/real-loader", b"loader"), file(f"{libdir}/unneeded", "x"),
               symlink("lib", "usr/lib"), directory(os.path.dirname(interp).lstrip("/")),
               symlink(interp.lstrip("/"), f"/{libdir}/real-loader")]   # absolute: in the tree
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [tar_bytes(entries)], "elf")
    hold_background(proxy, blobs[0])
    layer = lazy_machines[0].report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    lazy = lazy_machines[0]
    diff = lazy.diff(layer.split(":")[1])
    assert wait_until(proxy.stalled.is_set, 30)
    assert ask(lazy.store().paths.fetcher_socket, diff, "usr/bin/prog") == {"ok": True}
    wanted = [*libs, f"{libdir}/real-loader"]
    assert wait_until(lambda: all(lazy_mark(diff / p) is None for p in wanted), 30)
    for p in wanted:
        assert (diff / p).read_bytes() == (libs.get(p) or b"loader"), p
    assert lazy_mark(diff / f"{libdir}/unneeded") == b"" and lazy_mark(diff / "big") == b""
    proxy.release.set()


def test_the_background_starts_with_the_shell_and_what_it_loads(lazy_machines, proxy, tmp_path):
    """Before the tar order (`big` first), the fetcher fetches unasked what a
    container's start opens first: the shell and its loader and libraries,
    here reached through symlinks as in a merged-/usr tree."""
    sh, interp, libdir, libs = _host_shell()
    entries = [file("big", BIG), directory("usr"), directory("usr/bin"),
               file("usr/bin/dash", sh), symlink("usr/bin/sh", "dash"), symlink("bin", "usr/bin"),
               file("usr/bin/other", os.urandom(5000)), directory("usr/lib"), directory(libdir),
               *(file(n, data) for n, data in libs.items()),    # stored one after the other:
               file(f"{libdir}/real-loader", b"loader"),          # one range for all
               file(f"{libdir}/unneeded", "x"), directory(os.path.dirname(interp).lstrip("/")),
               symlink(interp.lstrip("/"), f"/{libdir}/real-loader")]
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [tar_bytes(entries)], "start")
    hold_background(proxy, blobs[0])
    proxy.stall_skip += 2             # the shell's range, then its loader's and libraries'
    lazy = lazy_machines[0]
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    diff = lazy.diff(layer.split(":")[1])
    assert wait_until(proxy.stalled.is_set, 30)        # the tar order's first range: `big`'s
    for p in ["usr/bin/dash", *libs, f"{libdir}/real-loader"]:
        assert lazy_mark(diff / p) is None, p
    assert (diff / "usr/bin/dash").read_bytes() == sh
    for p in ["big", "usr/bin/other", f"{libdir}/unneeded"]:
        assert lazy_mark(diff / p) == b"", p
    proxy.release.set()
    assert wait_until(lambda: lazy.record(layer.split(":")[1])["lazy"] is None, 60)


def test_the_background_starts_with_small_ranges_that_grow_while_no_request_comes(
        lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    files = [file(f"f{i:02}", os.urandom(64 << 10)) for i in range(60)]
    ref, blobs, size, _ = push_estargz(tmp_path, proxy.host, [tar_bytes(files)], "steps")
    proxy.reset()
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    assert wait_until(lambda: lazy.record(layer.split(":")[1])["lazy"] is None, 120)
    steps = _blob_gets(proxy, blobs[0])[2:]           # after the pull's footer and TOC
    assert steps[0] <= fetcher.MIN_BATCH + (66 << 10)   # a step ends with the file that fills it
    assert max(steps) >= 4 * steps[0] and len(steps) < len(files) // 4


def _connections(pid: int) -> int:
    """Connected unix sockets the process `pid` holds: the fetcher's side of
    each request it accepted."""
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    with open("/proc/net/unix") as f:
        lines = [line.split() for line in f.read().splitlines()[1:]]
    return sum(1 for fields in lines if fields[6] in mine and fields[5] == "03")


def test_the_fetcher_is_the_stores_own_whatever_directory_the_pull_ran_in(
        lazy_machines, proxy, tmp_path, monkeypatch):
    """`python -m` puts the working directory first on sys.path: a pull run
    where a directory `layers` is (a project of the user's) started that as
    the fetcher."""
    lazy, _ = lazy_machines
    ref, _, _, src = push_estargz(tmp_path, proxy.host, [BASE], "cwd")
    decoy = tmp_path / "project"
    (decoy / "layers").mkdir(parents=True)
    (decoy / "layers" / "__init__.py").write_text("")
    (decoy / "layers" / "cli.py").write_text(
        f"open({str(tmp_path / 'decoy-ran')!r}, 'w').close()\n")
    monkeypatch.chdir(decoy)
    layer = lazy.report("pull", "-q", "--lazy", ref, INSECURE)["layers"][0]["layer"]
    layer = layer.split(":")[1]
    assert wait_until(lambda: lazy.record(layer)["lazy"] is None, 60)
    assert not (tmp_path / "decoy-ran").exists()
    assert tree_snapshot(lazy.diff(layer)) == tree_snapshot(src.root / "layers" / layer / "diff")


def test_reset_stops_the_fetcher(lazy_machines, proxy, tmp_path):
    lazy, _ = lazy_machines
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [BASE], "reset")
    hold_background(proxy, blobs[0])
    lazy.ok("pull", "-q", "--lazy", ref, INSECURE)
    assert wait_until(proxy.stalled.is_set, 30)
    pid = lazy.fetcher_pid()
    lazy.ok("reset", "-f")
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}")
                      or Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z",
                      30)


def test_rootless_lazy_pull_is_completed_as_the_user(nobody_dir, proxy, tmp_path):
    """The store side as an unprivileged user: its fetcher runs as the user and
    keeps owners in override_stat as a rootless extraction does (fsd's rootless
    side of lazy layers is tests/integration/test_rootless.py's)."""
    ref, blobs, _, _ = push_estargz(tmp_path, proxy.host, [BASE, TOP], "rootless")
    layout_dir = oci_layout(nobody_dir / "layout", [BASE, TOP], compression="gzip").path

    def nobody(*args: str, store: str = "store", driver: str = "fuse") -> str:
        r = run_as_nobody(nobody_dir, *args, store=store, driver=driver)
        assert r.returncode == 0, f"{args}: {r.stderr}"
        return r.stdout

    store = nobody_dir / "store"
    hold_background(proxy, blobs[0])
    rep = json.loads(nobody("pull", "-q", "--lazy", ref, INSECURE, "--format", "json"))
    bottom = rep["layers"][0]["layer"].split(":")[1]
    record = store / "layers" / f"{bottom}.json"
    diff = store / "layers" / bottom / "diff"
    try:
        assert wait_until(proxy.stalled.is_set, 30)
        sock = os.getxattr(diff, layout.LAZY_XATTR).decode()
        pid = int(Path(sock).with_name("fetcher.pid").read_text())
        assert os.stat(f"/proc/{pid}").st_uid == NOBODY
        assert ask(sock, diff, "one") == {"ok": True}
        assert (diff / "one").read_bytes() == BASE_ONE
        assert json.loads(record.read_text())["lazy"] is not None     # big: held
        proxy.release.set()
        assert wait_until(lambda: json.loads(record.read_text())["lazy"] is None, 120)
        nobody("check", "--verify")
        nobody("import", "-q", str(layout_dir), store="plain", driver="vfs")
        assert snapshot_with_xattrs(diff) == \
            snapshot_with_xattrs(nobody_dir / "plain" / "layers" / bottom / "diff")
        assert os.stat(diff / "one").st_uid == NOBODY
        assert layout.OVERRIDE_STAT_XATTR in os.listxattr(diff / "one")
    finally:
        proxy.release.set()
        pid_file = next((nobody_dir / "run").glob("*/fetcher.pid"), None)
        if pid_file is not None and _flock_held(str(pid_file)):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def snapshot_with_xattrs(root: Path) -> dict:
    """tree_snapshot's view plus each entry's xattrs and mtime (a rootless
    store keeps owners in user.containers.override_stat)."""
    out = tree_snapshot(root)
    for rel in out:
        path = str(root) + rel
        st = os.lstat(path)
        extra = {} if stat.S_ISLNK(st.st_mode) else {
            k: os.getxattr(path, k, follow_symlinks=False)
            for k in os.listxattr(path, follow_symlinks=False)}
        times = None if stat.S_ISDIR(st.st_mode) or "/.wh." in rel else st.st_mtime_ns
        out[rel] = (*out[rel], extra, times)
    return out
