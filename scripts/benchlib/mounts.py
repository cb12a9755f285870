"""Mounting the three implementations on the same lowers, and always unmounting.

`Implementation.open_mount(lowers, scratch, volatile=, cwd=, deadline=)`
returns a `Mount` to use as a context manager: on entry the merged view is
live at `mount.merged`, with an upper and a workdir made fresh under
`scratch`; on exit (normal, exception or Ctrl-C) it is unmounted, its daemon
has exited and the upper, work and mountpoint directories are removed. Every
live mount is also in `LIVE`, which `cleanup_all()` empties at exit as a last
resort. A FUSE mount still open `deadline` seconds after it came up has its
connection aborted (`mount.expired`): whatever hangs on it, the bench
included, gets an error instead of waiting forever.

Nothing here stats a mountpoint to learn whether it is mounted: the mount
table in /proc says so, and a hung daemon cannot hang a read of it. Every wait
has a deadline. FUSE daemons run in the foreground (`-f`), as our children, in
a session of their own: the terminal's Ctrl-C reaches the bench, which
unmounts; and their CPU time can be read from /proc while they serve.

Each mount records how long it took to come up (`mount.live_seconds`: from
starting the daemon, or mount(8), until a stat of its root is answered) and to
go (`mount.unmount_seconds`: from `fusermount3 -u`, or umount(8), until the
daemon has exited).

A rootless implementation (`Implementation(..., as_user=AsUser(...))`) runs
its daemon as an unprivileged user in the private mount namespace of an agent
(tests/support/rootless.py), where /dev/fuse is usable; every command that
must see its mount runs there as that user (`mount.command(argv)`), and the
mount table is the agent's.

An implementation that serves a copy (`Implementation(..., serves_copy=True)`:
the pyfuse3 floor, floorfs.py) is given, as its upperdir, the merged view
of the lowers made before it starts: hard links to the one lower's files
(except the `private` paths, which a workload writes in place: those are
copies, so that the cached data never changes), or for a stack of lowers a
copy of what the kernel overlay shows of them. That preparation is not part
of `live_seconds`.

Errors: `MountError` (the mount did not come up; the daemon's output is in
its message). Unmount problems are returned as text, never raised, so that
the cleanup of one mount cannot keep another from being cleaned.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FUSECTL = Path("/sys/fs/fuse/connections")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOUNT_TIMEOUT = 60.0
SLOW_EXIT = 1.0  # a daemon not gone this long after its unmount: where_waiting says why
UNMOUNT_TIMEOUT = 30.0

LIVE: list["Mount"] = []


class MountError(Exception):
    """A mount did not come up; str(self) says why, with the daemon's output."""


# -- signals ---------------------------------------------------------------------

@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM are ignored inside: a cleanup runs to its end."""
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_term() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, through every finally."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


# -- the mount table and processes ---------------------------------------------------

def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table(pid: int | str = "self") -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, dev "major:minor") of every mount in the mount
    namespace of process `pid`; [] if it is gone."""
    out = []
    try:
        f = open(f"/proc/{pid}/mountinfo", "rb")
    except OSError:
        return []
    with f:
        for raw in f:
            pre, _, post = raw.decode("utf-8", "surrogateescape").rstrip("\n").partition(" - ")
            a, b = pre.split(), post.split()
            out.append((_unescape(a[4]), b[0], a[2]))
    return out


def mounts_at(path, pid: int | str = "self") -> list[tuple[str, str, str]]:
    p = os.path.abspath(os.fspath(path))
    return [m for m in mount_table(pid) if m[0] == p]


def mounts_under(path) -> list[str]:
    """Mountpoints at or below path, deepest first."""
    p = os.path.abspath(os.fspath(path))
    found = {m[0] for m in mount_table() if m[0] == p or m[0].startswith(p + "/")}
    return sorted(found, key=len, reverse=True)


def fuse_abort(dev: str) -> None:
    """Abort a FUSE connection: its pending and later requests fail at once."""
    try:
        (FUSECTL / dev.split(":")[1] / "abort").write_text("1")
    except OSError:
        pass


@dataclass(frozen=True)
class CpuSample:
    """A process's CPU time so far: user + system seconds of all its threads,
    dead ones included (/proc/PID/stat, in clock ticks), and the nanoseconds
    of each live thread (/proc/PID/task/*/schedstat)."""
    ticks_seconds: float
    thread_ns: dict

    def seconds_since(self, earlier: "CpuSample") -> float:
        """CPU seconds between two samples: to the nanosecond from the threads,
        unless one that ran meanwhile has exited (then the tick count says more)."""
        coarse = self.ticks_seconds - earlier.ticks_seconds
        fine = sum(ns - earlier.thread_ns.get(tid, 0) for tid, ns in self.thread_ns.items()) / 1e9
        return fine if coarse <= fine + 2 / CLK_TCK else coarse


def process_cpu(pid: int) -> CpuSample | None:
    """The CPU time of a process so far; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    threads = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    threads[int(tid)] = int(f.read().split()[0])
            except OSError:
                pass
    except OSError:
        pass
    return CpuSample((int(fields[11]) + int(fields[12])) / CLK_TCK, threads)


def where_waiting(pid: int) -> str:
    """What the threads of a process are doing, for a report: state, and for a
    thread asleep in the kernel the top of its kernel stack ("" if gone)."""
    seen: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ""
    for tid in tids:
        task = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{task}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        try:
            with open(f"{task}/stack") as f:
                frames = [line.split()[-1].split("+")[0] for line in f if line.strip()]
        except OSError:
            frames = []
        text = state + (" in " + " < ".join(frames[:4]) if frames and state != "R" else "")
        seen[text] = seen.get(text, 0) + 1
    return "; ".join(f"{n}x {text}" if n > 1 else text for text, n in seen.items())


def _wait_gone(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _run(argv: list[str], cwd: str | None = None) -> None:
    """Run a preparation step; MountError with its output if it fails."""
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT * 10)
    if r.returncode:
        raise MountError(f"{' '.join(argv[:3])} ...: exit {r.returncode}: {r.stderr.strip()[-300:]}")


def drop_caches() -> None:
    """Write back dirty data, then drop the page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- an unprivileged user's namespace ---------------------------------------------------

class AsUser:
    """Commands run as `user` in the mount namespace of `agent` (an Agent of
    tests/support/rootless.py, userns=False), where the user's FUSE mounts live."""

    def __init__(self, user, agent, box):
        self.user = user
        self.agent = agent
        self.box = box  # its Sandbox: where the user's scratch directories go

    def command(self, argv: list[str], cwd=None, as_root: bool = False) -> list[str]:
        """argv to exec from here so that it runs in the namespace (in `cwd`),
        as the user unless `as_root`. The same process all along: its pid is
        the command's."""
        out = ["nsenter", f"--mount=/proc/{self.agent.pid}/ns/mnt", f"--wd={cwd or '/'}", "--"]
        if not as_root:
            out += ["setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}", "--init-groups", "--"]
        return out + [os.fspath(a) for a in argv]

    def own(self, *paths: Path) -> None:
        for p in paths:
            os.chown(p, self.user.uid, self.user.gid)


# -- one mount -----------------------------------------------------------------------

class Mount:
    """One live mount of an implementation, with its fresh upper and workdir."""

    def __init__(self, impl: "Implementation", lowers: list[str], scratch: Path,
                 volatile: bool, cwd: str | None, deadline: float | None, private: tuple[str, ...] = ()):
        self.impl = impl
        self.lowers = lowers
        self.private = private
        self.volatile = volatile
        self.cwd = cwd
        self.dir = scratch
        self.upper = scratch / "upper"
        self.work = scratch / "work"
        self.merged = scratch / "merged"
        self.log = scratch.parent / f"{scratch.name}.{impl.name}.log"
        self.proc: subprocess.Popen | None = None
        self.dev: str | None = None
        self.deadline = deadline
        self.expired = False
        self.live_seconds: float | None = None
        self.unmount_seconds: float | None = None
        self.unmount_command_seconds: float | None = None  # of that, fusermount3 -u / umount(8) alone
        self.slow_exit: str | None = None  # where the daemon waited when it was slow to exit
        self._watchdog: threading.Timer | None = None

    @property
    def as_user(self) -> AsUser | None:
        return self.impl.as_user

    @property
    def _ns(self) -> int | str:
        """Whose mount table shows this mount."""
        return self.as_user.agent.pid if self.as_user else "self"

    @property
    def connection(self) -> int | None:
        """The FUSE connection number (the minor of the mount's device); None for the kernel overlay."""
        return int(self.dev.split(":")[1]) if self.dev and self.impl.fuse else None

    # The option string all three take; lowers may be relative to self.cwd.
    def options(self) -> str:
        lowers = ":".join(p.replace("\\", "\\\\").replace(":", "\\:") for p in self.lowers)
        opts = [f"lowerdir={lowers}", f"upperdir={self.upper}", f"workdir={self.work}"]
        if self.volatile:
            opts.append("volatile")
        return ",".join(opts)

    def command(self, argv: list[str], cwd=None) -> list[str]:
        """argv as it must be run to see this mount as its owner."""
        return self.as_user.command(argv, cwd) if self.as_user else argv

    def lstat(self, path) -> os.stat_result:
        """os.lstat of a path in the mount, by its owner (OSError as raised there)."""
        return self.as_user.agent.stat(path) if self.as_user else os.lstat(path)

    def exists(self, path) -> bool:
        try:
            self.lstat(path)
        except FileNotFoundError:
            return False
        return True

    def mkdir(self, path) -> None:
        if self.as_user:
            self.as_user.agent.call("mkdir", os.fspath(path))
        else:
            os.mkdir(path)

    def daemon_cpu(self) -> CpuSample | None:
        """The CPU time the daemon used so far; None for the kernel overlay."""
        if self.proc is None:
            return None
        return process_cpu(self.proc.pid)

    def abort(self) -> None:
        """Make every request on this mount fail now (a workload timed out)."""
        if self.dev and self.impl.fuse:
            fuse_abort(self.dev)

    def __enter__(self) -> "Mount":
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True)
        if self.as_user:
            self.as_user.own(self.dir, self.upper, self.work, self.merged)
        LIVE.append(self)
        try:
            if self.impl.serves_copy:
                self._fill_upper()
            self._start()
            if self.deadline and self.impl.fuse:
                self._watchdog = threading.Timer(self.deadline, self._expire)
                self._watchdog.daemon = True
                self._watchdog.start()
        except BaseException:
            with signals_held():
                self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with signals_held():
            problems = self.close()
        if problems and exc[0] is None:
            raise MountError(f"{self.impl.name}: " + "; ".join(problems))

    def _expire(self) -> None:
        self.expired = True
        self.abort()

    def _fill_upper(self) -> None:
        """The upper becomes the merged view of the lowers (module doc)."""
        lowers = [os.path.join(self.cwd or "", p) for p in self.lowers]
        if len(lowers) == 1:
            _run(["cp", "-al", lowers[0] + "/.", str(self.upper)])
            for rel in self.private:
                dst = self.upper / rel
                dst.unlink()
                shutil.copy2(Path(lowers[0]) / rel, dst)
            return
        view = self.dir / "view"
        view.mkdir()
        _run(["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(self.lowers), str(view)],
             cwd=self.cwd)
        try:
            _run(["cp", "-a", str(view) + "/.", str(self.upper)])
        finally:
            _run(["umount", str(view)])
            view.rmdir()

    def _start(self) -> None:
        t0 = time.perf_counter()
        if not self.impl.fuse:
            r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", self.options(), str(self.merged)],
                               cwd=self.cwd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
            if r.returncode:
                raise MountError(f"kernel overlay: mount failed: {r.stderr.strip()}")
            self.live_seconds = time.perf_counter() - t0
            self.dev = mounts_at(self.merged)[0][2]
            return
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command([*self.impl.argv, "-f", "-o", self.options(), str(self.merged)], self.cwd),
                cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        end = time.monotonic() + MOUNT_TIMEOUT
        while True:
            found = [m for m in mounts_at(self.merged, self._ns) if m[1].startswith("fuse")]
            if found:
                self.dev = found[0][2]
                break
            if self.proc.poll() is not None:
                raise MountError(f"{self.impl.name} exited {self.proc.returncode} before mounting: "
                                 + self._log_tail())
            if time.monotonic() > end:
                raise MountError(f"{self.impl.name} did not mount within {MOUNT_TIMEOUT:.0f}s: "
                                 + self._log_tail())
            time.sleep(0.001)
        self._wait_answering(end)
        self.live_seconds = time.perf_counter() - t0

    def _wait_answering(self, end: float) -> None:
        """Until a stat of the root is answered: the daemon has answered INIT.
        In a thread, so that a daemon that never answers cannot hang the bench:
        its connection is aborted at the deadline, which ends the stat."""
        result: list = []

        def stat_root():
            try:
                result.append(self.lstat(self.merged))
            except (OSError, RuntimeError, TimeoutError) as exc:
                result.append(exc)

        t = threading.Thread(target=stat_root, daemon=True)
        t.start()
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():
            self.abort()
            t.join(10)
            raise MountError(f"{self.impl.name} mounted but did not answer within {MOUNT_TIMEOUT:.0f}s: "
                             + self._log_tail())
        if isinstance(result[0], BaseException):
            raise MountError(f"{self.impl.name}: stat of the mount's root failed: {result[0]}; "
                             + self._log_tail())

    def _log_tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return "(no output)"
        return " | ".join(text.splitlines()[-8:]) or "(no output)"

    def close(self) -> list[str]:
        """Unmount, make the daemon exit, remove the scratch dirs; what went wrong."""
        problems = []
        merged = str(self.merged)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.expired:
            problems.append(f"connection aborted {self.deadline:.0f}s after mounting (hung)")
        t0 = time.perf_counter()
        unmounted = False
        if self.impl.fuse:
            if mounts_at(merged, self._ns):
                try:
                    r = subprocess.run(self.command(["fusermount3", "-u", merged]), capture_output=True,
                                       text=True, timeout=UNMOUNT_TIMEOUT)
                    self.unmount_command_seconds = time.perf_counter() - t0
                    if r.returncode:
                        problems.append(f"fusermount3 -u failed: {r.stderr.strip()}")
                    else:
                        unmounted = True
                except subprocess.TimeoutExpired:
                    problems.append("fusermount3 -u hung")
            wait = 2.0 if self.expired else UNMOUNT_TIMEOUT  # a hung daemon will not exit
            if self.proc is not None and not _wait_gone(self.proc, SLOW_EXIT):
                self.slow_exit = where_waiting(self.proc.pid)
            if self.proc is not None and not _wait_gone(self.proc, wait):
                unmounted = False
                problems.append(f"daemon {self.proc.pid} still running {wait:.0f}s "
                                "after unmount; aborted and killed")
                self.abort()
                self.proc.kill()
                _wait_gone(self.proc, UNMOUNT_TIMEOUT)
        elif mounts_at(merged):
            r = subprocess.run(["umount", merged], capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT)
            self.unmount_command_seconds = time.perf_counter() - t0
            unmounted = r.returncode == 0
        if unmounted and not problems:
            self.unmount_seconds = time.perf_counter() - t0
        for _ in range(3):
            if not mounts_at(merged, self._ns):
                break
            umount = self.as_user.command(["umount", merged], as_root=True) if self.as_user else ["umount", merged]
            r = subprocess.run(umount, capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT)
            if r.returncode:
                problems.append(f"umount failed: {r.stderr.strip()}")
                self.abort()
                subprocess.run([*umount[:-1], "-l", merged], capture_output=True, timeout=UNMOUNT_TIMEOUT)
        if mounts_at(merged, self._ns):
            problems.append(f"{merged} is still mounted")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in LIVE:
            LIVE.remove(self)
        return problems


class Implementation:
    """An overlay implementation: the kernel's, or a FUSE daemon's executable
    (a script run by `interpreter` if given), run by root or (`as_user`) by an
    unprivileged user; `serves_copy`: one that serves its upperdir alone, made
    the merged view of the lowers first (module doc)."""

    def __init__(self, name: str, executable: str | None, as_user: AsUser | None = None,
                 interpreter: str | None = None, serves_copy: bool = False):
        self.name = name
        self.executable = executable  # None: the kernel overlay
        self.as_user = as_user
        self.interpreter = interpreter
        self.serves_copy = serves_copy

    @property
    def fuse(self) -> bool:
        return self.executable is not None

    @property
    def argv(self) -> list[str]:
        return [self.interpreter, self.executable] if self.interpreter else [self.executable]

    def open_mount(self, lowers: list[str], scratch: Path, volatile: bool = False,
                   cwd: str | None = None, deadline: float | None = None,
                   private: tuple[str, ...] = ()) -> Mount:
        return Mount(self, lowers, scratch, volatile, cwd, deadline, private)


def cleanup_all() -> list[str]:
    """Close every mount still live (an exit path that skipped a finally)."""
    problems = []
    with signals_held():
        for m in list(LIVE):
            problems += m.close()
    return problems


def unmount_leftovers(scratch_root: Path) -> list[str]:
    """Unmount what a killed earlier run left under scratch_root; what was found."""
    found = mounts_under(scratch_root)
    for mnt in found:
        for _, fstype, dev in mounts_at(mnt):
            if fstype.startswith("fuse"):
                fuse_abort(dev)
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=UNMOUNT_TIMEOUT)
    return found
