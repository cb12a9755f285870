"""The lazy benchmark's shaped network (scripts/benchlib/shaper.py): bytes pass
unchanged both ways, Range requests reach the registry as they were sent, and
every request is delayed and every byte paid for at the link's rate. The
delay and the cap are checked through the proxy's own accounting and a
token bucket driven by a fake clock, never by timing a transfer."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.shaper import CHUNK, HeadError, Link, ShapedProxy, parse_head  # noqa: E402

BLOB = os.urandom(3 * CHUNK + 123)


class Upstream:
    """A registry stand-in: GET /blob (Range honoured with a 206), POST /echo
    (answers the sha256 of the body it got); records every request's headers."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict]] = []
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                up.seen.append(("GET", self.path, dict(self.headers)))
                rng = self.headers.get("Range")
                if rng:
                    start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
                    body, status = BLOB[start:end + 1], 206
                else:
                    body, status = BLOB, 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                up.seen.append(("POST", self.path, dict(self.headers)))
                if self.headers.get("Transfer-Encoding") == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    data = self.rfile.read(int(self.headers["Content-Length"]))
                body = hashlib.sha256(data).hexdigest().encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


def test_bytes_pass_unchanged_and_range_is_forwarded(upstream):
    # a tiny delay and a fast link: the test checks what passes, not when
    with ShapedProxy(upstream.host, delay=0.001, rate=1e9) as proxy:
        conn = http.client.HTTPConnection(proxy.host, timeout=30)
        conn.request("GET", "/blob")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, BLOB)
        # the same connection (keep-alive): the proxy finds the next request
        conn.request("GET", "/blob", headers={"Range": "bytes=70000-70099"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (206, BLOB[70000:70100])
        body = os.urandom(CHUNK + 7)
        conn.request("POST", "/echo", body=body)
        assert conn.getresponse().read() == hashlib.sha256(body).hexdigest().encode()
        conn.request("POST", "/echo", body=iter([body[:1000], body[1000:]]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        assert conn.getresponse().read() == hashlib.sha256(body).hexdigest().encode()
        conn.close()
        counters = proxy.counters()

    assert [(m, p) for m, p, _ in upstream.seen] == [("GET", "/blob"), ("GET", "/blob"),
                                                     ("POST", "/echo"), ("POST", "/echo")]
    assert "Range" not in upstream.seen[0][2]
    assert upstream.seen[1][2]["Range"] == "bytes=70000-70099"
    assert [(r.method, r.target, r.range) for r in counters.requests] == [
        ("GET", "/blob", None), ("GET", "/blob", "bytes=70000-70099"),
        ("POST", "/echo", None), ("POST", "/echo", None)]
    ats = [r.at for r in counters.requests]
    assert ats == sorted(ats) and ats[0] >= 0
    assert counters.connections == 1
    # bodies plus answer heads one way, bodies plus request heads the other
    assert counters.down > len(BLOB) + 100 + 2 * 64
    assert counters.up > 2 * len(body)
    assert proxy.errors == []


def test_a_connection_that_is_not_http_is_piped_as_it_is(upstream):
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40)   # a TLS ClientHello's start
    with ShapedProxy(upstream.host, delay=0.001, rate=1e9) as proxy:
        with socket.create_connection(proxy.host.split(":"), timeout=30) as s:
            s.sendall(hello)
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while data := s.recv(65536):
                answer += data
        counters = proxy.counters()
    # the stand-in registry saw the bytes and said they were no request
    # (http.server answers in HTTP/0.9 style: a body, no status line)
    assert b"Error code: 400" in answer, answer[:300]
    assert [(r.method, r.target) for r in counters.requests] == [("(not HTTP)", hello[:16].hex())]
    assert counters.up == len(hello)
    assert proxy.errors == []


def test_every_request_and_connection_is_delayed_and_every_byte_paced(upstream):
    with ShapedProxy(upstream.host, delay=0.002, rate=1e9) as proxy:
        for _ in range(2):
            conn = http.client.HTTPConnection(proxy.host, timeout=30)
            for _ in range(3):
                conn.request("GET", "/blob")
                assert conn.getresponse().read() == BLOB
            conn.close()
        counters = proxy.counters()
        proxy.reset()
        assert proxy.counters().down == 0 and proxy.counters().requests == []
    assert counters.connections == 2
    assert len(counters.requests) == 6
    # one delay per request and one per connection (its handshake)
    assert counters.delayed == pytest.approx(0.002 * (6 + 2))
    # every byte sent down went through the link's bucket: with it, at 1 GB/s,
    # the waits handed out cover what passed beyond the bucket's burst
    assert counters.down > 6 * len(BLOB)


def test_link_paces_bytes_at_its_rate_with_a_fake_clock():
    now = [100.0]
    link = Link(rate=1_000_000, burst=50_000, clock=lambda: now[0])
    for _ in range(100):                 # 10 MB in 100 KB pieces, sleeping as told
        now[0] += link.reserve(100_000)
    # the first 50 KB went at once (the burst), the rest at 1 MB/s
    assert now[0] - 100.0 == pytest.approx((10_000_000 - 50_000) / 1_000_000)
    assert link.waited == pytest.approx(now[0] - 100.0)


def test_link_is_shared_by_interleaved_senders_and_refills_only_up_to_burst():
    now = [0.0]
    link = Link(rate=1000, burst=100, clock=lambda: now[0])
    a = link.reserve(100)                # the burst
    b = link.reserve(500)                # a second sender queues behind the first
    c = link.reserve(500)                # and a third behind both
    assert (a, b, c) == (0.0, pytest.approx(0.5), pytest.approx(1.0))
    now[0] = 1000.0                      # a long idle spell gives back the burst, no more
    assert link.reserve(100) == 0.0
    assert link.reserve(1000) == pytest.approx(1.0)


def test_parse_head():
    method, target, headers = parse_head(b"GET /v2/x/blobs/sha256:ab HTTP/1.1\r\nHost: h\r\n"
                                         b"Range: bytes=0-50\r\n\r\n")
    assert (method, target, headers["range"], headers["host"]) == ("GET", "/v2/x/blobs/sha256:ab",
                                                                   "bytes=0-50", "h")
    with pytest.raises(HeadError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")
