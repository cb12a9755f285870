"""A real registry for tests, and a proxy in front of it that counts and breaks.

- `ensure_installed(package, program)`: apt-get installs a Debian package
  when its program is missing (once per machine; skips the test when that
  cannot be done).
- `Registry(tmp)`: Debian's `docker-registry` (distribution 2.8) serving on
  127.0.0.1:<free port> with its storage, config and log in `tmp`;
  `htpasswd=` turns on its Basic auth, `tls=(cert, key)` HTTPS.  `stop()`
  kills it; `blob_path(digest)` is where it keeps a blob.
- `Proxy(upstream)`: a stdlib HTTP server on 127.0.0.1 forwarding every
  request to the registry and recording it (`requests`: method, path,
  status, body bytes sent to the client).  Faults: `fail_with` (answer
  every request with this status), `stall` (a blob digest: send its
  headers and half its body, then hold the connection until released or
  `drop` it; `stall_skip` GETs of it pass first, and with `stall_once`
  only one is held; with `stall_min`, only a GET answered with at least
  that many bytes counts), `bearer` (require a token from the proxy's own `/token`,
  which wants Basic `user:password`), `ignore_range` (drop the `Range`
  header, as a registry without range support would: it answers 200).
Only loopback addresses are used; every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

START_TIMEOUT = 15.0


def ensure_installed(package: str, program: str) -> str:
    """The program's path; apt-get installs `package` when it is missing."""
    found = shutil.which(program)
    if found:
        return found
    with open("/tmp/strata-test-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which(program)
        if found:
            return found
        if os.geteuid() != 0:
            pytest.skip(f"{program} is missing ({package}) and installing needs root")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                           timeout=300)
            p = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                               capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot install {package}: {e}")
        found = shutil.which(program)
        if not found:
            pytest.skip(f"cannot install {package}: {p.stderr.strip()[-300:]}")
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = START_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def make_cert(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl): (cert, key)."""
    cert, key = directory / "registry.crt", directory / "registry.key"
    openssl = ensure_installed("openssl", "openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{name}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (apache2-utils' htpasswd, else python's crypt)."""
    exe = shutil.which("htpasswd")
    if exe:
        out = subprocess.run([exe, "-nbB", user, password], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        return out.strip()
    import crypt  # deprecated, still in 3.11/3.12
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}"


class Registry:
    def __init__(self, tmp: Path, htpasswd: str | None = None,
                 tls: tuple[Path, Path] | None = None):
        self.exe = ensure_installed("docker-registry", "docker-registry")
        self.dir = Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.dir / "data"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = self.dir / "registry.log"
        lines = ["version: 0.1",
                 "log:", "  level: info", "  accesslog:", "    disabled: false",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
                 "  delete:", "    enabled: true",
                 "  maintenance:", "    uploadpurging:", "      enabled: false",
                 "http:", f"  addr: {self.host}", f"  secret: {secrets.token_hex(16)}"]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            pw = self.dir / "htpasswd"
            pw.write_text(htpasswd + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: strata-test", f"    path: {pw}"]
        self.config = self.dir / "config.yml"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Registry":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "serve", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if not wait_for_port(self.port):
            self.stop()
            raise RuntimeError(f"docker-registry did not listen on {self.host}:\n"
                               + self.log.read_text()[-2000:])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2]
                / hexd / "data")


@dataclass
class Seen:
    method: str
    path: str
    status: int
    sent: int                       # body bytes sent to the client


class Proxy:
    def __init__(self, upstream: str, port: int | None = None):
        self.upstream = upstream
        self.connections: set = set()
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.fail_with: int | None = None
        self.stall: str | None = None          # a blob digest to stall
        self.stall_skip = 0                    # GETs of it that pass first
        self.stall_once = False                # hold only one GET of it
        self.stall_min = 0                     # bytes a GET's answer has to count
        self._stall_seen = 0
        self.stalled = threading.Event()       # set once a stall began
        self.release = threading.Event()       # ends a stall: the rest is sent
        self.drop = threading.Event()          # ends a stall: the connection is cut
        self.bearer: tuple[str, str] | None = None
        self.ignore_range = False
        self.tokens: set[str] = set()
        self.token_requests: list[dict] = []
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Proxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the registry is gone."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns, self.connections = list(self.connections), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def count(self, method: str, contains: str = "") -> int:
        with self.lock:
            return sum(1 for s in self.requests if s.method == method and contains in s.path)

    def blob_gets(self) -> list[str]:
        """Digests of the blobs GET (not HEAD) answered with content."""
        with self.lock:
            return [s.path.rsplit("/", 1)[-1].split("?")[0] for s in self.requests
                    if s.method == "GET" and "/blobs/sha256:" in s.path
                    and s.status in (200, 206)]

    def sent_bytes(self, method: str = "GET", contains: str = "/blobs/") -> int:
        with self.lock:
            return sum(s.sent for s in self.requests if s.method == method
                       and contains in s.path)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def _record(self, h, status: int, sent: int) -> None:
        with self.lock:
            self.requests.append(Seen(h.command, h.path, status, sent))

    def _reply(self, h, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        # recorded first: a client that has its answer may end, and its test
        # count the requests, before this thread gets to run again
        self._record(h, status, len(body))
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h) -> None:
        with self.lock:
            self.connections.add(h.connection)
        length = int(h.headers.get("Content-Length") or 0)
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(h.rfile)
        else:
            body = h.rfile.read(length) if length else b""
        if h.path.startswith("/token"):
            return self._token(h)
        if self.fail_with is not None:
            return self._reply(h, self.fail_with, b'{"errors":[{"code":"UNAVAILABLE",'
                                                  b'"message":"injected failure"}]}',
                               {"Content-Type": "application/json"})
        if self.bearer is not None:
            auth = h.headers.get("Authorization", "")
            if not (auth.startswith("Bearer ") and auth[7:] in self.tokens):
                repo = h.path.split("/")[2] if h.path.count("/") > 2 else ""
                scope = f',scope="repository:{repo}:pull"' if repo else ""
                return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                    "WWW-Authenticate": f'Bearer realm="http://{self.host}/token",'
                                        f'service="strata-test"{scope}',
                    "Content-Type": "application/json"})
        dropped = ("authorization", "connection", "transfer-encoding") \
            + (("range",) if self.ignore_range else ())
        headers: dict[str, str] = {}
        for k, v in h.headers.items():   # a header sent on several lines (Accept) is one list
            if k.lower() not in dropped:
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read() if h.command != "HEAD" else b""
        finally:
            conn.close()
        h.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() in ("connection", "transfer-encoding", "keep-alive"):
                continue
            h.send_header(k, v)
        if r.getheader("Content-Length") is None:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command == "HEAD":
            return self._record(h, r.status, 0)
        if self.stall and h.command == "GET" and h.path.endswith(self.stall) \
                and r.status in (200, 206) and len(data) >= self.stall_min \
                and self._stall_now():
            half = len(data) // 2
            h.wfile.write(data[:half])
            h.wfile.flush()
            self.stalled.set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self.release.is_set():
                if self.drop.wait(0.05):
                    self._record(h, r.status, half)
                    h.close_connection = True
                    with contextlib.suppress(OSError):
                        h.connection.shutdown(socket.SHUT_RDWR)
                    return
            h.wfile.write(data[half:])
            return self._record(h, r.status, len(data))
        h.wfile.write(data)
        self._record(h, r.status, len(data))

    def _stall_now(self) -> bool:
        with self.lock:
            self._stall_seen += 1
            return self._stall_seen > self.stall_skip \
                and not (self.stall_once and self.stalled.is_set())

    def _token(self, h) -> None:
        auth = h.headers.get("Authorization", "")
        query = h.path.split("?", 1)[1] if "?" in h.path else ""
        self.token_requests.append({"query": query, "basic": auth.startswith("Basic ")})
        want = None
        if self.bearer:
            want = "Basic " + base64.b64encode(":".join(self.bearer).encode()).decode()
        if auth != want:
            return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                               {"Content-Type": "application/json"})
        token = secrets.token_hex(16)
        self.tokens.add(token)
        self._reply(h, 200, json.dumps({"token": token, "expires_in": 300}).encode(),
                    {"Content-Type": "application/json"})


def _read_chunked(f) -> bytes:
    out = bytearray()
    while True:
        size = int(f.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            f.readline()
            return bytes(out)
        out += f.read(size)
        f.readline()
