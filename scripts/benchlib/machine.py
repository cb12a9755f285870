"""Is the machine quiet enough for a result to mean something?

A ratio of two medians is only worth judging against a target when nothing
else competed for the CPUs while they were measured. `Quiet` records the load
average at the start, samples how idle the CPUs are while nothing of the
bench runs (before each repetition) and the steal time over the whole run;
`reasons()` says why the run was busy, [] when it was quiet. A busy run still
prints every figure, but no target is called (report.py: "busy, not judged").
"""

from __future__ import annotations

import os
import time

IDLE_SAMPLE = 0.5      # seconds of sampling before each repetition
MIN_IDLE = 0.85        # the share of CPU time that must be idle while the bench is idle
MAX_STEAL = 0.02       # the share of CPU time a hypervisor may take over the run


def cpu_times() -> tuple[int, int, int]:
    """(total, idle + iowait, steal) jiffies of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait, steal


class Quiet:
    def __init__(self, max_load: float):
        self.max_load = max_load
        self.cpus = os.cpu_count() or 1
        self.load_start = os.getloadavg()
        self.idle_samples: list[float] = []
        self._run_start = cpu_times()
        self.steal: float | None = None

    def sample_idle(self, seconds: float = IDLE_SAMPLE) -> float:
        """The idle share of all CPUs over the next `seconds` (call it while the bench is idle)."""
        t0, i0, _ = cpu_times()
        time.sleep(seconds)
        t1, i1, _ = cpu_times()
        share = (i1 - i0) / (t1 - t0) if t1 > t0 else 1.0
        self.idle_samples.append(share)
        return share

    def finish(self) -> None:
        t1, _, s1 = cpu_times()
        t0, _, s0 = self._run_start
        self.steal = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def reasons(self) -> list[str]:
        out = []
        if self.load_start[0] > self.max_load:
            out.append(f"load average {self.load_start[0]:.2f} at the start (more than {self.max_load:g})")
        low = [s for s in self.idle_samples if s < MIN_IDLE]
        if low:
            out.append(f"CPUs only {min(low):.0%} idle before a repetition while the bench was idle "
                       f"({len(low)} of {len(self.idle_samples)} samples under {MIN_IDLE:.0%})")
        if self.steal is not None and self.steal > MAX_STEAL:
            out.append(f"{self.steal:.1%} of the CPU time stolen by the hypervisor")
        return out

    def describe(self) -> dict:
        return {"cpus": self.cpus, "loadavg_start": list(self.load_start), "max_load": self.max_load,
                "idle_before_reps": [round(s, 3) for s in self.idle_samples],
                "steal": None if self.steal is None else round(self.steal, 4),
                "busy": self.reasons()}


def rotate(items: list, k: int) -> list:
    """`items` started at its k-th: repetition k runs the configurations in
    this order, so that none always runs first (a cold cache, a drifting
    machine) and each pays the same share of the machine's changes."""
    if not items:                     # e.g. bench-lazy --only pp --no-podman
        return []
    k %= len(items)
    return items[k:] + items[:k]
