"""A watchdog of requests: one in flight longer than LIMIT is logged once, as a
WARNING naming its operation, its inode (or handle) and what it waits on, so
that a report of a hung mount says where it hangs.

Level 0: imports nothing of fsd.

Cheap on the hot path: a request costs a set insert and removal and a context
variable (`Requests.begin` and `end`, called by ops.py's one wrapper of every
handler); no task or timer per request.  One trio task (`Requests.watch`) looks at the
set every CHECK_EVERY seconds.  What a request waits on is told by the code
that waits, around the wait (`waiting`): the end of a directory move, the
copy-up of a node, a worker thread, a lazy fetch (lazy.py).  The watch task runs on the trio loop, so
it reports what waits, not a request that holds the loop itself (that one is
seen when the loop comes back, if it is still in flight).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import logging

import trio

log = logging.getLogger("fsd")

LIMIT = 5.0  # seconds a request may be in flight before it is reported
CHECK_EVERY = 1.0  # seconds between two looks at the requests in flight
RUNNING = "nothing recorded (running between two waits)"


@dataclasses.dataclass(eq=False, slots=True)
class Request:
    """One request in flight."""

    opcode: str  # the handler's name: lookup, create, rename ...
    about: str | None  # what its first argument is: "inode", "fh" ... (None: nothing)
    value: object  # that argument
    started: float  # trio.current_time()
    waits_on: str = RUNNING
    reported: bool = False

    def __str__(self) -> str:
        return self.opcode if self.about is None else f"{self.opcode} ({self.about} {self.value})"


_current: contextvars.ContextVar[Request | None] = contextvars.ContextVar("fsd_request", default=None)


@contextlib.contextmanager
def waiting(what: str):
    """Record, for the request being served (if any), that it waits on `what`
    for the duration of the block."""
    request = _current.get()
    if request is None:
        yield
        return
    before, request.waits_on = request.waits_on, what
    try:
        yield
    finally:
        request.waits_on = before


class Requests:
    """The requests in flight of one mount."""

    def __init__(self, limit: float = LIMIT):
        self.limit = limit
        self._in_flight: set[Request] = set()

    def begin(self, request: Request) -> contextvars.Token:
        """Request is in flight (and what `waiting` records on) until `end`."""
        self._in_flight.add(request)
        return _current.set(request)

    def end(self, request: Request, token: contextvars.Token) -> None:
        _current.reset(token)
        self._in_flight.discard(request)

    def overdue(self, now: float) -> list[Request]:
        """The requests in flight for longer than the limit and not reported
        yet; each is returned once."""
        late = [r for r in self._in_flight if not r.reported and now - r.started > self.limit]
        for request in late:
            request.reported = True
        return late

    async def watch(self, every: float = CHECK_EVERY) -> None:
        """Log each request in flight for longer than the limit, once; runs
        until cancelled (with the mount)."""
        while True:
            await trio.sleep(every)
            now = trio.current_time()
            for request in self.overdue(now):
                log.warning("request %s in flight for %.0f s, waiting on: %s",
                            request, now - request.started, request.waits_on)


def about(handler) -> str | None:
    """What a request handler's first argument is, as `Request.about` says it
    ("inode", "fh", "parent inode" ...); None for a handler whose first
    argument is its ctx, or that has none."""
    params = list(inspect.signature(handler).parameters)[1:]
    first = params[0] if params and params[0] != "ctx" else None
    return first.removesuffix("_old").replace("_", " ") if first is not None else None
