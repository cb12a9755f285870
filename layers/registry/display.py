"""Progress of pulls and pushes on a terminal: one line per layer in flight.

Level 0 of the registry package: imports `layers.units`, nothing from the store.

`TransferDisplay` implements the store's `Progress` protocol
(`layer_start`, `layer_bytes`, `layer_done`) for calls coming from several
threads at once: a thread's calls belong to the layer it started.  Lines
are redrawn in place at most ten times a second; a finished layer's line
stays.  Not a terminal: nothing is drawn.
"""

from __future__ import annotations

import sys
import threading
import time

from .. import units


class TransferDisplay:
    def __init__(self, verb: str, stream=None, interval: float = 0.1):
        self.verb = verb
        self.stream = stream or sys.stderr
        self.interval = interval
        self.lock = threading.Lock()
        self.lines: dict[int, list] = {}          # index → [label, done, size, state]
        self.current: dict[int, int] = {}         # thread id → index
        self.drawn = 0
        self.last = 0.0
        self.start = time.monotonic()

    def layer_start(self, index: int, total: int, where: str, size: int | None) -> None:
        with self.lock:
            self.current[threading.get_ident()] = index
            label = where.rsplit("@", 1)[-1].replace("sha256:", "")[:12]
            self.lines[index] = [f"layer {index + 1}/{total} {label}", 0, size, self.verb]
        self.redraw()

    def layer_bytes(self, nbytes: int) -> None:
        with self.lock:
            index = self.current.get(threading.get_ident())
            if index is None:
                return
            self.lines[index][1] = nbytes
        self.redraw()

    def layer_done(self, layer) -> None:
        with self.lock:
            index = self.current.pop(threading.get_ident(), None)
            if index is None:
                return
            self.lines[index][3] = "done" if layer is not None else "present"
        self.redraw(force=True)

    def set_state(self, index: int, state: str) -> None:
        with self.lock:
            if index in self.lines:
                self.lines[index][3] = state
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last < self.interval:
                return
            self.last = now
            out = []
            if self.drawn:
                out.append(f"\x1b[{self.drawn}F")
            for index in sorted(self.lines):
                label, done, size, state = self.lines[index]
                amount = units.size(done) + (f"/{units.size(size)}" if size else "")
                out.append(f"\x1b[2K{label}: {state} {amount}\n")
            self.drawn = len(self.lines)
            self.stream.write("".join(out))
            self.stream.flush()

    def finish(self) -> None:
        self.redraw(force=True)
