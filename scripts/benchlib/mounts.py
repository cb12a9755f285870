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
from pathlib import Path

FUSECTL = Path("/sys/fs/fuse/connections")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MOUNT_TIMEOUT = 60.0
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


def mount_table() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, dev "major:minor") of every mount we can see."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for raw in f:
            pre, _, post = raw.decode("utf-8", "surrogateescape").rstrip("\n").partition(" - ")
            a, b = pre.split(), post.split()
            out.append((_unescape(a[4]), b[0], a[2]))
    return out


def mounts_at(path) -> list[tuple[str, str, str]]:
    p = os.path.abspath(os.fspath(path))
    return [m for m in mount_table() if m[0] == p]


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


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _wait_gone(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def drop_caches() -> None:
    """Write back dirty data, then drop the page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- one mount -----------------------------------------------------------------------

class Mount:
    """One live mount of an implementation, with its fresh upper and workdir."""

    def __init__(self, impl: "Implementation", lowers: list[str], scratch: Path,
                 volatile: bool, cwd: str | None, deadline: float | None):
        self.impl = impl
        self.lowers = lowers
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
        self._watchdog: threading.Timer | None = None

    # The option string all three take; lowers may be relative to self.cwd.
    def options(self) -> str:
        lowers = ":".join(p.replace("\\", "\\\\").replace(":", "\\:") for p in self.lowers)
        opts = [f"lowerdir={lowers}", f"upperdir={self.upper}", f"workdir={self.work}"]
        if self.volatile:
            opts.append("volatile")
        return ",".join(opts)

    def daemon_cpu(self) -> float | None:
        """CPU seconds the daemon used so far; None for the kernel overlay."""
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
        LIVE.append(self)
        try:
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

    def _start(self) -> None:
        if not self.impl.fuse:
            r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", self.options(), str(self.merged)],
                               cwd=self.cwd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
            if r.returncode:
                raise MountError(f"kernel overlay: mount failed: {r.stderr.strip()}")
            self.dev = mounts_at(self.merged)[0][2]
            return
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.impl.executable, "-f", "-o", self.options(), str(self.merged)],
                cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        end = time.monotonic() + MOUNT_TIMEOUT
        while True:
            found = [m for m in mounts_at(self.merged) if m[1].startswith("fuse")]
            if found:
                self.dev = found[0][2]
                return
            if self.proc.poll() is not None:
                raise MountError(f"{self.impl.name} exited {self.proc.returncode} before mounting: "
                                 + self._log_tail())
            if time.monotonic() > end:
                raise MountError(f"{self.impl.name} did not mount within {MOUNT_TIMEOUT:.0f}s: "
                                 + self._log_tail())
            time.sleep(0.02)

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
        if self.impl.fuse:
            if mounts_at(merged):
                try:
                    r = subprocess.run(["fusermount3", "-u", merged], capture_output=True, text=True,
                                       timeout=UNMOUNT_TIMEOUT)
                    if r.returncode:
                        problems.append(f"fusermount3 -u failed: {r.stderr.strip()}")
                except subprocess.TimeoutExpired:
                    problems.append("fusermount3 -u hung")
            wait = 2.0 if self.expired else UNMOUNT_TIMEOUT  # a hung daemon will not exit
            if self.proc is not None and not _wait_gone(self.proc, wait):
                problems.append(f"daemon {self.proc.pid} still running {wait:.0f}s "
                                "after unmount; aborted and killed")
                self.abort()
                self.proc.kill()
                _wait_gone(self.proc, UNMOUNT_TIMEOUT)
        for _ in range(3):
            if not mounts_at(merged):
                break
            r = subprocess.run(["umount", merged], capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT)
            if r.returncode:
                problems.append(f"umount failed: {r.stderr.strip()}")
                self.abort()
                subprocess.run(["umount", "-l", merged], capture_output=True, timeout=UNMOUNT_TIMEOUT)
        if mounts_at(merged):
            problems.append(f"{merged} is still mounted")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in LIVE:
            LIVE.remove(self)
        return problems


class Implementation:
    """An overlay implementation: the kernel's, or a FUSE daemon's executable."""

    def __init__(self, name: str, executable: str | None):
        self.name = name
        self.executable = executable  # None: the kernel overlay

    @property
    def fuse(self) -> bool:
        return self.executable is not None

    def open_mount(self, lowers: list[str], scratch: Path, volatile: bool = False,
                   cwd: str | None = None, deadline: float | None = None) -> Mount:
        return Mount(self, lowers, scratch, volatile, cwd, deadline)


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
