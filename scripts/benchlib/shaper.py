"""A shaped network in front of a registry: a measuring instrument of the lazy
pulling benchmark (lazy.py), not part of the product.

    with ShapedProxy("127.0.0.1:5000", delay=0.020, rate=100e6 / 8) as proxy:
        ... clients talk to proxy.host ...
        proxy.counters()     # requests, bytes each way, so far
        proxy.reset()

Issue 17 wants its benchmark run as over a real network: 20 ms added to every
request and throughput capped at 100 Mbit/s. This kernel has tc's tbf and htb
but no netem, so the delay could not come from tc anyway; an HTTP-aware proxy
of our own gives both, and counts the bytes a client fetched at any instant
(what "bytes fetched before the first output" needs), which tc would not.

What it does to the traffic, and nothing more:
- every request waits `delay` seconds before it goes upstream (a new
  connection waits once more: the round trip of its TCP handshake);
- the bytes from the registry to the client share one token bucket of `rate`
  bytes per second (one link, whatever the number of connections; a burst of
  at most `burst` bytes after an idle spell); the bytes the other way share a
  second one (the link is full duplex);
- the bytes themselves pass unchanged both ways: request lines and headers
  (Range among them), bodies, answers. It reads request heads only to find
  where each request starts (Content-Length and chunked bodies are followed);
  answers are piped as they come, never parsed. A connection that does not
  start with a request (a client trying TLS first, as `--tls-verify=false`
  does before it falls back to plain HTTP) is delayed once and piped as is.

It runs an asyncio loop in a thread of the process that owns it; counters are
read from any thread. Loopback only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024


class Link:
    """A token bucket: `reserve(n)` takes n bytes' worth of tokens and says how
    long the caller must wait before sending them. Tokens may go negative: a
    sender that finds the bucket in debt waits until its own bytes are paid
    for, so concurrent senders queue in the order they came, and a sleep that
    overshoots loses nothing (the refill follows the clock, up to `burst`)."""

    def __init__(self, rate: float, burst: int = 2 * CHUNK, clock=time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("a link needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.waited = 0.0      # total seconds of waits handed out (for the report and the tests)

    def reserve(self, n: int) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        self.waited += wait
        return wait


@dataclass
class Request:
    method: str
    target: str
    range: str | None       # the Range header as forwarded, if any
    at: float = 0.0         # when it came, seconds since the counters' last reset


@dataclass
class Counters:
    """What passed through so far (a snapshot)."""
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    down: int = 0           # bytes registry -> client (heads and bodies)
    up: int = 0             # bytes client -> registry
    delayed: float = 0.0    # seconds of added delay handed out
    throttled: float = 0.0  # seconds of waits the down link handed out

    @property
    def ranged(self) -> list[Request]:
        return [r for r in self.requests if r.range]


class HeadError(Exception):
    """A request head the proxy cannot follow (so it cannot find the next one)."""


class ShapedProxy:
    def __init__(self, upstream: str, delay: float = 0.020, rate: float = 100e6 / 8,
                 burst: int = 2 * CHUNK, listen: str = "127.0.0.1"):
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.delay = delay
        self.rate = rate
        self.burst = burst
        self.listen = listen
        self.host: str | None = None   # "127.0.0.1:PORT" once started
        self.errors: list[str] = []    # connections that ended in an error of the proxy's own
        self._lock = threading.Lock()
        self._counters = Counters()
        self._reset_at = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._down = self._up = None

    # -- the owner's side (any thread) ---------------------------------------------------

    def start(self) -> "ShapedProxy":
        started = threading.Event()
        failed: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()'s caller
                failed.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="shaped-proxy", daemon=True)
        self._thread.start()
        started.wait(30)
        if failed:
            raise failed[0]
        if self.host is None:
            raise RuntimeError("the shaped proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._thread = None

    def __enter__(self) -> "ShapedProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def counters(self) -> Counters:
        with self._lock:
            c = self._counters
            return Counters(list(c.requests), c.connections, c.down, c.up, c.delayed,
                            self._down.waited - c.throttled)

    def reset(self) -> None:
        with self._lock:
            # throttled is kept as the down link's total at the reset, subtracted on reading
            self._counters = Counters(throttled=self._down.waited if self._down else 0.0)
            self._reset_at = time.monotonic()

    # -- the loop's side -------------------------------------------------------------------

    async def _open(self) -> None:
        self._down = Link(self.rate, self.burst)
        self._up = Link(self.rate, self.burst)
        self._server = await asyncio.start_server(self._serve, self.listen, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.host = f"{self.listen}:{port}"

    async def _close(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _since(self) -> float:
        return time.monotonic() - self._reset_at

    def _count(self, **add) -> None:
        with self._lock:
            for k, v in add.items():
                if k == "request":
                    self._counters.requests.append(v)
                else:
                    setattr(self._counters, k, getattr(self._counters, k) + v)

    async def _wait_delay(self) -> None:
        self._count(delayed=self.delay)
        await asyncio.sleep(self.delay)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._count(connections=1)
        upstream_w = None
        try:
            await self._wait_delay()   # the handshake's round trip
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            down = asyncio.create_task(self._pipe(upstream_r, client_w, self._down, "down"))
            try:
                await self._requests(client_r, upstream_w)
                upstream_w.write_eof()
                await down
            finally:
                down.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # a side hung up: so does the other
        except HeadError as exc:
            self.errors.append(str(exc))
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    w.close()

    async def _send(self, data: bytes, writer: asyncio.StreamWriter, link: Link, counter: str) -> None:
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            wait = link.reserve(len(piece))
            if wait:
                await asyncio.sleep(wait)
            writer.write(piece)
            await writer.drain()
            self._count(**{counter: len(piece)})

    async def _pipe(self, reader, writer, link: Link, counter: str) -> None:
        """Answers, as they come: never parsed, only paced and counted."""
        while data := await reader.read(CHUNK):
            await self._send(data, writer, link, counter)
        writer.write_eof()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward requests one by one, each after the delay. A connection
        that does not open with an HTTP request (a client trying TLS first on
        a plain-HTTP registry) is delayed once and then piped as it comes."""
        incoming = Incoming(reader)
        while True:
            head = await incoming.head()
            if head is None:
                return  # the client closed between requests
            if isinstance(head, Raw):
                self._count(request=Request("(not HTTP)", head.data[:16].hex(), None, self._since()))
                await self._wait_delay()
                await self._send(head.data, writer, self._up, "up")
                while data := await incoming.some():
                    await self._send(data, writer, self._up, "up")
                return
            method, target, headers = parse_head(head)
            self._count(request=Request(method, target, headers.get("range"), self._since()))
            await self._wait_delay()
            await self._send(head, writer, self._up, "up")
            if headers.get("transfer-encoding", "").lower().endswith("chunked"):
                while True:
                    line = await incoming.line()
                    await self._send(line, writer, self._up, "up")
                    try:
                        size = int(line.split(b";")[0].strip(), 16)
                    except ValueError:
                        raise HeadError("a bad chunk size in a chunked body") from None
                    if size == 0:
                        while (line := await incoming.line()) != b"\r\n":   # trailers
                            await self._send(line, writer, self._up, "up")
                        await self._send(line, writer, self._up, "up")
                        break
                    await self._send(await incoming.exactly(size + 2), writer, self._up, "up")
            else:
                try:
                    left = int(headers.get("content-length", "0"))
                except ValueError:
                    raise HeadError(f"a bad Content-Length in {method} {target}") from None
                while left > 0:
                    data = await incoming.some(left)
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    await self._send(data, writer, self._up, "up")


@dataclass
class Raw:
    data: bytes    # what came first on a connection that does not speak HTTP/1


class Incoming:
    """A client's bytes, buffered so that request heads can be told from the
    bodies after them (and from what is not HTTP at all)."""

    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.reader.read(CHUNK)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def head(self) -> bytes | Raw | None:
        """The next request head; Raw when the bytes are not a request line's
        start; None at the end of the stream before one."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if self.buf and not (self.buf[:1].isalpha() and self.buf[:1].isupper()):
                return Raw(self._take(len(self.buf)))
            if len(self.buf) > MAX_HEAD:
                raise HeadError(f"a request head longer than {MAX_HEAD} bytes")
            try:
                await self._fill()
            except asyncio.IncompleteReadError:
                if self.buf:
                    raise HeadError(f"a request head cut short: {bytes(self.buf[:100])!r}") from None
                return None
        return self._take(end + 4)

    async def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill()
        return self._take(end + 2)

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        return self._take(n)

    async def some(self, most: int = CHUNK) -> bytes:
        """Up to `most` bytes, at least one; b"" only from some() at the end of the stream."""
        if not self.buf:
            try:
                await self._fill()
            except asyncio.IncompleteReadError:
                return b""
        return self._take(min(most, len(self.buf)))


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-case names) of an HTTP/1.x request head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HeadError(f"not an HTTP/1 request line: {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HeadError(f"a malformed header line: {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers
