"""A lazy layer for tests of fsd, and a fetcher that completes it.

`make_placeholder(reference, layer, socket)` writes, from a reference tree, the
placeholder tree a lazy pull leaves in the store: every directory, symlink,
hard link and xattr as in the reference; every regular file with content at its
full size with no data (sparse), carrying `user.strata.lazy`; owners, modes and
times as in the reference; the layer root carrying `user.strata.lazy` = the
fetch socket's path.

`Fetcher(socket, references)` is a real fetcher on a unix socket, following
the protocol of fsd/lazy.py's docstring, in a thread per connection: a request
for (layer, path) fills the file from references[layer]/path in place, fsyncs
it, restores its times and removes the xattr last, then answers {"ok": true}.
A test can make it fail (`fail = "reason"`), answer ok without completing
(`lie = True`), hold every request until `release()` (`hold()`; `wait_held(n)`
returns once n requests are held), or be gone (`stop()`, and `start()` again).
`requests` lists every (layer, path) asked, in order.

`lazy_layer(root)` puts it together on a sample tree (`write_sample`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socketserver
import stat
import tempfile
import threading
from pathlib import Path

LAZY_XATTR = "user.strata.lazy"
A = b"alpha\n" * 1000
B = bytes(range(256)) * (3 << 12)  # 3 MiB: fsd copies it up in a worker thread
H = b"hard-linked\n" * 100


def write_sample(root: Path) -> None:
    """a (with xattr user.test=kept), d/b, h1 = d/h2 (hard links), an empty
    file, d/link -> ../a."""
    (root / "d").mkdir(parents=True)
    (root / "a").write_bytes(A)
    os.setxattr(root / "a", "user.test", b"kept")
    (root / "d/b").write_bytes(B)
    (root / "h1").write_bytes(H)
    os.link(root / "h1", root / "d/h2")
    (root / "empty").write_bytes(b"")
    os.symlink("../a", root / "d/link")


@contextlib.contextmanager
def lazy_layer(root: Path):
    """Yield (layer, fetcher): root/lower, the lazy placeholder of the sample
    tree root/reference, and its fetcher, running.  The socket is in a short
    temporary directory (a unix socket's path has at most 107 bytes), and
    anyone may connect to it (an fsd run by an unprivileged user)."""
    reference, layer = root / "reference", root / "lower"
    write_sample(reference)
    sockets = Path(tempfile.mkdtemp(prefix="fsd-lazy-"))
    sockets.chmod(0o755)
    make_placeholder(reference, layer, sockets / "fetch.sock")
    fetcher = Fetcher(sockets / "fetch.sock", {layer: reference})
    fetcher.start()
    os.chmod(fetcher.socket, 0o666)
    try:
        yield layer, fetcher
    finally:
        fetcher.stop()
        shutil.rmtree(sockets)


def make_placeholder(reference: Path, layer: Path, socket: Path) -> None:
    """The placeholder tree of `reference` at `layer` (made here), lazy with `socket`."""
    seen: dict[int, Path] = {}  # st_ino -> the first name of a hard-linked file
    layer.mkdir(parents=True)
    for src in sorted(reference.rglob("*")):
        dst = layer / src.relative_to(reference)
        st = src.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_ino in seen:
            os.link(seen[st.st_ino], dst)
            continue
        if stat.S_ISDIR(st.st_mode):
            dst.mkdir()
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            with open(dst, "wb") as f:
                f.truncate(st.st_size)
            if st.st_size:
                os.setxattr(dst, LAZY_XATTR, b"")
            seen[st.st_ino] = dst
        else:
            os.mknod(dst, st.st_mode, st.st_rdev)
        for name in os.listxattr(src, follow_symlinks=False):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    for src in [reference, *sorted(reference.rglob("*"), reverse=True)]:
        dst = layer / src.relative_to(reference)
        st = src.lstat()
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    os.setxattr(layer, LAZY_XATTR, os.fsencode(socket))


class Fetcher:
    """See the module's docstring."""

    def __init__(self, socket: Path, references: dict[Path, Path]):
        self.socket = socket
        self.references = {os.path.realpath(k): Path(v) for k, v in references.items()}
        self.requests: list[tuple[str, str]] = []
        self.fail: str | None = None
        self.lie = False
        self._released = threading.Event()
        self._released.set()
        self._held = threading.Semaphore(0)
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        fetcher = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                fetcher._serve(self.rfile, self.wfile)

        self._server = socketserver.ThreadingUnixStreamServer(os.fspath(self.socket), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and remove the socket: the fetcher is gone."""
        if self._server is None:
            return
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None
        os.unlink(self.socket)

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def wait_held(self, count: int = 1, timeout: float = 30.0) -> None:
        for _ in range(count):
            assert self._held.acquire(timeout=timeout), "no request reached the fetcher"

    def count(self, path: str) -> int:
        """How many requests named path."""
        return sum(1 for _, p in self.requests if p == path)

    def _serve(self, rfile, wfile) -> None:
        request = json.loads(rfile.readline())
        layer, path = request["layer"], request["path"]
        self.requests.append((layer, path))
        if not self._released.is_set():
            self._held.release()
            self._released.wait()
        if self.fail is not None:
            answer = {"ok": False, "error": self.fail}
        else:
            if not self.lie:
                self._complete(Path(layer), os.fsencode(path))
            answer = {"ok": True}
        try:
            wfile.write(json.dumps(answer).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the asker gave up

    def _complete(self, layer: Path, rel: bytes) -> None:
        target = os.path.join(os.fsencode(layer), rel)
        if LAZY_XATTR not in os.listxattr(target):
            return
        st = os.lstat(target)
        with open(os.path.join(os.fsencode(self.references[os.fspath(layer)]), rel), "rb") as src, \
                open(target, "r+b") as dst:
            dst.write(src.read())
            dst.flush()
            os.fsync(dst.fileno())
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.removexattr(target, LAZY_XATTR)
