"""Progress of long commands on a terminal: one line per layer (or tree) in
flight, for import, export, save, commit, pull and push alike.

The store reports through the `Progress` protocol: `layer_start(index,
total, where, size)`, `layer_bytes(done)` with the running total of bytes
read or written, `layer_done(layer)` (None: nothing had to be moved, the
layer was there).  `TerminalProgress` draws it: each line says what, how
many bytes of how many (with the percentage when the total is known) and
the rate, `layer 2/3 0123456789ab: importing 12.6MB of 50MB (25%) at
8.4MB/s`.  Calls may come from several threads at once (pull and push move
layers in parallel): a thread's calls belong to the layer it started.
Lines are redrawn in place at most `interval` apart, and always when a layer
starts or ends, so every line ends showing its final count; a finished
line stays.  `for_terminal` makes one only when stderr is a terminal and
`-q` was not given.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from . import units


class Progress(Protocol):
    def layer_start(self, index: int, total: int, where: str, size: int | None) -> None: ...
    def layer_bytes(self, nbytes: int) -> None: ...
    def layer_done(self, layer: object | None) -> None: ...


@dataclass
class _Line:
    label: str
    size: int | None
    started: float
    state: str
    done: int = 0
    ended: float | None = None


def label_of(where: str) -> str:
    """What a line calls a layer: the first 12 hex digits of a digest in
    `where` (a blob path, a reference, a diffID), else its last component."""
    m = re.search(r"sha256[:/]([0-9a-f]{12})", where)
    return m.group(1) if m else where.rstrip("/").rsplit("/", 1)[-1] or where


class TerminalProgress:
    def __init__(self, verb: str, stream=None, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.verb = verb                  # "importing", "pushing" …
        self.stream = stream or sys.stderr
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.lines: dict[int, _Line] = {}
        self.current: dict[int, int] = {}          # thread id → line index
        self.drawn = 0
        self.last = float("-inf")

    def layer_start(self, index: int, total: int, where: str, size: int | None) -> None:
        with self.lock:
            self.current[threading.get_ident()] = index
            self.lines[index] = _Line(f"layer {index + 1}/{total} {label_of(where)}", size,
                                      self.clock(), self.verb)
        self.redraw(force=True)

    def layer_bytes(self, nbytes: int) -> None:
        with self.lock:
            index = self.current.get(threading.get_ident())
            if index is None:
                return
            self.lines[index].done = nbytes
        self.redraw()

    def layer_done(self, layer) -> None:
        with self.lock:
            index = self.current.pop(threading.get_ident(), None)
            if index is None:
                return
            line = self.lines[index]
            line.state = "done" if layer is not None else "present"
            line.ended = self.clock()
        self.redraw(force=True)

    def _text(self, line: _Line, now: float) -> str:
        if line.state == "present":
            return f"{line.label}: present"
        amount = units.size(line.done)
        if line.size:
            share = min(100, line.done * 100 // line.size)
            amount += f" of {units.size(line.size)} ({share}%)"
        seconds = (line.ended if line.ended is not None else now) - line.started
        moved = seconds > 0 and line.done
        rate = f" at {units.size(line.done / seconds)}/s" if moved else ""
        return f"{line.label}: {line.state} {amount}{rate}"

    def redraw(self, force: bool = False) -> None:
        with self.lock:
            now = self.clock()
            if not force and now - self.last < self.interval:
                return
            self.last = now
            out = [f"\x1b[{self.drawn}F"] if self.drawn else []
            for index in sorted(self.lines):
                out.append(f"\x1b[2K{self._text(self.lines[index], now)}\n")
            self.drawn = len(self.lines)
            self.stream.write("".join(out))
            self.stream.flush()

    def finish(self) -> None:
        self.redraw(force=True)


def for_terminal(verb: str, quiet: bool) -> TerminalProgress | None:
    """The display of a command: on stderr when it is a terminal and `-q`
    was not given; else None (piped output carries no progress)."""
    if quiet or not sys.stderr.isatty():
        return None
    return TerminalProgress(verb)


def counted_chunks(chunks: Iterable[bytes], progress: Progress | None) -> Iterator[bytes]:
    """`chunks`, reporting the running total to `progress` as they pass."""
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        if progress is not None:
            progress.layer_bytes(done)


def counted_entries(entries: Iterable, progress: Progress | None) -> Iterator:
    """Tar entries `(TarInfo, source)`, reporting the running total of their
    content bytes to `progress` as each one has been written."""
    done = 0
    for entry in entries:
        yield entry
        done += entry[0].size
        if progress is not None:
            progress.layer_bytes(done)
