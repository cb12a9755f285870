"""The workloads of issue 9, and how one of them is timed on one mount.

A *group* is what runs on one fresh mount: `w1` times the cold `find`, then
the same `find` warm (`w1w`); `w3` times the sequential read, then the random
reads (`w3r`). `GROUPS[name].run(ctx)` runs a group through a `Context`,
which owns the mount's timing: `ctx.cold()` before a cold measurement,
`ctx.time_cmd(id, ...)` / `ctx.time_worker(id, ...)` / `ctx.time_fio(id, ...)`
for one measured step. A step that fails raises `WorkloadError`: it and the
rest of its group are reported as failed for that implementation, and the
run goes on with the next mount.

Times are wall-clock seconds of the step alone (a worker's loop, fio's own
runtime, or the command); daemon CPU is the FUSE daemon's user+system time
over the step, from /proc (None for the kernel overlay); requests are the
FUSE requests the kernel sent the daemon during the step, by operation
(trace.py; None without tracing). Every command that touches the mount runs
as the mount's owner where the mount is (`Mount.command`): for a rootless
implementation, as the user in its namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .mounts import Mount, drop_caches
from .profile import Profiler, summarize

WORKER = str(Path(__file__).resolve().with_name("worker.py"))


class WorkloadError(Exception):
    """A measured step failed (not a timing); str(self) is one line."""


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    target: str  # as the issue states it: "<= 1.0", ">= 0.8 throughput", "" (none)


@dataclass
class Step:
    seconds: float
    cpu: float | None = None
    info: dict = field(default_factory=dict)
    requests: dict[str, int] | None = None  # FUSE operation -> count
    lost: int = 0  # trace events lost (the ring buffer overflowed)


class Context:
    """What a group needs to run and time its steps on one mount."""

    def __init__(self, impl: str, mount: Mount | None, data: dict[str, Path], scratch: Path,
                 small: bool, timeout: float, fio: str | None, layers_exe: str, trace=None,
                 profile: tuple[str, Path, str] | None = None):
        self.impl = impl
        self.mount = mount
        self.data = data
        self.scratch = scratch
        self.small = small
        self.timeout = timeout
        self.fio = fio
        self.layers_exe = layers_exe
        self.trace = trace  # a trace.RequestTrace, or None
        # (py-spy, directory, file name suffix): each step's daemon CPU by component (profile.py)
        self.profile = profile
        self._profiler: Profiler | None = None
        self.steps: dict[str, Step] = {}

    @property
    def merged(self) -> Path:
        return self.mount.merged

    def cold(self, *warm_files: Path) -> None:
        """Drop caches, then bring back what is not being measured (the tools
        and any input file named) so that only the mount starts cold."""
        drop_caches()
        for tool in ("find", "tar", "cat", "rm", "bash", "sha256sum", "sync"):
            subprocess.run([tool, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-c", "pass"])
        for f in warm_files:
            with open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass

    def _cpu(self):
        return self.mount.daemon_cpu() if self.mount else None

    def _run(self, argv: list[str], cwd=None, capture=False) -> tuple[str, float, object]:
        """Run argv to its end within the deadline: (stdout if capture, wall seconds,
        rusage). Without capture its output goes to /dev/null."""
        out_path = self.scratch / "step.out"
        err_path = self.scratch / "step.err"
        with open(out_path if capture else os.devnull, "wb") as out, open(err_path, "wb") as err:
            t = time.perf_counter()
            # In a process group of its own, so that all of it can be stopped
            # (fio forks its jobs). Never with its cwd in the mount: a fork that
            # chdirs into a hung mount blocks the bench in vfork, deadline or not.
            run = self.mount.command(argv, cwd) if self.mount else argv
            p = subprocess.Popen(run, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 process_group=0)
            try:
                _, status, rusage = _wait4(p, self.timeout)
            except BaseException as exc:
                _stop(p, self.mount)
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise WorkloadError(f"{_show(argv)}: still running after {self.timeout:.0f}s; "
                                        "killed") from None
                raise
            wall = time.perf_counter() - t
        stdout = out_path.read_text(errors="replace") if capture else ""
        if status:
            tail = " | ".join(err_path.read_text(errors="replace").strip().splitlines()[-4:])
            raise WorkloadError(f"{_show(argv)}: exit {status}: {tail or '(no output)'}")
        return stdout, wall, rusage

    def _begin(self, wid: str):
        """Before a measured step: the daemon's CPU so far; requests counted from
        now; with --profile a rootful daemon is sampled from now."""
        if self.trace is not None and self.mount is not None and self.mount.connection is not None:
            self.trace.start(self.mount.connection)
        if self.profile is not None and self.mount is not None and self.mount.proc is not None \
                and self.mount.as_user is None:
            pyspy, folder, suffix = self.profile
            if self._profiler is not None:  # of a step that failed
                self._profiler.stop()
            name = f"{wid}-{self.impl.replace(' ', '-')}-{suffix}.txt"
            self._profiler = Profiler(pyspy, self.mount.proc.pid, folder / name)
        return self._cpu()

    def time_cmd(self, wid: str, argv: list[str], capture=False) -> tuple[Step, str]:
        """The step and, with capture, what the command printed."""
        cpu0 = self._begin(wid)
        out, wall, rusage = self._run(argv, capture=capture)
        return self._record(wid, Step(wall), cpu0, rusage), out

    def time_worker(self, wid: str, *args: str) -> Step:
        cpu0 = self._begin(wid)
        out, _, rusage = self._run([sys.executable, WORKER, *args], cwd=self.scratch, capture=True)
        try:
            result = json.loads(out.strip().splitlines()[-1])
            seconds = float(result.pop("seconds"))
        except (ValueError, KeyError, IndexError):
            raise WorkloadError(f"worker {args[0]}: malformed output {out[:200]!r}") from None
        return self._record(wid, Step(seconds, info=result), cpu0, rusage)

    def time_fio(self, wid: str, path: Path, count: int) -> Step:
        size = self.mount.lstat(path).st_size
        cpu0 = self._begin(wid)
        out, _, rusage = self._run([
            self.fio, "--name=randread", f"--filename={path}", "--readonly", "--rw=randread",
            "--bs=4k", "--ioengine=psync", f"--size={size}", f"--io_size={count * 4096}",
            "--randrepeat=0", "--randseed=42", "--invalidate=0", "--output-format=json"],
            cwd=self.scratch, capture=True)
        try:
            job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
            seconds = job["runtime"] / 1000
            ios = job["total_ios"]
        except (ValueError, KeyError, IndexError):
            raise WorkloadError(f"fio: malformed output {out[:200]!r}") from None
        if ios != count:
            raise WorkloadError(f"fio: {ios} reads done, {count} asked")
        return self._record(wid, Step(seconds, info={"tool": "fio", "reads": ios}), cpu0, rusage)

    def _record(self, wid: str, step: Step, cpu0, rusage) -> Step:
        cpu1 = self._cpu()
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            why_not = profiler.stop()
            step.info["profile"] = why_not or summarize(profiler.out.read_text())
        if self.trace is not None and self.mount is not None and self.mount.connection is not None:
            counts = self.trace.stop()
            step.requests = dict(counts.of([self.mount.connection]))
            step.lost = counts.lost
        if cpu0 is not None and cpu1 is not None:
            step.cpu = cpu1.seconds_since(cpu0)
        elif self.mount is None and rusage is not None:  # no daemon: the command's own CPU
            step.cpu = rusage.ru_utime + rusage.ru_stime
        self.steps[wid] = step
        return step


def _wait4(p: subprocess.Popen, timeout: float):
    """Wait for p like Popen.wait, also returning its rusage (children included)."""
    end = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return pid, p.returncode, rusage
        if time.monotonic() > end:
            raise subprocess.TimeoutExpired(p.args, timeout)
        time.sleep(0.002)


def _stop(p: subprocess.Popen, mount: Mount | None) -> None:
    """Kill a step and every process it started; if one is stuck in the
    filesystem, abort the mount's connection first."""
    def group_alive() -> bool:
        try:
            os.killpg(p.pid, 0)
            return True
        except ProcessLookupError:
            return False

    for attempt in range(3):
        if group_alive():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.returncode is None:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 5
        while group_alive() and time.monotonic() < end:
            time.sleep(0.05)
        if not group_alive() and p.returncode is not None:
            return
        if mount:
            mount.abort()


def _show(argv: list[str]) -> str:
    text = " ".join(argv)
    return text if len(text) < 120 else text[:117] + "..."


# -- the groups ------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    name: str
    workloads: tuple[Workload, ...]
    data: tuple[str, ...]  # components of data.py it needs
    run: Callable[[Context], None]
    lowers: str = "lower"  # "lower": the lower tree; "stack": the 64 layers; "": no mount
    volatile: bool = False


def _find(ctx: Context, wid: str) -> None:
    # -printf of the size makes find stat every entry, as a container start does.
    _, out = ctx.time_cmd(wid, ["find", str(ctx.merged), "-printf", "%y %s\n"], capture=True)
    want = json.loads((ctx.data["lower"] / "spec.json").read_text())["entries"] + 1
    if out.count("\n") != want:
        raise WorkloadError(f"{wid}: find listed {out.count(chr(10))} entries, the lower tree has {want}")


def run_w1(ctx: Context) -> None:
    ctx.cold()
    _find(ctx, "w1")
    _find(ctx, "w1w")


def run_w2(ctx: Context) -> None:
    ctx.cold()
    # GNU tar does not read files it writes to /dev/null: hence the cat.
    ctx.time_cmd("w2", ["bash", "-o", "pipefail", "-c", 'tar -C "$1" -cf - rootfs small | cat >/dev/null',
                        "w2", str(ctx.merged)])


def run_w3(ctx: Context) -> None:
    big = ctx.merged / "big"
    size = ctx.mount.lstat(big).st_size
    ctx.cold()
    step = ctx.time_worker("w3", "seqread", str(big))
    if step.info.get("bytes") != size:
        raise WorkloadError(f"w3: read {step.info.get('bytes')} bytes of {size}")
    count = 64 if ctx.small else 4096
    ctx.cold()
    if ctx.fio:
        ctx.time_fio("w3r", big, count)
    else:
        ctx.time_worker("w3r", "randread", str(big), str(count), "42").info["tool"] = "python"


def run_w4(ctx: Context) -> None:
    spec = json.loads((ctx.data["lower"] / "spec.json").read_text())
    listfile = ctx.scratch / "w4.list"
    listfile.write_text("".join(p + "\n" for p in spec["w4_files"]))
    ctx.cold()
    ctx.time_worker("w4", "append", str(ctx.merged), str(listfile))
    lower = ctx.data["lower"] / "tree"
    for rel in spec["w4_files"][:50]:
        want = (lower / rel).stat().st_size + 1
        if ctx.mount.lstat(ctx.merged / rel).st_size != want or (ctx.mount.upper / rel).stat().st_size != want:
            raise WorkloadError(f"w4: {rel} was not copied up with one byte more")


def _createsync(ctx: Context, wid: str) -> None:
    d = ctx.merged / "w5"
    ctx.mount.mkdir(d)
    ctx.time_worker(wid, "createsync", str(d), "20" if ctx.small else "2000")


def run_w5(ctx: Context) -> None:
    _createsync(ctx, "w5")


def run_w5v(ctx: Context) -> None:
    _createsync(ctx, "w5v")


def run_w6(ctx: Context) -> None:
    tarball = ctx.data["untar"] / "untar.tar"
    d = ctx.merged / "w6"
    ctx.mount.mkdir(d)
    ctx.cold(tarball)
    ctx.time_cmd("w6", ["tar", "-C", str(d), "-xf", str(tarball)])


def run_w7(ctx: Context) -> None:
    ctx.cold()
    ctx.time_cmd("w7", ["rm", "-rf", str(ctx.merged / "small" / "g0")])
    if ctx.mount.exists(ctx.merged / "small" / "g0"):
        raise WorkloadError("w7: small/g0 is still there after rm -rf")


def run_w9(ctx: Context) -> None:
    ctx.cold()
    step = ctx.time_worker("w9", "statlist", str(ctx.merged), str(ctx.data["stack"] / "paths.txt"))
    step.info.pop("paths", None)


def run_w10(ctx: Context) -> None:
    """Not on a mount: ctx.impl is IMPORT_BASELINE or IMPORT_OURS."""
    tarball = ctx.data["import"] / "layer.tar"
    out = ctx.scratch / "w10"
    (out / "tree").mkdir(parents=True)
    try:
        ctx.cold()
        if ctx.impl == IMPORT_BASELINE:
            # The store makes what it imports durable with one syncfs; so does the baseline.
            ctx.time_cmd("w10", ["bash", "-c", 'sha256sum "$1" >/dev/null && tar -C "$2" -xf "$1" && sync -f "$2"',
                                 "w10", str(tarball), str(out / "tree")])
        else:
            ctx.time_cmd("w10", [ctx.layers_exe, "--root", str(out / "root"), "--runroot", str(out / "run"),
                                 "import", "-q", str(tarball)])
    finally:
        shutil.rmtree(out, ignore_errors=True)


IMPORT_BASELINE = "tar -x + sha256sum"
IMPORT_OURS = "layers import"

GROUPS = {g.name: g for g in (
    Group("w1", (Workload("w1", "find stat storm, cold", "<= 1.0"),
                 Workload("w1w", "find stat storm, warm", "<= 1.0")), ("lower",), run_w1),
    Group("w2", (Workload("w2", "read every file (tar | cat), cold", "<= 1.5"),), ("lower",), run_w2),
    Group("w3", (Workload("w3", "sequential read 256 MiB, cold", "<= 1.0"),
                 Workload("w3r", "4 KiB random reads, cold", "<= 1.0")), ("lower",), run_w3),
    Group("w4", (Workload("w4", "copy-up: append 1 byte to 2,000 files", "<= 1.2"),), ("lower",), run_w4),
    Group("w5", (Workload("w5", "create+4 KiB+fsync+unlink x 2,000", "<= 2.0"),), ("lower",), run_w5),
    Group("w5v", (Workload("w5v", "the same, volatile", "<= 1.5"),), ("lower",), run_w5v, volatile=True),
    Group("w6", (Workload("w6", "untar 40 MB", "<= 2.0"),), ("lower", "untar"), run_w6),
    Group("w7", (Workload("w7", "rm -rf lower subtree (~4,000 entries)", "<= 0.5"),), ("lower",), run_w7),
    Group("w9", (Workload("w9", "64-layer stack: stat every path, cold", "<= 0.7"),), ("stack",), run_w9,
          lowers="stack"),
    Group("w10", (Workload("w10", "import 200 MB layer tar", ">= 0.8 throughput"),), ("import",), run_w10,
          lowers=""),
)}

WORKLOAD_GROUP = {w.id: g.name for g in GROUPS.values() for w in g.workloads}

# Measured on every mount of the run (mounts.py), whatever the workload; their
# targets are in seconds of fsd's median, not ratios.
LIFECYCLE = (Workload("mount", "mount: start until the root answers", "<= 0.1 s"),
             Workload("umount", "unmount: fusermount3 -u until the daemon exited", "<= 0.1 s"))

# The podman section (podman.py): each daemon as podman's mount_program.
PODMAN = (Workload("p1", "podman run --rm IMG true", "<= 1.2"),
          Workload("p2", "find / -xdev; ls -lR /usr in a container", "<= 1.0"),
          Workload("p3", "podman build: 3 RUN steps write, rename, delete files", "<= 1.0"))
