"""`scripts/bench --profile DIR`: where a daemon's CPU goes, by component.

During each measured step py-spy samples the FUSE daemon from outside (no
change to the daemon; `--native` also unwinds pyfuse3's Cython, libfuse and
libc), and its folded stacks are kept as DIR/<workload>-<impl>-r<rep>.txt.
`summarize` sets apart the samples of a thread that waits (for requests in
epoll_wait, for work or a lock in a worker thread, for the disk in fsync:
py-spy's native mode samples blocked threads too) and attributes every other
sample to the innermost frame that belongs to a known owner:

  fsd <module>       fsd's own code in that module (its system calls included)
  pyfuse3+libfuse    the receive loop, request decoding, replies (Cython, libfuse)
  /dev/fuse I/O      read and writev of requests and replies
  trio               trio's scheduler, epoll bookkeeping, checkpoints
  floorfs            the pyfuse3 floor's handlers (its system calls included)
  other              what is none of those (the interpreter, the GC ...)

and, apart, to the request handler the sample is in ("ops.py Operations.lookup").
Sampling stops the daemon hundreds of times a second: a profiled run's times
are not the benchmark's, only its proportions are meaningful.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

RATE = 500  # samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
_DEVICE_IO = {"read", "writev", "write", "readv"}
_WAITING = {"epoll_wait", "PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait",
            "sem_wait", "sem_timedwait", "fsync", "fdatasync", "syncfs"}


class Profiler:
    """py-spy recording one daemon during one step; `stop` writes the file."""

    def __init__(self, pyspy: str, pid: int, out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            [pyspy, "record", "--pid", str(pid), "--rate", str(RATE), "--native", "--format", "raw",
             "--output", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)

    def stop(self) -> str | None:
        """End the recording; None, or why there is no profile."""
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return "py-spy: " + (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        return None


def _owner(func: str, file: str) -> str | None:
    if file.startswith("fsd/") and file not in ("fsd/cli.py", "fsd/mount.py"):
        return f"fsd {os.path.basename(file)}"
    if "floorfs" in file:
        return "floorfs"
    if file.startswith("trio/") or "/trio/" in file:
        return "trio"
    if "pyfuse3" in file or file.startswith("__init__.c") or "libfuse3" in file:
        return "pyfuse3+libfuse"
    return None


def summarize(folded: str) -> dict:
    """{"samples", "idle" (waiting), "components": {owner: samples}, "handlers": {handler: samples}}
    from py-spy's raw output (one "frame;frame;... count" per line, outermost first)."""
    components, handlers = Counter(), Counter()
    samples = idle = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = []
        for text in stack.split(";"):
            m = _FRAME.match(text)
            frames.append((m["func"], m["file"]) if m else (text, ""))
        samples += n
        if any(f in _WAITING for f, _ in frames[-4:]):
            idle += n
            continue
        owner = next((o for o in (_owner(f, p) for f, p in reversed(frames)) if o), "other")
        if owner == "pyfuse3+libfuse" and frames[-1][0] in _DEVICE_IO:
            owner = "/dev/fuse I/O"
        components[owner] += n
        handler = next((f"{os.path.basename(p)} {f}" for f, p in frames
                        if f.startswith(("Operations.", "Floor.")) and p.endswith(("fsd/ops.py", "floorfs.py"))),
                       None)
        if handler is not None:
            handlers[handler] += n
    return {"samples": samples, "idle": idle, "components": dict(components.most_common()),
            "handlers": dict(handlers.most_common())}


def merge(summaries: list[dict]) -> dict:
    """The sum of several summaries (one workload's repetitions)."""
    out = {"samples": 0, "idle": 0, "components": Counter(), "handlers": Counter()}
    for s in summaries:
        out["samples"] += s["samples"]
        out["idle"] += s["idle"]
        out["components"].update(s["components"])
        out["handlers"].update(s["handlers"])
    return {**out, "components": dict(out["components"].most_common()),
            "handlers": dict(out["handlers"].most_common())}


def render(name: str, summary: dict, top: int = 8) -> str:
    """One line per component and handler, as shares of the busy samples."""
    busy = summary["samples"] - summary["idle"]
    if not busy:
        return f"{name}: no busy samples\n"
    out = [f"{name}: {busy} busy samples ({summary['idle']} waiting)"]
    for title, key in (("component", "components"), ("handler", "handlers")):
        items = list(summary[key].items())[:top]
        out.append(f"  by {title}: " + ", ".join(f"{k} {v / busy:.0%}" for k, v in items))
    return "\n".join(out) + "\n"
