"""podman 4.3 taking an image's layers from the store's additional layer
stores (`layers als`, layers/als.py) instead of pulling their blobs: with
fsd as its mount_program (`als/fsd`) and with the kernel overlay
(`als/kernel`, which holds only the layers the kernel reads right: podman
pulls the others itself), rootful and rootless.

Per case, one sandbox: a Strata store and a podman store, both run through
the same agent (root, or the test user), and Debian's docker-registry on
loopback behind a counting proxy (tests/support/registryd.py).  The image is
the busybox rootfs of the podman tests with a layer on top that deletes a
file (a `.wh.` whiteout), imported and pushed by the store, then pulled back
into it and served; podman pulls it from the proxy, which sees every blob
podman asks for.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers"))

from storetools import LAYERS_EXE, wait_until  # noqa: E402
from test_layers_registry import INSECURE, proxy, registry  # noqa: E402,F401

from layers import fsutil, layout  # noqa: E402

from support import mounts, rootless  # noqa: E402
from support.lazyfetcher import LAZY_XATTR, Fetcher, make_placeholder  # noqa: E402
from support import podman as podman_support  # noqa: E402
from support.podman import RUN_OPTS, PodmanStore, podman_ready  # noqa: E402,F401
from support.registryd import Proxy  # noqa: E402
from support.rootless import Sandbox  # noqa: E402

MiB = 1 << 20
NOTE = f"only in this image: {os.urandom(8).hex()}\n"


class Served:
    """A Strata store and a podman store reading one of its additional layer
    stores (`reader`), in one sandbox, run by one agent."""

    def __init__(self, box: Sandbox, rootless: bool, reader: str, driver: str):
        self.box = box
        self.strata_root = box.dir("strata/graph", owned=rootless, mode=0o700)
        self.strata_run = box.dir("strata/run", owned=rootless, mode=0o700)
        self.driver = driver
        conf = box.file("strata/storage.conf", "", owned=False)
        regconf = box.file("strata/registries.conf", "", owned=False)
        self.strata_env = {"STRATA_STORAGE_CONF": str(conf),
                           "STRATA_REGISTRIES_CONF": str(regconf)}
        self.als = self.strata_root / "als" / reader
        # rootless, the store keeps owners in override_stat: podman passes fsd
        # xattr_permissions=2, which reads them, when it has a force_mask
        self.podman = PodmanStore(box, rootless=rootless, layer_stores=(str(self.als),),
                                  mount_program="" if reader == "kernel" else None,
                                  force_mask="shared" if rootless and reader == "fsd" else None)

    def rootfs(self) -> Path:
        """The busybox rootfs tar, made once per sandbox."""
        tar = self.box.root / "rootfs.tar"
        return tar if tar.exists() else podman_support.busybox_rootfs(self.box)

    def layers(self, *args: str) -> str:
        argv = [LAYERS_EXE, "--root", self.strata_root, "--runroot", self.strata_run,
                "--driver", self.driver, *args]
        r = self.podman.agent.run(argv, timeout=120, env=self.strata_env)
        assert r.returncode == 0, f"layers {' '.join(args)} failed:\n{r.describe()}"
        return r.stdout

    def fetcher_pid(self) -> int | None:
        """The store's fetcher, while it runs."""
        path = layout.StorePaths(str(self.strata_root), str(self.strata_run)).fetcher_pid
        return int(Path(path).read_text()) if fsutil.flock_held(path) else None

    def stop_fetcher(self) -> None:
        pid = self.fetcher_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: self.fetcher_pid() is None, 30)

    def close(self) -> list[str]:
        """podman's containers gone, then every image served no more (the
        store's mounts for the kernel go with them)."""
        self.stop_fetcher()
        problems = []
        self.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        try:
            for line in self.layers("als", "ls").splitlines():
                self.layers("als", "rm", line.split()[0])
        except AssertionError as e:
            problems.append(str(e))
        return problems + self.podman.close()


# reader-mode[-driver of the store]: a store of the overlay driver keeps the
# kernel's form of whiteouts (and cannot pull lazily)
@pytest.fixture(scope="module", params=["fsd-rootful", "fsd-rootless", "kernel-rootful",
                                        "kernel-rootless", "kernel-rootful-overlay"])
def served(request, podman_ready):
    reader, mode, driver = (request.param + "-fuse").split("-")[:3]
    user = None
    if mode == "rootless":
        user, reason = rootless.fsd_user()
        if reason:
            pytest.skip(reason)
    box = Sandbox(user, prefix=f"als-{request.param_index}-")   # podman: runroot ≤ 50 bytes
    try:
        s = Served(box, rootless=user is not None, reader=reader, driver=driver)
    except Exception:
        box.cleanup()
        raise
    problems = []
    try:
        yield s
    finally:
        problems += s.close()
        problems += box.cleanup()
    assert not problems, f"{request.param} clean-up: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def podman_logs(request, fsd_log):
    yield
    if "served" in request.fixturenames:
        request.getfixturevalue("served").podman.collect_logs(fsd_log)


def layer_tar(path: Path, files: dict[str, bytes], owner: tuple[int, int] = (0, 0),
              mode: int = 0o644) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, (info.uid, info.gid) = len(data), mode, owner
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    path.chmod(0o644)
    return path


def publish(served: Served, proxy: Proxy, name: str, *tops: Path) -> str:
    """The busybox rootfs with the layers `tops` on it, pushed to the registry
    by the store, then pulled back (so its layer records carry their blob
    digests) and served: its reference."""
    ref = f"{proxy.host}/als/{name}:1"
    served.layers("import", "-q", str(served.rootfs()), *map(str, tops),
                  "--name", f"localhost/{name}:1")
    served.layers("push", f"localhost/{name}:1", ref, INSECURE)
    served.layers("rmi", f"localhost/{name}:1")
    served.layers("pull", "-q", ref, INSECURE)
    served.layers("als", "add", ref)
    return ref


def layer_blobs(served: Served, ref: str) -> list[str]:
    image = json.loads(served.layers("inspect", ref))
    return [json.loads(served.layers("inspect", cid))["compressed_digest"]
            for cid in image["layers"]]


def test_podman_runs_an_image_whose_layers_it_did_not_pull(served, proxy):
    # a layer deleting /lower/delete-me.txt of the rootfs, one adding a file of
    # another owner than root
    whiteout = layer_tar(served.box.root / "whiteout.tar", {"lower/.wh.delete-me.txt": b""})
    owned = layer_tar(served.box.root / "owned.tar", {"lower/owned": b"o"}, (1000, 1001), 0o600)
    ref = publish(served, proxy, "busybox", whiteout, owned)
    base, whiteout, owned = layer_blobs(served, ref)
    # the kernel reads a `.wh.` file as a file, and the owner a rootless store
    # keeps in override_stat not at all: those layers are podman's to pull
    served_blobs = {"fsd": [base, whiteout, owned], "kernel": [base, owned]}[served.als.name]
    if served.als.name == "kernel" and served.podman.rootless:
        served_blobs = [base]
    if served.driver == "overlay":
        served_blobs = [base, whiteout, owned]
    assert sorted(p.name for p in served.als.iterdir()) == sorted(served_blobs)

    proxy.reset()
    served.podman("pull", INSECURE, ref)
    fetched = proxy.blob_gets()
    assert not set(fetched) & set(served_blobs), f"podman pulled a served layer: {fetched}"
    assert len(fetched) == 4 - len(served_blobs), f"podman fetched more than the config: {fetched}"

    out = served.podman("run", *RUN_OPTS, "--rm", ref, "sh", "-c",
                        "cat /lower/keep.txt && stat -c %u:%g:%a /lower/owned && ls /lower && "
                        "awk '$2 == \"/\" {print \"root:\" $3}' /proc/mounts").stdout.split()
    assert out[:2] == ["keep", "1000:1001:600"], out
    assert out[2:-1] == ["append.txt", "delete-dir", "keep-link", "keep.txt", "link-src",
                         "owned", "rename-dir"], out
    kernel = served.als.name == "kernel"
    assert out[-1] == f"root:{'overlay' if kernel else mounts.FSD_FSTYPE}", out
    assert proxy.blob_gets() == fetched, "podman run fetched blobs"


@pytest.mark.parametrize("served", ["fsd-rootful", "kernel-rootful"], indirect=True)
def test_podman_fetches_a_lazy_layer_file_by_file(served, proxy):
    """A layer of the store made lazy (the placeholder tree and a fetcher of
    tests/support/lazyfetcher.py standing for `pull --lazy`'s): podman runs the
    image from the store, and only the file the command reads is fetched, when
    it is opened: by podman's fsd, or (`als/kernel`, `--mount-lazy`) by the
    read-only fsd mount the store made for the kernel overlay to read."""
    top = layer_tar(served.box.root / "data.tar", {"data/read.txt": b"fetched on open\n",
                                                   "data/unread.bin": os.urandom(1 << 20)})
    ref = publish(served, proxy, "lazy", top)
    image = json.loads(served.layers("inspect", ref))
    diff = Path(json.loads(served.layers("inspect", image["layers"][-1]))["dir"])
    reference = served.box.root / "lazy-reference"
    os.rename(diff, reference)
    sockets = Path(tempfile.mkdtemp(prefix="als-fetch-"))
    make_placeholder(reference, diff, sockets / "fetch.sock")
    fetcher = Fetcher(sockets / "fetch.sock", {diff: reference})
    fetcher.start()
    kernel = served.als.name == "kernel"
    try:
        served.layers("als", "add", "--mount-lazy", ref)    # again: the layer is lazy now
        base, lazy = layer_blobs(served, ref)
        assert {base, lazy} <= {p.name for p in served.als.iterdir()}
        view = os.readlink(served.als / lazy / "diff")
        agent = served.podman.agent     # the mount is in its mount namespace
        if kernel:
            assert agent.mounted(view, mounts.FSD_FSTYPE), view
        else:
            assert view == str(diff)

        proxy.reset()
        served.podman("pull", INSECURE, ref)
        assert len(proxy.blob_gets()) == 1, proxy.blob_gets()   # the config
        out = served.podman("run", *RUN_OPTS, "--rm", ref, "cat", "/data/read.txt").stdout
        assert out == "fetched on open\n"
        assert [path for _, path in fetcher.requests] == ["data/read.txt"]
        assert {layer for layer, _ in fetcher.requests} == {str(diff)}
        assert LAZY_XATTR in os.listxattr(diff / "data/unread.bin")
        assert LAZY_XATTR not in os.listxattr(diff / "data/read.txt")
        assert len(proxy.blob_gets()) == 1, "podman run fetched blobs"
        served.podman("rmi", ref)
        served.layers("als", "rm", ref)
        if kernel:
            assert not agent.mounted(view), f"{view} still mounted after als rm"
    finally:
        fetcher.stop()
        os.rmdir(sockets)


def big_first_rootfs(served: Served) -> Path:
    """The busybox rootfs as one layer tar whose first file is 12 MiB of
    noise, then a note of NOTE: the fetcher's background takes a layer's files
    in tar order (after the shell and what it loads), a batch at a time, and
    a batch holding only that file is the one a test holds at the proxy, so
    that the rest stays lazy until podman reads it."""
    served.rootfs()
    noise = served.box.dir("noise", owned=False)
    (noise / "0-big.bin").write_bytes(os.urandom(12 * MiB))
    (noise / "note.txt").write_text(NOTE)
    tar = served.box.root / "big-first.tar"
    subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-cf", str(tar),
                    "-C", str(noise), "0-big.bin", "note.txt",
                    "-C", str(served.box.root / "rootfs"), "."], check=True)
    tar.chmod(0o644)
    return tar


@pytest.mark.parametrize("served", ["fsd-rootful", "fsd-rootless", "kernel-rootful",
                                    "kernel-rootless"], indirect=True)
def test_podman_runs_a_lazily_pulled_estargz_image(served, proxy):
    """`push --compression-format estargz`, `pull --lazy`, `als add`: podman
    pulls no layer blob and its container reads the files it needs, fetched
    by the store on open (by podman's fsd, or for the kernel overlay by the
    store's read-only fsd mount), while the rest of the layer is still in
    the registry: its background fetch is held at the proxy meanwhile.  The
    note is the image's own (its other files the store may hold already from
    the other tests' images: a lazy pull takes those from it)."""
    kernel = served.als.name == "kernel"
    name = "estargz"
    served.layers("import", "-q", str(big_first_rootfs(served)), "--name", f"localhost/{name}:1")
    ref = f"{proxy.host}/als/{name}:1"
    pushed = json.loads(served.layers("push", "-q", f"localhost/{name}:1", ref, INSECURE,
                                      "--compression-format", "estargz", "--format", "json"))
    (blob,) = [layer["digest"] for layer in pushed["layers"]]
    size = sum(layer["size"] for layer in pushed["layers"])
    served.layers("rmi", f"localhost/{name}:1")
    # the background's range of `0-big.bin` (the fetcher's first, the shell and
    # what it loads, are smaller)
    proxy.stall, proxy.stall_once, proxy.stall_min = blob.split(":")[1], True, 4 * MiB
    try:
        pulled = json.loads(served.layers("pull", "-q", "--lazy", ref, INSECURE,
                                          "--format", "json"))
        assert [layer["outcome"] for layer in pulled["layers"]] == ["lazy"]
        served.layers("als", "add", *(["--mount-lazy"] if kernel else []), ref)
        assert blob in {p.name for p in served.als.iterdir()}
        assert any(line.endswith(f"{name}:1  1 layers, {int(kernel)} to the kernel, 1 lazy")
                   for line in served.layers("als", "ls").splitlines())
        assert wait_until(proxy.stalled.is_set, 30), "the background fetch did not start"

        served.podman("pull", INSECURE, ref)
        out = served.podman("run", *RUN_OPTS, "--rm", ref, "sh", "-c",
                            "cat /note.txt /lower/keep.txt && ls /lower").stdout
        assert out.splitlines() == [NOTE.strip(), "keep", "append.txt", "delete-dir",
                                    "delete-me.txt", "keep-link", "keep.txt", "link-src",
                                    "rename-dir"], out
        full = [r for r in proxy.requests if r.method == "GET" and r.path.endswith(blob)
                and r.status == 200]
        assert full == [], f"the layer blob was pulled whole: {full}"
        fetched = proxy.sent_bytes("GET", blob)    # the held response not yet counted
        assert fetched < size // 10, f"{fetched} of {size} bytes fetched before the output"
        diff = Path(json.loads(served.layers("inspect", json.loads(
            served.layers("inspect", ref))["layers"][0]))["dir"])
        assert layout.LAZY_XATTR in os.listxattr(diff / "0-big.bin")
        assert layout.LAZY_XATTR not in os.listxattr(diff / "note.txt")   # fetched on open
        print(f"\npodman ({served.als.name}) ran a lazily pulled image after {fetched} "
              f"of its {size} blob bytes")
    finally:
        proxy.release.set()
    served.podman("rmi", ref)
    served.layers("als", "rm", ref)
    served.stop_fetcher()
