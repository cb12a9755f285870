"""A watchdog of requests: one in flight longer than LIMIT is logged once, as a
WARNING naming its operation, its inode (or handle) and what it waits on, so
that a report of a hung mount says where it hangs.

Level 0: imports nothing of fsd.

Cheap on the hot path: a request costs a set insert and removal and a context
variable (`Requests.serving`, applied to every handler by `track_requests`);
no task or timer per request.  One trio task (`Requests.watch`) looks at the
set every CHECK_EVERY seconds.  What a request waits on is told by the code
that waits, around the wait (`waiting`): the end of a directory move, the
copy-up of a node, a worker thread.  The watch task runs on the trio loop, so
it reports what waits, not a request that holds the loop itself (that one is
seen when the loop comes back, if it is still in flight).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
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

    @contextlib.contextmanager
    def serving(self, request: Request):
        self._in_flight.add(request)
        token = _current.set(request)
        try:
            yield
        finally:
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


def track_requests(cls):
    """Class decorator for a pyfuse3.Operations subclass with a `requests`
    attribute: every request handler it defines (a coroutine method, forget
    aside: it never waits) runs as an entry of `self.requests`."""
    for name, handler in list(vars(cls).items()):
        if name.startswith("_") or name == "forget" or not inspect.iscoroutinefunction(handler):
            continue
        setattr(cls, name, _tracked(handler))
    return cls


def _tracked(handler):
    params = list(inspect.signature(handler).parameters)[1:]
    first = params[0] if params and params[0] != "ctx" else None
    label = first.removesuffix("_old").replace("_", " ") if first is not None else None

    @functools.wraps(handler)
    async def tracked(self, *args):
        request = Request(handler.__name__, label, args[0] if label else None, trio.current_time())
        with self.requests.serving(request):
            return await handler(self, *args)
    return tracked
