"""`layers pull` and `layers push` against a real registry: Debian's
docker-registry (distribution 2.8) on 127.0.0.1, with its storage in a temp
dir, mostly reached through a proxy of the test's own that counts every
request and injects faults (tests/support/registryd.py).

Round trips keep ChainIDs, diffIDs and content; a second pull transfers no
layer and a tag sharing a base transfers only its new layer (counted at the
proxy); pushes skip what the registry has and mount across repositories;
Docker v2 schema 2 and OCI manifests, an image index with a platform choice;
skopeo (a client nobody here wrote) pushes what we pull and reads what we
push.  Faults: a blob whose bytes do not match its digest, kill -9 and a
registry that goes away mid-pull, 500s, 401s, TLS, mirrors.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storetools import (LAYERS_EXE, StoreEnv, TarEntry, directory, file,  # noqa: E402
                        hardlink, oci_layout, run_on_terminal, sha256, symlink, tar_bytes,
                        tree_snapshot, chain_ids)
from support.registryd import (Proxy, Registry, ensure_installed, free_port,  # noqa: E402
                               htpasswd_line, make_cert)
from support import mounts, podman as podman_support  # noqa: E402
from support.rootless import Sandbox  # noqa: E402
from layers import estargz  # noqa: E402
from layers.digest import Digest  # noqa: E402
from layers.registry import upload  # noqa: E402
from layers.registry.client import ClientOptions, RegistryClient  # noqa: E402
from layers.registry.errors import RegistryError  # noqa: E402

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n"),
                  file("bin/sh", "#!sh\n", mode=0o755), symlink("bin/bash", "sh"),
                  file("lib/libc.so", os.urandom(400_000))])
APP1 = tar_bytes([file("app/one", os.urandom(50_000)), file("etc/.wh.os-release")])
APP2 = tar_bytes([file("app/two", os.urandom(60_000))])
EXTRA = tar_bytes([file("srv/data", os.urandom(80_000))])


# -- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry):
    p = Proxy(registry.host).start()
    yield p
    p.stop()


class Machine(StoreEnv):
    """A store with its own (empty) registries.conf and credential files: one
    machine of a pull/push round trip."""

    def __init__(self, tmp: Path, name: str):
        (tmp / name).mkdir(parents=True, exist_ok=True)
        super().__init__(tmp / name, "vfs")
        home = tmp / name / "home"
        (home / "run").mkdir(parents=True, exist_ok=True)
        self.regconf = tmp / name / "registries.conf"
        self.regconf.write_text("")
        self.env.update({"STRATA_REGISTRIES_CONF": str(self.regconf),
                         "XDG_RUNTIME_DIR": str(home / "run"),
                         "XDG_CONFIG_HOME": str(home / "config"),
                         "DOCKER_CONFIG": str(home / "docker"),
                         "HOME": str(home)})
        self.env.pop("REGISTRY_AUTH_FILE", None)
        self.home = home

    def proc_env(self, **extra) -> dict:
        env = super().proc_env(**extra)
        env.pop("REGISTRY_AUTH_FILE", None)
        return env

    def run(self, *args: str, **extra_env):
        """The CLI in this process (a real process costs 0.4 s of start-up),
        with this machine's environment."""
        saved = {k: os.environ.get(k) for k in list(self.env) + list(extra_env)
                 + ["REGISTRY_AUTH_FILE"]}
        os.environ.pop("REGISTRY_AUTH_FILE", None)
        os.environ.update({**self.env, **extra_env})
        try:
            return self.cli(*args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def ok(self, *args: str, **extra_env) -> str:
        r = self.run(*args, **extra_env)
        assert r.code == 0, f"layers {' '.join(args)} → {r.code}: {r.err}"
        return r.out

    def report(self, *args: str, **extra_env) -> dict:
        return json.loads(self.ok(*args, "--format", "json", **extra_env))

    def layers(self) -> list[str]:
        d = self.root / "layers"
        return sorted(n for n in os.listdir(d) if not n.endswith(".json")) if d.exists() else []

    def parked(self) -> list[str]:
        d = self.root / "registry" / "parked"
        return sorted(n for n in os.listdir(d) if not n.endswith(".json")) if d.exists() else []


@pytest.fixture
def machines(tmp_path):
    made = [Machine(tmp_path, "a"), Machine(tmp_path, "b")]
    yield made
    for m in made:
        m.cleanup()
        m.assert_consistent()


def import_image(m: Machine, tmp: Path, layers: list[bytes], name: str,
                 compression: str | None = "gzip"):
    built = oci_layout(tmp / name.replace("/", "_").replace(":", "_"), layers,
                       compression=compression)
    m.ok("import", "-q", str(built.path), "--name", name)
    return built


def inspect(m: Machine, ref: str) -> dict:
    return json.loads(m.ok("inspect", ref))


INSECURE = "--tls-verify=false"


# -- round trips ---------------------------------------------------------------------------

def test_push_pull_round_trip_transfers_only_what_is_missing(machines, proxy, tmp_path):
    a, b = machines
    v1 = import_image(a, tmp_path, [BASE, APP1], "app:1")
    v2 = import_image(a, tmp_path, [BASE, APP2], "app:2")
    repo = f"{proxy.host}/round/app"

    # push: everything is new, then only what v2 adds
    rep = a.report("push", "app:1", f"{repo}:1", INSECURE)
    assert [x["status"] for x in rep["layers"]] == ["uploaded", "uploaded"]
    assert rep["config"]["status"] == "uploaded"
    uploads_v1 = proxy.count("PUT", "/blobs/uploads/")
    assert uploads_v1 == 3                               # two layers and the config
    rep = a.report("push", "app:2", f"{repo}:2", INSECURE)
    assert [x["status"] for x in rep["layers"]] == ["exists", "uploaded"]
    assert proxy.count("PUT", "/blobs/uploads/") - uploads_v1 == 2   # APP2 and config
    pushed_v2_bytes = rep["sent"]
    rep = a.report("push", "app:1", f"{repo}:1", INSECURE)           # again: nothing
    assert [x["status"] for x in rep["layers"]] == ["exists", "exists"]
    assert rep["sent"] == 0

    # pull into a fresh store: same ChainIDs, diffIDs, content
    proxy.reset()
    rep = b.report("pull", f"{repo}:1", INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["fetched", "fetched"]
    got = inspect(b, f"{repo}:1")
    assert got["layers"] == v1.chain_ids
    assert got["id"] == inspect(a, "app:1")["id"]
    for cid, diff in zip(v1.chain_ids, v1.diff_ids):
        layer = inspect(b, cid)
        assert layer["diff_id"] == diff
        assert tree_snapshot(layer["dir"]) == tree_snapshot(inspect(a, cid)["dir"])
    full_pull_bytes = rep["received"]
    assert sorted(proxy.blob_gets()) == sorted(
        [x["blob"] for x in rep["layers"]] + [f"sha256:{got['id']}"])

    # a second pull transfers no layer
    proxy.reset()
    rep = b.report("pull", f"{repo}:1", INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["present", "present"]
    assert rep["received"] == 0
    assert [d for d in proxy.blob_gets() if d != f"sha256:{got['id']}"] == []

    # a new tag sharing the base: only its own layer
    proxy.reset()
    rep = b.report("pull", f"{repo}:2", INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["present", "fetched"]
    assert inspect(b, f"{repo}:2")["layers"] == v2.chain_ids
    layer_gets = [d for d in proxy.blob_gets() if d in {x["blob"] for x in rep["layers"]}]
    assert layer_gets == [rep["layers"][1]["blob"]]
    print(f"\ntransfer figures: full pull of app:1 {full_pull_bytes} B; pull of app:2 "
          f"(shared base) {rep['received']} B = its one new layer of "
          f"{rep['layers'][1]['size']} B; push of app:2 uploaded {pushed_v2_bytes} B")

    # the text output says what was reused and what was transferred
    r = b.run("pull", f"{repo}:2", INSECURE)
    assert r.code == 0 and r.out.strip() == inspect(b, f"{repo}:2")["id"]
    assert "layer 1/2" in r.err and "already in the store" in r.err
    assert f"pulled {repo}:2: 0 layer(s) fetched (0B), 2 reused" in r.err


def test_docker_v2s2_manifest_chunked_upload_and_mount(machines, proxy, registry, tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, EXTRA], "web:1")
    repo = f"{proxy.host}/docker/web"
    rep = a.report("push", "web:1", f"{repo}:1", INSECURE, "--manifest-format", "v2s2",
                   "--chunk-size", "65536")
    assert proxy.count("PATCH", "/blobs/uploads/") >= 7       # 400 kB in 64 kB pieces
    r = httpx.get(f"http://{registry.host}/v2/docker/web/manifests/1",
                  headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"
    doc = r.json()
    assert {x["mediaType"] for x in doc["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    assert rep["manifest_digest"] == r.headers["docker-content-digest"]

    rep = b.report("pull", f"{repo}:1", INSECURE)
    assert inspect(b, f"{repo}:1")["layers"] == built.chain_ids
    assert inspect(b, f"{repo}:1")["manifest_digest"] == rep["manifest_digest"]

    # the same image to another repository of the registry: mounted, not sent
    proxy.reset()
    rep = a.report("push", "web:1", f"{proxy.host}/other/web:1", INSECURE,
                   "--manifest-format", "v2s2")
    assert [x["status"] for x in rep["layers"]] == ["mounted", "mounted"]
    assert proxy.count("PATCH") == 0 and proxy.count("PUT", "/blobs/") == 1   # the config
    # and a pull of a pulled image's blobs: b knows a holds them where it pulled
    rep = b.report("push", f"{repo}:1", f"{proxy.host}/third/web:1", INSECURE,
                   "--manifest-format", "v2s2")
    assert [x["status"] for x in rep["layers"]] == ["mounted", "mounted"]


def test_uncompressed_oci_layers_and_zstd_pull(machines, proxy, registry, skopeo, tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, APP1], "plain:1")
    repo = f"{proxy.host}/plain/app"
    rep = a.report("push", "plain:1", f"{repo}:1", INSECURE, "--compression-format", "none")
    assert [x["digest"] for x in rep["layers"]] == built.diff_ids
    b.ok("pull", f"{repo}:1", INSECURE)
    assert inspect(b, f"{repo}:1")["layers"] == built.chain_ids
    # zstd layers, as skopeo copies them from a layout that has them
    zst = oci_layout(tmp_path / "zstd", [BASE, EXTRA], compression="zstd")
    ref = f"{registry.host}/zstd/app:1"
    _skopeo(skopeo, "copy", "--dest-tls-verify=false", f"oci:{zst.path}", f"docker://{ref}")
    manifest = httpx.get(f"http://{registry.host}/v2/zstd/app/manifests/1", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert {x["mediaType"] for x in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    rep = b.report("pull", ref, INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["present", "fetched"]
    assert inspect(b, ref)["layers"] == zst.chain_ids


# -- index, skopeo ----------------------------------------------------------------------------

def _oci_index_layout(dest: Path, images: dict[str, list[bytes]]) -> dict[str, list[str]]:
    """An OCI layout whose index.json holds one image index over one image
    per platform ("linux/amd64": layers); → platform: ChainIDs."""
    import gzip
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        d = sha256(data)
        (blobs / d[7:]).write_bytes(data)
        return {"digest": d, "size": len(data)}

    entries, chains = [], {}
    for plat, layers in images.items():
        os_, arch = plat.split("/")
        descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                  **put(gzip.compress(raw, mtime=0))} for raw in layers]
        diff_ids = [sha256(raw) for raw in layers]
        chains[plat] = chain_ids(diff_ids)
        config = json.dumps({"architecture": arch, "os": os_,
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          **put(config)},
                               "layers": descs}).encode()
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **put(manifest), "platform": {"os": os_, "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    idesc = put(index)
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", **idesc}]}))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return chains


@pytest.fixture(scope="module")
def skopeo():
    return ensure_installed("skopeo", "skopeo")


def _skopeo(skopeo: str, *args: str) -> str:
    p = subprocess.run([skopeo, "--insecure-policy", *args], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_image_index_platform_choice(machines, registry, skopeo, tmp_path):
    _, b = machines
    from layers.source import host_arch
    here = f"linux/{host_arch()}"
    other = "linux/arm64" if host_arch() != "arm64" else "linux/amd64"
    chains = _oci_index_layout(tmp_path / "multi", {here: [BASE, APP1], other: [BASE, APP2]})
    ref = f"{registry.host}/multi/app:1"
    _skopeo(skopeo, "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'multi'}",
            f"docker://{ref}")
    rep = b.report("pull", ref, INSECURE)
    assert inspect(b, ref)["layers"] == chains[here]
    rep = b.report("pull", ref, INSECURE, "--platform", other, "--name", "multi:other")
    assert [x["outcome"] for x in rep["layers"]] == ["present", "fetched"]
    assert inspect(b, "multi:other")["layers"] == chains[other]
    r = b.run("pull", ref, INSECURE, "--platform", "linux/s390x")
    assert r.code == 1
    assert f"no image for linux/s390x in the index; it has {', '.join(sorted([here, other]))}" \
        in r.err


def test_skopeo_pushes_what_we_pull_and_reads_what_we_push(machines, registry, skopeo,
                                                           tmp_path):
    a, b = machines
    built = oci_layout(tmp_path / "theirs", [BASE, EXTRA], compression="gzip")
    ref = f"{registry.host}/skopeo/theirs:1"
    _skopeo(skopeo, "copy", "--dest-tls-verify=false", f"oci:{built.path}", f"docker://{ref}")
    b.ok("pull", ref, INSECURE)
    assert inspect(b, ref)["layers"] == built.chain_ids

    mine = import_image(a, tmp_path, [BASE, APP2], "mine:1")
    ref = f"{registry.host}/skopeo/mine:1"
    a.ok("push", "mine:1", ref, INSECURE)
    info = json.loads(_skopeo(skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Layers"] and len(info["Layers"]) == 2
    out = tmp_path / "copied"
    _skopeo(skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}")
    b.ok("import", "-q", str(out), "--name", "copied:1")
    assert inspect(b, "copied:1")["layers"] == mine.chain_ids


def test_blob_ranges_are_206_checked_and_a_200_is_refused(proxy):
    client = RegistryClient(proxy.host, ClientOptions(tls_verify=False, retries=1,
                                                      backoff=0.01, timeout=10),
                            lambda repo: None, insecure=True)
    blob = os.urandom(300_000)
    digest = Digest.of_bytes(blob)
    with client:
        client.upload_blob("ranges/blob", digest, len(blob), lambda: iter([blob]))
        for start, end in [(0, 51), (len(blob) - 51, len(blob)), (1000, 250_001), (7, 8)]:
            assert client.get_blob_range("ranges/blob", digest, start, end) == blob[start:end]
        assert all(s.status == 206 for s in proxy.requests if s.method == "GET"
                   and "/blobs/" in s.path)
        proxy.ignore_range = True
        with pytest.raises(RegistryError) as e:
            client.get_blob_range("ranges/blob", digest, 10, 20)
        assert str(e.value) == (f"registry {proxy.host}: bytes [10, 20) of blob {digest} "
                                "of ranges/blob: the registry ignored the Range request and "
                                "sent the whole blob (200)")


# -- seekable (eStargz) layers ----------------------------------------------------------------

SEEKABLE = tar_bytes([
    directory("data"), file("data/empty"), file("data/one", os.urandom(3000)),
    file("data/many", os.urandom(9 << 20)),                  # three 4 MiB chunks
    file("data/zeros", bytes(5 << 20)), hardlink("data/hl", "data/many"),
    symlink("data/sl", "many"), TarEntry("data/fifo", tarfile.FIFOTYPE),
    file("data/x", "x", pax={"SCHILY.xattr.user.k": "v"}),
    file("etc/.wh.os-release"), directory("lib"), file("lib/.wh..wh..opq"),
    file("n" * 150 + "/" + "m" * 150, "long"), file(os.fsdecode(b"raw\xfe"), "raw")])


def _manifest(registry: Registry, repository: str, tag: str) -> dict:
    return httpx.get(f"http://{registry.host}/v2/{repository}/manifests/{tag}",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()


def test_estargz_push_keeps_diffids_and_gzip_clients_read_it(machines, registry, skopeo,
                                                             tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, SEEKABLE], "seek:1")
    ref = f"{registry.host}/estargz/seek:1"
    rep = a.report("push", "seek:1", ref, INSECURE, "--compression-format", "estargz")
    assert [x["status"] for x in rep["layers"]] == ["uploaded", "uploaded"]

    # the descriptors: gzip layers with the TOC digest and the tar size
    doc = _manifest(registry, "estargz/seek", "1")
    raw = json.loads(_skopeo(skopeo, "inspect", "--raw", "--tls-verify=false",
                             f"docker://{ref}"))
    assert raw == doc
    for desc, tar in zip(doc["layers"], [BASE, SEEKABLE]):
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        ann = desc["annotations"]
        assert ann["io.containers.estargz.uncompressed-size"] == str(len(tar))
        blob = registry.blob_path(desc["digest"]).read_bytes()
        offset = estargz.parse_footer(blob)
        toc = estargz.parse_toc_region(
            blob[offset:-estargz.FOOTER_SIZE],
            Digest.parse(ann["containerd.io/snapshot/stargz/toc.digest"]))
        assert gzip.decompress(blob) == tar
    assert len(toc.chunks(toc.entries["data/many"])) == 3

    # a gzip-only client: skopeo decompresses to the config's diffIDs
    out = tmp_path / "dir"
    _skopeo(skopeo, "copy", "--src-tls-verify=false", "--dest-decompress", f"docker://{ref}",
            f"dir:{out}")
    copied = json.loads((out / "manifest.json").read_text())
    config = json.loads((out / copied["config"]["digest"][7:]).read_bytes())
    assert config["rootfs"]["diff_ids"] == built.diff_ids
    assert [sha256((out / d["digest"][7:]).read_bytes()) for d in copied["layers"]] \
        == built.diff_ids

    # our own plain pull: the image id and ChainIDs of the plain push
    plain = f"{registry.host}/estargz/plain:1"
    a.ok("push", "seek:1", plain, INSECURE)
    assert [x.get("annotations") for x in _manifest(registry, "estargz/plain", "1")
            ["layers"]] == [None, None]
    b.ok("pull", ref, INSECURE)
    got = inspect(b, ref)
    assert got["layers"] == built.chain_ids and got["id"] == inspect(a, "seek:1")["id"]
    rep = b.report("pull", plain, INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["present", "present"]
    assert inspect(b, plain)["id"] == got["id"]
    for cid in built.chain_ids:
        assert tree_snapshot(inspect(b, cid)["dir"]) == tree_snapshot(inspect(a, cid)["dir"])


def test_podman_pulls_and_runs_an_estargz_image(machines, registry, tmp_path, fsd_log):
    """podman 4.3 (partial pulls off: a gzip-only client) with fsd as its
    mount program pulls the seekable image, checks its diffIDs, runs it."""
    reason = mounts.why_no_fuse() or podman_support.ensure_podman()
    if reason:
        pytest.skip(reason)
    a, _ = machines
    box = Sandbox(None, prefix="strata-estargz-podman-")
    problems: list[str] = []
    try:
        a.ok("import", "-q", str(podman_support.busybox_rootfs(box)), "--name", "bb:1")
        ref = f"{registry.host}/estargz/busybox:1"
        a.ok("push", "bb:1", ref, INSECURE, "--compression-format", "estargz")
        store = podman_support.PodmanStore(box, rootless=False)
        try:
            store("pull", "--tls-verify=false", ref)
            [image] = json.loads(store("image", "inspect", ref).stdout)
            assert image["Id"] == inspect(a, "bb:1")["id"]
            assert image["RootFS"]["Layers"] == [inspect(a, cid)["diff_id"]
                                                 for cid in inspect(a, "bb:1")["layers"]]
            out = store("run", "--rm", *podman_support.RUN_OPTS, ref, "sh", "-c",
                        "cat /lower/keep.txt; readlink /lower/keep-link").stdout
            assert out == "keep\nkeep.txt\n"
        finally:
            problems += store.close()
            store.collect_logs(fsd_log)
    finally:
        problems += box.cleanup()
    assert not problems, "; ".join(problems)


def test_estargz_and_plain_blobs_are_kept_apart_when_reused(machines, registry, tmp_path):
    a, _ = machines
    import_image(a, tmp_path, [BASE, APP1], "apart:1")
    seek = a.report("push", "apart:1", f"{registry.host}/apart/seek:1", INSECURE,
                    "--compression-format", "estargz")
    # a plain push does not take the seekable blobs the cache knows...
    plain = a.report("push", "apart:1", f"{registry.host}/apart/plain:1", INSECURE)
    assert [x["status"] for x in plain["layers"]] == ["uploaded", "uploaded"]
    assert not {x["digest"] for x in plain["layers"]} & {x["digest"] for x in seek["layers"]}
    # ... and a seekable push takes them, annotations and all, not the plain ones
    again = a.report("push", "apart:1", f"{registry.host}/apart/again:1", INSECURE,
                     "--compression-format", "estargz")
    assert [x["status"] for x in again["layers"]] == ["mounted", "mounted"]
    assert [x["digest"] for x in again["layers"]] == [x["digest"] for x in seek["layers"]]
    assert _manifest(registry, "apart/again", "1")["layers"] == \
        _manifest(registry, "apart/seek", "1")["layers"]
    twice = a.report("push", "apart:1", f"{registry.host}/apart/plain:2", INSECURE)
    assert [x["digest"] for x in twice["layers"]] == [x["digest"] for x in plain["layers"]]
    # a Docker v2s2 manifest carries the same blobs and annotations
    a.ok("push", "apart:1", f"{registry.host}/apart/docker:1", INSECURE,
         "--compression-format", "estargz", "--manifest-format", "v2s2")
    docker = httpx.get(f"http://{registry.host}/v2/apart/docker/manifests/1", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"}).json()
    assert [(x["digest"], x["annotations"]) for x in docker["layers"]] == \
        [(x["digest"], x["annotations"]) for x in _manifest(registry, "apart/seek", "1")
         ["layers"]]
    assert {x["mediaType"] for x in docker["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"}


# -- faults --------------------------------------------------------------------------------

def _blob_file_of(registry: Registry, digest: str) -> Path:
    path = registry.blob_path(digest)
    assert path.exists(), path
    return path


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_blob_with_wrong_bytes_is_refused_naming_both_digests(machines, registry, tmp_path,
                                                               compression):
    a, b = machines
    # layers of its own: the registry's blob files are shared by every test
    own = tar_bytes([file("app/one", os.urandom(50_000))])
    built = import_image(a, tmp_path, [BASE, own], "bad:1")
    ref = f"{registry.host}/corrupt-{compression}/app:1"
    rep = a.report("push", "bad:1", ref, INSECURE, "--compression-format", compression)
    victim = rep["layers"][1]["digest"]
    path = _blob_file_of(registry, victim)
    data = bytearray(path.read_bytes())
    if compression == "none":
        pos = data.index(b"app/one") + 512 + 100        # inside the file's content
    else:
        pos = len(data) // 2
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    got = sha256(bytes(data))
    r = b.run("pull", "-j", "1", ref, INSECURE)
    assert r.code == 1, r.err
    assert f"digest mismatch for layer 2/2 ({registry.host}/corrupt-{compression}/app@" \
           f"{victim}): expected {victim}, got {got}" in r.err
    assert b.ok("images", "-q") == ""
    assert b.layers() == []
    assert b.parked() == [built.chain_ids[0][7:]]          # the good one stays parked


def test_kill_9_mid_pull_leaves_nothing_visible_and_the_rerun_keeps_finished_layers(
        machines, proxy, tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, APP1, EXTRA], "three:1")
    ref = f"{proxy.host}/crash/three:1"
    rep = a.report("push", "three:1", ref, INSECURE)
    blobs = [x["digest"] for x in rep["layers"]]
    proxy.reset()
    proxy.stall = blobs[2]
    p = subprocess.Popen([LAYERS_EXE, *b.args(), "pull", "-j", "1", ref, INSECURE],
                         env=b.proc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        if not proxy.stalled.wait(30):
            p.kill()
            pytest.fail(f"the pull never reached the third layer: {p.communicate()}")
        time.sleep(0.2)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        proxy.drop.set()
    assert p.returncode == -signal.SIGKILL
    assert b.ok("images", "-q") == ""                        # repairs, shows nothing
    assert b.layers() == []
    assert b.parked() == sorted(c[7:] for c in built.chain_ids[:2])
    r = b.run("check")
    assert (r.code, r.out) == (0, "")

    proxy.stall = None
    proxy.reset()
    rep = b.report("pull", ref, INSECURE)
    assert [x["outcome"] for x in rep["layers"]] == ["parked", "parked", "fetched"]
    assert [d for d in proxy.blob_gets() if d in blobs] == [blobs[2]]
    assert inspect(b, ref)["layers"] == built.chain_ids
    assert b.parked() == []


def test_registry_gone_mid_pull_then_rerun(machines, registry, tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, APP2], "gone:1")
    first = Proxy(registry.host).start()
    ref = f"{first.host}/gone/app:1"
    try:
        rep = a.report("push", "gone:1", ref, INSECURE)
        blob = rep["layers"][1]["digest"]
        first.stall = blob
        stopper = threading.Thread(target=lambda: (first.stalled.wait(30), first.drop.set(),
                                                   first.stop()))
        stopper.start()
        t0 = time.monotonic()
        r = b.run("pull", "-j", "1", "--retries", "2", ref, INSECURE)
        stopper.join(30)
    finally:
        first.release.set()
    assert r.code == 1, r.err
    assert r.err.strip() == (f"layers: registry {first.host}: GET /v2/gone/app/blobs/{blob}: "
                             "ConnectError: [Errno 111] Connection refused (after 3 attempts)")
    assert time.monotonic() - t0 < 30
    assert b.ok("images", "-q") == "" and b.layers() == []
    assert b.parked() == [built.chain_ids[0][7:]]

    second = Proxy(registry.host, port=first.port).start()      # the registry is back
    try:
        rep = b.report("pull", ref, INSECURE)
        assert [x["outcome"] for x in rep["layers"]] == ["parked", "fetched"]
        assert inspect(b, ref)["layers"] == built.chain_ids
    finally:
        second.stop()


def test_500_is_retried_with_back_off_then_fails_clearly(machines, proxy):
    _, b = machines
    proxy.fail_with = 500
    t0 = time.monotonic()
    r = b.run("pull", "--retries", "2", f"{proxy.host}/any/thing:1", INSECURE)
    took = time.monotonic() - t0
    assert r.code == 1
    assert r.err.strip() == (f"layers: registry {proxy.host}: GET /v2/: 500 Internal Server "
                             "Error (UNAVAILABLE: injected failure) after 3 attempts")
    assert proxy.count("GET", "/v2/") == 3
    assert took >= 1.5                                   # 0.5 s, then 1 s


# -- authentication and TLS ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("basic"),
                   htpasswd=htpasswd_line("alice", "s3cret-pw")).start()
    yield reg
    reg.stop()


def test_basic_auth_from_auth_json_and_clear_401(machines, basic_registry, tmp_path):
    a, b = machines
    import_image(a, tmp_path, [BASE], "auth:1")
    ref = f"{basic_registry.host}/private/app:1"
    r = a.run("push", "auth:1", ref, INSECURE)
    assert r.code == 1
    assert "authentication required (401) and no credentials" in r.err
    r = a.run("push", "auth:1", ref, INSECURE, "--creds", "alice:wrong-pw")
    assert r.code == 1 and "the credentials of 'alice' from --creds were rejected (401)" in r.err
    assert "wrong-pw" not in r.err
    a.ok("push", "auth:1", ref, INSECURE, "--creds", "alice:s3cret-pw")

    auth = b.home / "run" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    import base64
    token = base64.b64encode(b"alice:s3cret-pw").decode()
    auth.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    r = b.run("pull", ref, INSECURE)
    assert r.code == 0, r.err
    assert "s3cret" not in r.err + r.out


def test_push_and_pull_show_progress_on_a_terminal_only(machines, proxy, tmp_path):
    """One line per layer, each ending `done` with its bytes; nothing piped."""
    a, b = machines
    import_image(a, tmp_path, [BASE, APP1], "shown:1")
    ref = f"{proxy.host}/shown/app:1"
    for m, argv in ((a, ["push", "shown:1", ref, INSECURE]), (b, ["pull", ref, INSECURE])):
        code, out = run_on_terminal([LAYERS_EXE] + m.args() + argv, m.proc_env())
        assert code == 0, out
        last = {}
        for line in out.replace("\r", "").split("\n"):
            if "\x1b[2K" in line:
                label, text = line.split("\x1b[2K")[-1].split(": ", 1)
                last[label] = text
        assert [label[:10] for label in sorted(last)] == ["layer 1/2 ", "layer 2/2 "], out
        assert all(re.fullmatch(r"done \S+B( of \S+B \(100%\))? at \S+/s", text)
                   for text in last.values()), out
        piped = m.cli_proc(*argv)
        assert piped.code == 0 and "\x1b" not in piped.err, piped.err


def test_push_is_let_in_before_it_compresses_a_layer(machines, basic_registry, tmp_path,
                                                    monkeypatch):
    """A wrong --tls-verify, a typo in the host or missing credentials fail
    before any layer is compressed (which takes seconds for a large image)."""
    a, _ = machines
    import_image(a, tmp_path, [BASE, APP1], "early:1")
    compressed = []
    real = upload.gzip_file
    monkeypatch.setattr(upload, "gzip_file",
                        lambda chunks, path, level: compressed.append(path)
                        or real(chunks, path, level))
    nobody = f"127.0.0.1:{free_port()}"
    ref = f"{basic_registry.host}/early/app:1"
    for args, message in [
            ([f"{nobody}/early/app:1", INSECURE, "--retries", "0"],
             f"layers: registry {nobody}: GET /v2/: ConnectError"),
            ([ref], f"layers: registry {basic_registry.host}: TLS failed ("),
            ([ref, INSECURE], "authentication required (401) and no credentials")]:
        r = a.run("push", "early:1", *args)
        assert r.code == 1 and message in r.err, (args, r.err)
        assert len(r.err.splitlines()) == 1, r.err
    assert compressed == []
    a.ok("push", "early:1", ref, INSECURE, "--creds", "alice:s3cret-pw")
    assert len(compressed) == 2


def test_bearer_token_from_the_challenge_with_docker_config(machines, proxy, tmp_path):
    a, b = machines
    import_image(a, tmp_path, [BASE, APP1], "tok:1")
    ref = f"{proxy.host}/tokens/app:1"
    a.ok("push", "tok:1", ref, INSECURE)
    proxy.bearer = ("bob", "b0b-pw")
    r = b.run("pull", ref, INSECURE)
    assert r.code == 1
    assert "token for repository:tokens/app:pull: authentication required (401)" in r.err
    cfg = b.home / "docker" / "config.json"
    cfg.parent.mkdir(parents=True)
    import base64
    cfg.write_text(json.dumps({"auths": {f"http://{proxy.host}/v1/": {
        "auth": base64.b64encode(b"bob:b0b-pw").decode()}}}))
    proxy.token_requests.clear()
    rep = b.report("pull", ref, INSECURE)
    assert len(rep["layers"]) == 2
    assert proxy.token_requests and all(t["basic"] for t in proxy.token_requests)
    assert any("scope=repository%3Atokens%2Fapp%3Apull" in t["query"]
               or "scope=repository:tokens/app:pull" in t["query"]
               for t in proxy.token_requests)


def test_tls_is_verified_and_can_be_trusted_or_skipped(machines, tmp_path_factory, tmp_path):
    a, b = machines
    certs = tmp_path_factory.mktemp("certs")
    cert, key = make_cert(certs)
    reg = Registry(tmp_path_factory.mktemp("tls"), tls=(cert, key)).start()
    try:
        import_image(a, tmp_path, [BASE], "tls:1")
        ref = f"{reg.host}/tls/app:1"
        r = a.run("push", "tls:1", ref)
        assert r.code == 1
        assert f"layers: registry {reg.host}: TLS failed (" in r.err
        assert "--cert-dir" in r.err
        a.ok("push", "tls:1", ref, INSECURE)
        cadir = tmp_path / "ca"
        cadir.mkdir()
        shutil.copy(cert, cadir / "ca.crt")
        rep = b.report("pull", ref, "--cert-dir", str(cadir))
        assert len(rep["layers"]) == 1
    finally:
        reg.stop()


def test_mirror_first_then_the_registry(machines, proxy, tmp_path):
    a, b = machines
    built = import_image(a, tmp_path, [BASE, APP1], "mir:1")
    a.ok("push", "mir:1", f"{proxy.host}/team/app:1", INSECURE)
    b.regconf.write_text(f"""
[[registry]]
prefix = "registry.invalid/team"
location = "{proxy.host}/team"
insecure = true
[[registry.mirror]]
location = "{proxy.host}/mirror"
insecure = true
""")
    rep = b.report("pull", "registry.invalid/team/app:1")
    assert rep["found_at"] == f"{proxy.host}/team/app:1"
    assert len(rep["mirrors_passed"]) == 1 and "not found" in rep["mirrors_passed"][0]
    assert inspect(b, "registry.invalid/team/app:1")["layers"] == built.chain_ids

    a.ok("push", "mir:1", f"{proxy.host}/mirror/app:2", INSECURE)
    rep = b.report("pull", "registry.invalid/team/app:2")
    assert rep["found_at"] == f"{proxy.host}/mirror/app:2"
    assert rep["mirrors_passed"] == []
