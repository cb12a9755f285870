"""Freezing the upper, so that another process can read it as it was at one
instant while the mount stays live (`layers commit` of a mounted container).

Every request that changes the upper (write, create, rename, setattr, an
open that copies up …) passes the `WriteGate`.  Closing the gate makes new
such requests wait and returns once those already past it have finished;
reads go on.  fsd keeps the kernel's writeback cache off, so from then on
the upper holds every write(2) fsd has answered, and nothing else changes
it until the gate opens again.

The protocol, through files in fsd's own directory of the workdir
(`WORK/fsd/`) and two signals to the daemon:
0. fsd catches the two signals from before the mount is live: a reader
   signals only a daemon that catches them (`SigCgt` of /proc/PID/status),
   since their default action would end another mount program;
1. the reader writes its pid to `freeze` (whole: written as `freeze.tmp`,
   then renamed) and sends SIGUSR1;
2. fsd closes the gate, then writes that pid to `frozen`;
3. the reader reads the upper, then sends SIGUSR2.  fsd opens the gate and
   removes both files.  It also opens the gate when the reader's process
   ends (watched through a pidfd), so a reader that dies never leaves the
   mount frozen.  A `freeze` naming no live process is ignored.
"""

from __future__ import annotations

import logging
import os
import signal

import trio

from .ondisk import FROZEN, REQUEST
from .watchdog import waiting

log = logging.getLogger("fsd")

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)   # freeze, thaw


class WriteGate:
    """`async with gate:` around every change of the upper (module doc)."""

    def __init__(self) -> None:
        self._reopened: trio.Event | None = None    # None: open
        self._active = 0
        self._drained: trio.Event | None = None

    async def __aenter__(self) -> None:
        while self._reopened is not None:           # closed again meanwhile: wait again
            with waiting("the upper to be thawed (frozen for a reader)"):
                await self._reopened.wait()
        self._active += 1

    async def __aexit__(self, *exc) -> None:
        self._active -= 1
        if self._active == 0 and self._drained is not None:
            self._drained.set()

    @property
    def is_open(self) -> bool:
        return self._reopened is None

    async def close(self) -> None:
        """Stop new changes; return when the changes in flight have ended."""
        if self._reopened is None:
            self._reopened = trio.Event()
        if self._active:
            self._drained = trio.Event()
            await self._drained.wait()
            self._drained = None

    def open(self) -> None:
        if self._reopened is not None:
            reopened, self._reopened = self._reopened, None
            reopened.set()


class Freezer:
    """Serves the protocol of the module doc for one mount."""

    def __init__(self, gate: WriteGate, area: str):
        self.gate = gate
        self.area = area                 # fsd's directory of the workdir
        self.thawed: trio.Event | None = None

    async def serve(self, signals) -> None:
        """Answer freeze and thaw signals from `signals` (a trio signal
        receiver for SIGNALS, opened before the mount went live) until
        cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                async for signum in signals:
                    if signum == signal.SIGUSR2:
                        self._thaw()
                    elif self.thawed is None:
                        await self._freeze(nursery)
        finally:
            self._thaw()

    async def _freeze(self, nursery: trio.Nursery) -> None:
        try:
            with open(os.path.join(self.area, REQUEST), "rb") as f:
                pid = int(f.read().strip() or b"0")
            pidfd = os.pidfd_open(pid) if pid > 0 else None
        except (OSError, ValueError) as e:
            log.warning("freeze request ignored: %s", e)
            return
        if pidfd is None:
            return
        self.thawed = trio.Event()
        await self.gate.close()
        _write_pid(self.area, FROZEN, pid)
        log.debug("frozen for pid %d", pid)
        nursery.start_soon(self._thaw_when_gone, pid, pidfd, self.thawed)

    async def _thaw_when_gone(self, pid: int, pidfd: int, thawed: trio.Event) -> None:
        try:
            async with trio.open_nursery() as watch:
                async def reader_gone() -> None:
                    await trio.lowlevel.wait_readable(pidfd)
                    log.warning("pid %d ended without thawing the upper: thawed", pid)
                    self._thaw()
                watch.start_soon(reader_gone)
                await thawed.wait()
                watch.cancel_scope.cancel()
        finally:
            os.close(pidfd)

    def _thaw(self) -> None:
        if self.thawed is None:
            return
        _remove(self.area, FROZEN)
        _remove(self.area, REQUEST)
        self.thawed.set()
        self.thawed = None
        self.gate.open()


def _write_pid(area: str, name: str, pid: int) -> None:
    """`area/name` holds `pid` and a newline, whole or not at all."""
    tmp = os.path.join(area, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % pid)
    os.rename(tmp, os.path.join(area, name))


def _remove(area: str, name: str) -> None:
    try:
        os.unlink(os.path.join(area, name))
    except FileNotFoundError:
        pass
