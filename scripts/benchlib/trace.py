"""FUSE requests counted by operation, from the kernel's `fuse:fuse_request_send`
tracepoint, so that the bench can say why a workload is slow: how many
requests it took and how much daemon CPU each one cost.

    trace = RequestTrace.open(scratch)    None (and why, in RequestTrace.why_not) if unusable
    trace.start(connection)               count the requests of one FUSE connection (None: all)
    counts = trace.stop()                 Counts: {op: n} per connection, and the events lost
    trace.close()                         the instance removed, tracefs unmounted if we mounted it

The bench works in a tracing instance of its own (instances/strata-bench-PID),
so it neither sees nor disturbs anyone else's tracing. When tracefs is not
mounted anywhere it mounts it on a directory of its own scratch space and
unmounts it at close; /sys/kernel/tracing is never touched. The events are
counted from the instance's buffer after each step (this kernel has no
histogram triggers): the buffer is sized for a few hundred thousand requests,
and events the ring buffer overwrote are reported, never silently missing.
Forgets are not requests (the kernel queues them apart) and are not counted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

EVENT = "events/fuse/fuse_request_send"
BUFFER_KB = 32768  # per CPU: about 800,000 events each
_LINE = re.compile(rb"fuse_request_send: connection (\d+) req \d+ opcode \d+ \((\w+)\)")
_OVERRUN = re.compile(rb"^overrun: (\d+)", re.M)


@dataclass
class Counts:
    """Requests counted during one step, per connection, by operation."""
    by_connection: dict[int, Counter] = field(default_factory=dict)
    lost: int = 0

    def of(self, connections) -> Counter:
        """The requests of the given connections, summed by operation (FUSE_ dropped)."""
        total = Counter()
        for c in connections:
            total.update(self.by_connection.get(c, {}))
        return total


def _tracefs_mounted() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] == "tracefs":
                return Path(pre.split()[4])
    return None


class RequestTrace:
    why_not: str | None = None

    def __init__(self, root: Path, instance: Path, mounted_by_us: bool):
        self.root = root
        self.instance = instance
        self.mounted_by_us = mounted_by_us

    @classmethod
    def open(cls, scratch: Path) -> "RequestTrace | None":
        root = _tracefs_mounted()
        mounted_by_us = False
        if root is None:
            root = scratch / "tracefs"
            root.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["mount", "-t", "tracefs", "strata-bench", str(root)],
                               capture_output=True, text=True)
            if r.returncode:
                cls.why_not = f"cannot mount tracefs: {r.stderr.strip()}"
                return None
            mounted_by_us = True
        trace = cls(root, root / "instances" / f"strata-bench-{os.getpid()}", mounted_by_us)
        try:
            if not (root / EVENT).is_dir():
                raise OSError(f"the kernel has no {EVENT.removeprefix('events/')} tracepoint")
            trace.instance.mkdir()
            (trace.instance / "buffer_size_kb").write_text(f"{BUFFER_KB}\n")
            (trace.instance / "tracing_on").write_text("0\n")
            (trace.instance / EVENT / "enable").write_text("1\n")
        except OSError as exc:
            cls.why_not = f"tracefs: {exc}"
            trace.close()
            return None
        trace._remove_stale_instances()
        return trace

    def start(self, connection: int | None) -> None:
        """Count from now on, only `connection`'s requests unless None."""
        (self.instance / EVENT / "filter").write_text(
            f"connection == {connection}\n" if connection is not None else "0\n")
        (self.instance / "trace").write_text("")  # empties the buffer
        (self.instance / "tracing_on").write_text("1\n")

    def stop(self) -> Counts:
        (self.instance / "tracing_on").write_text("0\n")
        counts = Counts()
        with open(self.instance / "trace", "rb") as f:
            for line in f:
                m = _LINE.search(line)
                if m:
                    op = m.group(2).decode().removeprefix("FUSE_")
                    counts.by_connection.setdefault(int(m.group(1)), Counter())[op] += 1
        for stats in (self.instance / "per_cpu").glob("cpu*/stats"):
            m = _OVERRUN.search(stats.read_bytes())
            counts.lost += int(m.group(1)) if m else 0
        return counts

    def _remove_stale_instances(self) -> None:
        """Instances are the kernel's, not the mount's: those of bench runs that
        were killed stay (with their buffers) until removed."""
        for d in (self.root / "instances").glob("strata-bench-*"):
            pid = d.name.rpartition("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    (d / EVENT / "enable").write_text("0\n")
                    d.rmdir()
                except OSError:
                    pass

    def close(self) -> None:
        try:
            (self.instance / "tracing_on").write_text("0\n")
            (self.instance / EVENT / "enable").write_text("0\n")
        except OSError:
            pass
        try:
            self.instance.rmdir()
        except OSError:
            pass
        if self.mounted_by_us:
            subprocess.run(["umount", str(self.root)], capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)

