"""The store's fetcher: completes lazy layers (lazylayer.py), on request and
in the background.

One process per store, `layers fetcher`, started detached by `pull --lazy`
and by the mount of a container with lazy layers
(`lazylayer.start_fetcher`).  It holds the flock of the runroot's
`fetcher.pid` for its life (a second one exits at once), listens on
`fetcher.sock` (bound under a temp name and renamed into place once it
listens), and exits when no lazy layer is left to complete and no request
has come for IDLE seconds.  A layer whose completion failed (registry gone,
a chunk failing its digest, the rebuilt tar not the diffID) keeps its
error in its record and stays lazy: the next pull or mount of an image
holding it starts a fetcher, or tells the running one
(`lazylayer.RETRY_SIGNAL`), and
the error is cleared and the layer tried again.

Requests, one per connection, a JSON line each way (LAZY-CONTRACT.md):
    {"layer": "<absolute path of a layer's diff dir>", "path": "<relative path>"}
    → {"ok": true} once the file is complete (also when it already was),
      {"ok": false, "error": "<one line>"} otherwise.
Requests for one file, and the background work, share one fetch: a future
per file (`_fetch`).  A request also fetches, in the same range, the
incomplete files stored right next to its file in the blob (READ_AROUND
bytes each side) that no fetch has taken; and when its file is an ELF
program or library, the interpreter and libraries it loads (elfdeps.py),
at once and unasked.  Every failure is one line in
`fetcher.log` naming the layer, the file and the blob range.

The background work first fetches, in each lazy layer, what a container's
start opens first (`_start_set`): the program the layer's images run by
default (Entrypoint, else Cmd, looked up on their PATH) and the shell
(`bin/sh`: a `sh -c` command, an entrypoint script), then the interpreter
and libraries these load (elfdeps.py), several ranges in flight, before a
container asks for them one round trip after the other.  Then it takes
each lazy layer in turn: its incomplete files in
tar order, a step of blob bytes at a time (about one range request: from
MIN_BATCH after a request, doubling up to BATCH), each
started once requests have been quiet for a moment (`_wait_quiet`), the record's
`fetched` brought up to date after each batch, then `lazylayer.finish` (the
exact tar rebuilt and checked against the diffID; the tar-split kept; the
root's mark removed) and the record made an ordinary layer's.  A layer
removed meanwhile (rmi, prune) is dropped between two batches; what is
written into its moved dir goes with it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterator

from . import bundle, elfdeps, fsutil, layout, lazylayer
from .digest import Digest
from .errors import BadReference, LayersError, LayerUnknown, UsageError
from .records import Layer, LazySource, replace
from .registry.client import RegistryClient
from .registry.session import blob_client
from .storecore import StoreCore

IDLE = 30.0                # seconds without work or request before exiting
QUIET = 0.25               # seconds without a request before a background range…
MAX_PAUSE = 2.0            # …or this long waiting for such a quiet
# Blob bytes of one background step: about one range request.  A request for
# a file in the step under way waits for all of it, so a step starts at
# MIN_BATCH and doubles while no request comes, up to BATCH; a request brings
# it back to MIN_BATCH (a container starting reads file after file).
BATCH = lazylayer.MAX_RANGE
MIN_BATCH = 256 << 10
# Blob bytes of the lazy files stored next to a requested one, on each side,
# fetched with it in its range request (`LayerIndex.neighbours`): a round trip
# costs 20 ms or more, 64 KiB 5 ms at 100 Mbit/s.
READ_AROUND = 64 << 10
SHELL = "bin/sh"            # in every start set (`_start_set`)
REQUEST_LIMIT = 1 << 16    # bytes of one request line
READ_TIMEOUT = 30.0        # for a client to send its request

log = logging.getLogger("layers.fetcher")


@dataclasses.dataclass
class _Lazy:
    """A lazy layer the fetcher has loaded: its TOC's index, how to read its
    blob, the blob bytes received and not yet in its record."""
    id: Digest
    diff: str
    index: lazylayer.LayerIndex
    read_range: Callable[[int, int], bytes]
    received: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def count(self, n: int) -> None:
        with self.lock:
            self.received += n

    def take_received(self) -> int:
        with self.lock:
            n, self.received = self.received, 0
            return n


class Fetcher:
    def __init__(self, store: StoreCore):
        self.store = store
        self.options = store.extract_options()
        self.lock = threading.Lock()            # the tables below
        self.pending: dict[tuple[Digest, str], Future] = {}
        self.loaded: dict[Digest, _Lazy] = {}
        self.clients: dict[tuple[str, bool, str | None], RegistryClient] = {}
        self.abort = threading.Event()
        self.active = 0                         # requests being answered
        self.retry = threading.Event()          # RETRY_SIGNAL came: clear the errors
        self.last_request = time.monotonic()
        self.requests = 0                       # accepted so far
        self.started: set[Digest] = set()       # layers whose start set was fetched

    # -- the process ---------------------------------------------------------------

    def run(self) -> int:
        """Serve until no lazy layer is left (module doc); 0, also when
        another fetcher of the store runs."""
        paths = self.store.paths
        os.makedirs(paths.runroot, mode=0o700, exist_ok=True)
        # before the pid file is ours: a pull may signal us from then on
        signal.signal(lazylayer.RETRY_SIGNAL, lambda *_: self.retry.set())
        pidfd = os.open(paths.fetcher_pid, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(pidfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            os.ftruncate(pidfd, 0)
            os.write(pidfd, f"{os.getpid()}\n".encode())
            self._retry_failed()
            try:
                while True:
                    listener = self._listen()
                    threading.Thread(target=self._accept, args=(listener,),
                                     daemon=True).start()
                    try:
                        self._complete_all()
                    finally:
                        fsutil.remove_file(paths.fetcher_socket)
                        listener.close()
                        self._wait_requests()
                    # Leave only if no layer to complete came meanwhile, and
                    # let go of the pid file in the same hold of the store
                    # lock: a pull publishing one either is seen here or, after
                    # us, finds no fetcher and starts one.
                    with self.store.lock:
                        if not self._to_complete():
                            os.close(pidfd)
                            pidfd = -1
                            return 0
            finally:
                self.abort.set()
                for client in self.clients.values():
                    client.close()
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _listen(self) -> socket.socket:
        path = self.store.paths.fetcher_socket
        tmp = path + ".new"
        fsutil.remove_file(tmp)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with _short_address(tmp) as address:
            listener.bind(address)
        listener.listen(64)
        os.rename(tmp, path)
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return                          # closed: the fetcher is leaving
            with self.lock:
                self.active += 1
                self.requests += 1
                self.last_request = time.monotonic()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _wait_requests(self, bound: float = READ_TIMEOUT) -> None:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            with self.lock:
                if not self.active:
                    return
            time.sleep(0.05)

    # -- requests ------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(READ_TIMEOUT)
                line = _read_line(conn)
                try:
                    self._answer(line)
                    reply = {"ok": True}
                except LayersError as e:
                    reply = {"ok": False, "error": str(e)}
                except OSError as e:
                    reply = {"ok": False, "error": f"{e.strerror or e}"
                                                   f"{': ' + str(e.filename) if e.filename else ''}"}
                except Exception as e:          # a bug: said, logged, the fetcher lives on
                    log.exception("internal error answering %r", line[:200])
                    reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass                                # the client went away
        finally:
            with self.lock:
                self.active -= 1
                self.last_request = time.monotonic()

    def _answer(self, line: bytes) -> None:
        """Make the file a request names complete; LayersError saying why not."""
        try:
            req = json.loads(line)
            layer_dir, relpath = req["layer"], req["path"]
            if not isinstance(layer_dir, str) or not isinstance(relpath, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UsageError("a request is one JSON line with \"layer\" and \"path\"") \
                from None
        layer_id = self._layer_of(layer_dir)
        st = self._load(layer_id)
        if st is None:                          # complete: nothing to wait for
            return
        f = st.index.file_of(relpath)
        if f is None:
            if lazylayer.is_incomplete(st.diff, relpath):
                raise UsageError(f"{relpath}: marked lazy, but not a file of "
                                 f"layer {layer_id.short}'s table of contents")
            return
        around = st.index.neighbours(f.relpath, READ_AROUND,
                                     lambda p: self._idle(st, p))
        try:
            self._fetch(st, [f.relpath], around)
        except lazylayer.FetchFailed as e:
            if e.path == f.relpath:
                raise
            self._fetch(st, [f.relpath])        # another file of a shared batch failed
        self._start_prefetch(st, f.relpath)

    def _start_prefetch(self, st: "_Lazy", relpath: str) -> None:
        """When the file just completed is an ELF program or library, fetch
        what the loader will ask for next (elfdeps: its interpreter and the
        libraries it names, found in the same layer), all at once (their
        round trips overlap), in the background of this answer; a request
        for one of them shares its fetch.  Each counts as a request (the
        background steps wait)."""
        try:
            wanted = self._elf_needs(st, relpath)
        except (OSError, LayersError):
            return
        for p in wanted:
            with self.lock:
                self.active += 1
            threading.Thread(target=self._prefetch, args=(st, p), daemon=True).start()

    def _elf_needs(self, st: "_Lazy", relpath: str) -> list[str]:
        """The incomplete, idle lazy files of `st` that the ELF file `relpath`
        loads first: its interpreter, then its libraries, each where the
        loader would find it (`elfdeps.library_dirs`)."""
        dirfd = os.open(st.diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = fsutil.open_beneath(dirfd, relpath)
            try:
                interp, sonames, machine = elfdeps.needs(fd)
            finally:
                os.close(fd)
            dirs = elfdeps.library_dirs(machine)
            wanted: list[str] = []
            for candidates in [[interp] if interp else [],
                               *([f"{d}/{n}" for d in dirs] for n in sonames)]:
                for path in candidates:
                    found = elfdeps.resolve(dirfd, path)
                    if found is None:
                        continue
                    f = st.index.file_of(found)
                    if f is not None and f.relpath not in wanted and self._idle(st, f.relpath):
                        wanted.append(f.relpath)
                    break                       # the loader takes the first it finds
            return wanted
        finally:
            os.close(dirfd)

    def _prefetch(self, st: "_Lazy", relpath: str) -> None:
        try:
            self._fetch(st, [], [relpath])      # a failure is logged there
        finally:
            with self.lock:
                self.active -= 1
                self.last_request = time.monotonic()

    def _idle(self, st: "_Lazy", relpath: str) -> bool:
        """Whether the lazy file is incomplete and no fetch of it is under way."""
        with self.lock:
            if (st.id, relpath) in self.pending:
                return False
        return lazylayer.is_incomplete(st.diff, relpath)

    def _layer_of(self, layer_dir: str) -> Digest:
        parent, name = os.path.split(os.path.normpath(layer_dir))
        if name != layout.LAYER_DIFF or os.path.dirname(parent) != self.store.paths.layers:
            raise UsageError(f"{layer_dir}: not a layer of the store at "
                             f"{self.store.paths.root}")
        try:
            return Digest(os.path.basename(parent))
        except BadReference:
            raise UsageError(f"{layer_dir}: not a layer of the store") from None

    # -- shared fetches --------------------------------------------------------------

    def _fetch(self, st: _Lazy, relpaths: list[str], also: list[str] = (),
               in_flight: int = 1) -> None:
        """Complete the files `relpaths` of `st`, sharing what is in flight:
        a file being fetched already is waited for, the others fetched here,
        with those of `also` that no fetch has taken meanwhile (not waited
        for), up to `in_flight` ranges at once.  FetchFailed as
        `lazylayer.fill`."""
        mine: dict[str, Future] = {}
        waits: list[Future] = []
        with self.lock:
            for p in relpaths:
                fut = self.pending.get((st.id, p))
                if fut is None:
                    fut = self.pending[(st.id, p)] = mine[p] = Future()
                waits.append(fut)
            for p in also:
                if (st.id, p) not in self.pending:
                    self.pending[(st.id, p)] = mine[p] = Future()
        try:
            if mine:
                lazylayer.fill(st.diff, st.index, list(mine), st.read_range, self.options,
                               on_done=lambda p: mine[p].set_result(None),
                               on_bytes=st.count, in_flight=in_flight)
        except Exception as e:
            log.error("%s", _one_line(e, st))
            for fut in mine.values():
                if not fut.done():
                    fut.set_exception(e)
        finally:
            with self.lock:
                for p in mine:
                    del self.pending[(st.id, p)]
            for fut in mine.values():           # a bug: never leave a waiter hanging
                if not fut.done():
                    fut.set_exception(LayersError(f"{st.id.short}: fetch abandoned"))
        for fut in waits:
            fut.result()

    # -- layers ----------------------------------------------------------------------

    def _load(self, layer_id: Digest) -> _Lazy | None:
        """The loaded lazy layer, None when it is complete; LayerUnknown."""
        with self.lock:
            st = self.loaded.get(layer_id)
            if st is not None:
                return st
            layer = self.store.layers.get(layer_id)
            if layer is None:
                raise LayerUnknown(str(layer_id))
            if layer.lazy is None:
                return None
            read_range = self._reader(layer.lazy)
            st = _Lazy(layer_id, self.store.layers.diff_dir(layer_id),
                       lazylayer.load_index(self.store.paths.layer_toc(layer_id),
                                            layer.lazy.toc_digest, layer_id.short),
                       read_range)
            self.loaded[layer_id] = st
            return st

    def _reader(self, lazy: LazySource) -> Callable[[int, int], bytes]:
        """read_range of the layer's blob (caller holds self.lock)."""
        key = (lazy.registry, lazy.insecure, lazy.cert_dir)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = blob_client(lazy.registry, lazy.repository,
                                                     lazy.insecure, lazy.cert_dir,
                                                     self.abort)
            # while the layer's index is read: the first range need not wait
            threading.Thread(target=client.connect, daemon=True).start()
        return lambda start, end: client.get_blob_range(lazy.repository, lazy.blob,
                                                        start, end)

    def _lazy_layers(self) -> list[Layer]:
        return [layer for layer in self.store.layers.all() if layer.lazy is not None]

    def _retry_failed(self) -> None:
        with self.store.lock:
            for layer in self._lazy_layers():
                if layer.lazy.error is not None:
                    self.store.layers.save(layer.id.hex, replace(
                        layer, lazy=replace(layer.lazy, error=None)))

    def _to_complete(self) -> list[Layer]:
        """The lazy layers whose completion has not failed."""
        return [layer for layer in self._lazy_layers() if layer.lazy.error is None]

    def _complete_all(self) -> None:
        """Complete the layers until none is left to complete and either no
        lazy layer is left or no request came for IDLE seconds."""
        while True:
            if self.retry.is_set():
                self.retry.clear()
                self._retry_failed()
            todo = self._to_complete()
            for layer in todo:
                if layer.id not in self.started:
                    self.started.add(layer.id)
                    self._start_set(layer)
            for layer in todo:
                self._complete(layer)
            if not todo:
                with self.lock:
                    idle = not self.active and time.monotonic() - self.last_request >= IDLE
                if idle or not self._lazy_layers():
                    return
                self.retry.wait(1.0)

    def _start_set(self, layer: Layer) -> None:
        """Fetch what a container's start opens first (module doc), as far
        as the layer holds it: the programs, then what they load (their
        content read from the layer once fetched).  Best effort: a failure
        is logged (`_fetch`), its files left to the background."""
        try:
            st = self._load(layer.id)
            if st is None:
                return
            programs = self._start_programs(st, layer.id)
            self._fetch(st, [], programs, in_flight=lazylayer.RANGES_IN_FLIGHT)
            loaded: list[str] = []
            for p in programs:
                with contextlib.suppress(OSError, LayersError):
                    loaded += [q for q in self._elf_needs(st, p) if q not in loaded]
            self._fetch(st, [], loaded, in_flight=lazylayer.RANGES_IN_FLIGHT)
        except LayerUnknown:
            return                              # removed meanwhile
        except (LayersError, OSError) as e:
            log.error("layer %s: start set: %s", layer.id.short, e)

    def _start_programs(self, st: "_Lazy", layer_id: Digest) -> list[str]:
        """The incomplete, idle lazy files of `st` that are the programs its
        images run by default (`bundle.image_command`: a bare name looked up
        on the image's PATH) and the shell, symlinks followed in the layer."""
        wanted = []
        for image in self.store.images.all():
            if layer_id not in image.layers:
                continue
            try:
                argv, env = bundle.image_command(json.loads(image.config))
            except (ValueError, AttributeError, TypeError):
                continue
            if argv and "/" in argv[0]:
                wanted.append([argv[0]])
            elif argv:
                path = next(e[5:] for e in env if e.startswith("PATH="))
                wanted.append([f"{d}/{argv[0]}" for d in path.split(":") if d])
        wanted.append([SHELL])
        found: list[str] = []
        dirfd = os.open(st.diff, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for candidates in wanted:
                for path in candidates:
                    resolved = elfdeps.resolve(dirfd, path.lstrip("/"))
                    if resolved is None:
                        continue
                    f = st.index.file_of(resolved)
                    if f is not None and f.relpath not in found and self._idle(st, f.relpath):
                        found.append(f.relpath)
                    break                       # the first on the PATH runs
        finally:
            os.close(dirfd)
        return found

    def _complete(self, layer: Layer) -> None:
        """Complete one layer (module doc); a failure goes into its record."""
        try:
            st = self._load(layer.id)
            if st is None:
                return
            # every file in tar order, not only the incomplete ones: looking at
            # each first (some 15 system calls a file) took a CPU's time while a
            # container was being mounted; `fill` passes over a complete one
            todo = collections.deque(st.index.files)
            step, seen = MIN_BATCH // 2, -1
            while todo:
                if self.store.layers.get(layer.id) is None:
                    return                      # removed meanwhile
                self._wait_quiet()
                with self.lock:
                    requests = self.requests
                step = MIN_BATCH if requests != seen else min(2 * step, BATCH)
                seen = requests
                batch, size = [], 0
                while todo and (not batch or size < step):
                    p = todo.popleft()
                    batch.append(p)
                    size += sum(c.blob_end - c.blob_start for c in st.index.files[p].chunks)
                try:
                    self._fetch(st, batch)
                finally:
                    self._save_received(st)
                if not todo:
                    todo = collections.deque(lazylayer.incomplete_files(st.diff, st.index))
            lazylayer.finish(st.diff, st.index, layer.diff_id,
                             self.store.paths.layer_split(layer.id))
            with self.store.lock:
                now = self.store.layers.get(layer.id)
                if now is not None and now.lazy is not None:
                    self.store.layers.save(layer.id.hex, replace(
                        now, lazy=None,
                        size=fsutil.allocated_size(self.store.paths.layer_dir(layer.id))))
            with self.lock:
                self.loaded.pop(layer.id, None)
            log.info("layer %s: complete", layer.id.short)
        except (LayersError, OSError) as e:
            if self.store.layers.get(layer.id) is None:
                return                          # removed meanwhile: its errors are moot
            if not isinstance(e, lazylayer.FetchFailed):
                log.error("layer %s: %s", layer.id.short, e)
            self._record_error(layer.id, str(e))
        except Exception as e:                  # a bug: the other layers go on
            log.exception("layer %s: internal error", layer.id.short)
            self._record_error(layer.id, f"internal error: {type(e).__name__}: {e}")

    def _wait_quiet(self) -> None:
        """Hold the next background range while requests come (a container
        starting reads what it needs first; the link is theirs), for at most
        MAX_PAUSE, so that the background still goes on under steady reads."""
        deadline = time.monotonic() + MAX_PAUSE
        while time.monotonic() < deadline:
            with self.lock:
                if not self.active and time.monotonic() - self.last_request >= QUIET:
                    return
            time.sleep(0.02)

    def _save_received(self, st: _Lazy) -> None:
        n = st.take_received()
        if not n:
            return
        with self.store.lock:
            now = self.store.layers.get(st.id)
            if now is not None and now.lazy is not None:
                self.store.layers.save(st.id.hex, replace(
                    now, lazy=replace(now.lazy, fetched=now.lazy.fetched + n)))

    def _record_error(self, layer_id: Digest, message: str) -> None:
        with self.store.lock:
            now = self.store.layers.get(layer_id)
            if now is not None and now.lazy is not None:
                self.store.layers.save(layer_id.hex, replace(
                    now, lazy=replace(now.lazy, error=message)))


def serve(store: StoreCore) -> int:
    """`layers fetcher`: run the store's fetcher in this process (module
    doc); its log lines go to stderr, which `start_fetcher` points at the
    runroot's fetcher.log."""
    logging.basicConfig(format=f"%(asctime)s fetcher[{os.getpid()}]: %(message)s",
                        level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)     # a line per request
    return Fetcher(store).run()


def _one_line(e: BaseException, st: _Lazy) -> str:
    if isinstance(e, LayersError):
        return str(e)
    return f"layer {st.id.short}: {e}"


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        more = conn.recv(4096)
        if not more:
            break
        data += more
        if len(data) > REQUEST_LIMIT:
            raise OSError(errno.EMSGSIZE, "request too long")
    return data.split(b"\n", 1)[0]


@contextlib.contextmanager
def _short_address(path: str) -> Iterator[str]:
    """`path` as a unix socket address: through /proc/self/fd when it is
    longer than sun_path holds (108 bytes; a store deep in a tree)."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{os.path.basename(path)}"
    finally:
        os.close(dirfd)
