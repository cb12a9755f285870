"""Lazy layers: lowers whose file contents arrive on demand, from the store's
fetcher (`layers pull --lazy`).

The store's side (ondisk.LAZY_XATTR): a lazy layer's root carries
`user.strata.lazy` = the path of the fetch socket while any file in it is
incomplete; an incomplete regular file exists with its full size and carries
the xattr until the fetcher has written its content in place, and the fetcher
removes it last.  So fsd never opens a file's content while it carries the
xattr: `LazyLayers.open` is how fsd opens a lower regular file's content, to
read it or to copy it up.  In a lazy layer it looks at the xattr of the
descriptor it opened (one flistxattr); when present it asks the fetcher, waits
on the trio loop (other requests go on; concurrent opens of one file, by any of
its names, share one request) and opens again, checking again.

The fetcher's protocol, one request per connection, newline-terminated JSON:
    {"layer": "<the lowerdir, absolute, symlinks resolved>", "path": "<relative, / separated>"}
    answered {"ok": true} (the file is complete now) or {"ok": false, "error": "<one line>"}
Paths are os.fsdecode'd (surrogateescape for bytes that are not UTF-8); a file
with several names is asked for by the name fsd reached it by, any of them.

Failure (no fetcher, an error answer, no answer within FETCH_TIMEOUT, the xattr
still there): EIO for that open, and one log line naming the layer, the path
and the reason; the same failure again for the same file is not logged again
until a fetch of it succeeds.  The next open asks again, so a fetcher that
comes back serves it.

A layer whose root has no xattr at mount is not lazy: opening its files costs
one dict lookup more than `Layer.open`.  The store removes the root's xattr
once every file is complete; fsd looks again every ROOT_RECHECK opens of
complete files, and from then on the layer is not lazy either.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os

import trio

from .errors import fail
from .layer import Layer
from .ondisk import LAZY_XATTR
from .watchdog import waiting

log = logging.getLogger("fsd")

FETCH_TIMEOUT = 900.0  # seconds: a big file over a slow network, not a hung fetcher
ANSWER_MAX = 1 << 16  # bytes of the fetcher's answer line
ROOT_RECHECK = 1000  # opens of complete files of a lazy layer between two looks at its root
SUN_PATH_MAX = 107  # bytes of a unix socket address; a store deep in a tree has longer paths
_LAZY_NAME = os.fsdecode(LAZY_XATTR)


def incomplete(fd: int) -> bool:
    """Whether the file open on fd still waits for its content.  (A listxattr:
    a file with no xattrs, the common case, costs a third of a getxattr's
    ENODATA exception.)"""
    try:
        return _LAZY_NAME in os.listxattr(fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return False
        raise


@dataclasses.dataclass(eq=False)
class _Fetch:
    """One request to the fetcher, shared by the opens that wait for it."""

    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: str | None = "the request that asked for it was cancelled"  # None: the fetcher says complete


class LazyLayers:
    """The lazy lowers of one mount, found at mount, and the fetches under way."""

    def __init__(self, lowers: list[Layer]):
        self.sockets: dict[int, bytes] = {}  # lower index -> its fetcher's socket path
        for layer in lowers:
            socket = layer.try_getxattr(b"", LAZY_XATTR)
            if socket:
                self.sockets[layer.index] = socket
        self._until_recheck = dict.fromkeys(self.sockets, ROOT_RECHECK)  # lower index -> opens
        self._fetches: dict[tuple[int, int], _Fetch] = {}  # (lower index, st_ino) -> under way
        self._logged: dict[tuple[int, bytes], str] = {}  # failures logged, until one succeeds

    async def open(self, layer: Layer, rel: bytes, flags: int) -> int:
        """`layer.open(rel, flags)` of a lower regular file's content, complete:
        in a lazy layer, fetched first when the file carries the xattr.  EIO
        (logged) when it cannot be completed."""
        fd = layer.open(rel, flags)
        socket = self.sockets.get(layer.index)
        if socket is None:
            return fd
        try:
            if not incomplete(fd):
                self._opened_complete(layer)
                return fd
            ino = os.fstat(fd).st_ino
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        error = await self._fetch(socket, layer, rel, ino)
        if error is None:
            fd = layer.open(rel, flags)
            if not incomplete(fd):
                self._logged.pop((layer.index, rel), None)
                return fd
            os.close(fd)
            error = "the fetcher answered ok but the file still carries " + LAZY_XATTR.decode()
        if self._logged.get((layer.index, rel)) != error:
            self._logged[(layer.index, rel)] = error
            log.error("lazy layer %s: %r could not be fetched: %s", layer.path, rel, error)
        raise fail(errno.EIO, rel)

    def _opened_complete(self, layer: Layer) -> None:
        """Count an open of a complete file; every ROOT_RECHECK of them, see
        whether the whole layer is complete now."""
        left = self._until_recheck[layer.index] - 1
        self._until_recheck[layer.index] = left or ROOT_RECHECK
        if not left and layer.try_getxattr(b"", LAZY_XATTR) is None:
            del self.sockets[layer.index]
            log.info("lazy layer %s is complete", layer.path)

    async def complete(self, layer: Layer, rel: bytes) -> None:
        """Have a lower regular file complete (see `open`), for a look at what
        it takes on disk (quota) before its data is copied."""
        if layer.index in self.sockets:
            os.close(await self.open(layer, rel, os.O_RDONLY | os.O_NOATIME))

    def open_in_thread(self, layer: Layer, rel: bytes, flags: int) -> int:
        """`open` from a worker thread started by trio.to_thread: an incomplete
        file is fetched by `open` on the trio loop."""
        fd = layer.open(rel, flags)
        if layer.index not in self.sockets or not incomplete(fd):
            return fd
        os.close(fd)
        return trio.from_thread.run(self.open, layer, rel, flags)

    async def _fetch(self, socket: bytes, layer: Layer, rel: bytes, ino: int) -> str | None:
        """Ask the fetcher to complete file ino of layer (at rel), or wait for
        the request under way for it; None when the fetcher answered ok, or
        why not."""
        key = (layer.index, ino)
        fetch = self._fetches.get(key)
        with waiting(f"a lazy fetch of {rel!r} in lower layer {layer.index}"):
            if fetch is not None:
                await fetch.done.wait()
                return fetch.error
            fetch = self._fetches[key] = _Fetch()
            try:
                fetch.error = await self._ask(socket, layer.path, rel)
            finally:
                del self._fetches[key]
                fetch.done.set()
        return fetch.error

    @staticmethod
    async def _ask(socket: bytes, layer_path: str, rel: bytes) -> str | None:
        """One request to the fetcher at socket: None if it answered ok, or why not."""
        import json  # on first use: not at every daemon's start
        request = json.dumps({"layer": layer_path, "path": os.fsdecode(rel)}) + "\n"
        answer = b""
        with trio.move_on_after(FETCH_TIMEOUT):
            try:
                async with await _connect(socket) as stream:
                    await stream.send_all(request.encode())
                    while not answer.endswith(b"\n") and len(answer) < ANSWER_MAX:
                        data = await stream.receive_some(ANSWER_MAX)
                        if not data:
                            break
                        answer += data
            except OSError as exc:
                return f"fetcher at {os.fsdecode(socket)}: {exc.strerror or exc}"
            try:
                reply = json.loads(answer)
            except ValueError:
                return f"fetcher at {os.fsdecode(socket)} answered {answer[:200]!r}"
            if isinstance(reply, dict) and reply.get("ok") is True:
                return None
            if isinstance(reply, dict) and reply.get("ok") is False:
                return " ".join(str(reply.get("error", "no reason given")).split())  # one line
            return f"fetcher at {os.fsdecode(socket)} answered {answer[:200]!r}"
        return f"no answer from the fetcher at {os.fsdecode(socket)} within {FETCH_TIMEOUT:.0f} s"


async def _connect(socket: bytes) -> trio.SocketStream:
    """A stream to the fetcher's socket at `socket`, however long the path:
    beyond what a socket address holds, through /proc/self/fd/N of its
    directory (opened O_PATH, closed once connected)."""
    if len(socket) <= SUN_PATH_MAX:
        return await trio.open_unix_socket(socket)
    parent, name = os.path.split(socket)
    dirfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return await trio.open_unix_socket(b"/proc/self/fd/%d/%s" % (dirfd, name))
    finally:
        os.close(dirfd)
