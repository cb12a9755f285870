"""Mount table, fsd processes, mounting and unmounting for tests.

Everything here works from /proc and the command line; nothing stats a
mountpoint to find out whether it is mounted (a hung daemon would hang that
stat). Every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUSECTL = Path("/sys/fs/fuse/connections")
FSD_FSTYPE = os.environ.get("STRATA_FSD_FSTYPE", "fuse.fsd")


# -- environment -------------------------------------------------------------

def fsd_executable() -> str:
    """The fsd console script of the venv running the tests, else the repo's.

    $STRATA_FSD overrides it (with $STRATA_FSD_FSTYPE, the type its mounts show
    in mountinfo) to run the same tests against another implementation."""
    if os.environ.get("STRATA_FSD"):
        return os.environ["STRATA_FSD"]
    here = Path(sys.executable).parent / "fsd"
    if here.exists():
        return str(here)
    return str(REPO / ".venv" / "bin" / "fsd")


def why_no_fuse() -> str | None:
    """None if real FUSE mounts can be made here, else the reason."""
    if os.geteuid() != 0:
        return "needs root (real FUSE and overlay mounts)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    if not os.path.exists(fsd_executable()):
        return f"fsd is not installed at {fsd_executable()} (run scripts/install)"
    return None


def why_no_kernel_overlay() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount the kernel overlay"
    if not _has_fs("overlay"):
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if not _has_fs("overlay"):
            return "the kernel has no overlay filesystem"
    return None


def _has_fs(name: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == name for line in f if line.strip())


# -- mount table ---------------------------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    dev: str  # "major:minor"
    options: str  # per-mount options, e.g. "ro,nosuid,nodev,relatime"
    super_options: str

    @property
    def minor(self) -> int:
        return int(self.dev.split(":")[1])


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            pre, _, post = line.partition(" - ")
            a, b = pre.split(), post.split()
            out.append(MountEntry(_unescape(a[4]), b[0], _unescape(b[1]), a[2], a[5],
                                  b[2] if len(b) > 2 else ""))
    return out


def mounts_at(path) -> list[MountEntry]:
    p = os.path.abspath(os.fspath(path))
    return [m for m in mount_table() if m.mountpoint == p]


def is_mounted(path, fstype: str | None = None) -> bool:
    return any(fstype is None or m.fstype == fstype for m in mounts_at(path))


def wait_for(cond, timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(interval)


# -- processes -----------------------------------------------------------------

def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def pids_with_arg(*args) -> list[int]:
    """Live processes (not us) with one of args among their argv: the daemons
    of a mountpoint (give it as it was passed to fsd)."""
    want = {os.fsencode(os.fspath(a)) for a in args}
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if want.intersection(argv) and alive(int(d)):
            out.append(int(d))
    return sorted(out)


def describe_process(pid: int) -> str:
    """cmdline, state and each thread's kernel wait channel: why a process is stuck."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        threads = []
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            t = f"/proc/{pid}/task/{tid}"
            threads.append(f"{tid} {open(f'{t}/comm').read().strip()} "
                           f"state {_proc_state(int(tid))} wchan {open(f'{t}/wchan').read() or '-'}")
    except OSError as e:
        return f"pid {pid}: gone ({e.strerror})"
    cmd = " ".join(os.fsdecode(a) for a in argv if a)[:300]
    return f"pid {pid} [{cmd}] state {_proc_state(pid)}; threads: " + "; ".join(threads)


def wait_exited(pids, timeout: float) -> list[int]:
    """Wait until every pid is gone; return the ones still alive."""
    pids = list(pids)
    wait_for(lambda: not any(alive(p) for p in pids), timeout)
    return [p for p in pids if alive(p)]


def namespaces_holding(dev: str) -> list[str]:
    """Other mount namespaces where the mount of device dev ("0:NN") is still
    mounted. Such a copy (a namespace made by unshare -m, say, while the mount
    existed) keeps a FUSE connection, and so its daemon, alive after the mount
    is gone from ours: nothing the daemon could know about."""
    mine = os.readlink("/proc/self/ns/mnt")
    seen, out = {mine}, []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{d}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{d}/mountinfo") as f:
                held = any(line.split()[2] == dev for line in f)
        except OSError:
            continue
        if held:
            out.append(f"{ns} (first seen in {describe_process(int(d)).partition(';')[0]})")
    return out


def wait_daemon_exit(pids, devs, timeout: float) -> tuple[list[int], str]:
    """Wait for a daemon to exit after its mount went away; (still alive, note).

    When the mount lives on in another mount namespace, the connection is
    aborted (as the last unmount would) and the note says where it was held."""
    left = wait_exited(pids, timeout)
    note = ""
    if left:
        held = [h for dev in devs for h in namespaces_holding(dev)]
        if held:
            note = "the mount was still held in other mount namespaces: " + "; ".join(held)
            for dev in devs:
                fuse_abort(int(dev.split(":")[1]))
            left = wait_exited(left, 5)
    return left, note


def kill_all(pids, timeout: float = 3.0):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if not wait_exited(pids, timeout):
            return


# -- running fsd ---------------------------------------------------------------

@dataclass
class Result:
    argv: list[str]
    returncode: int | None  # None: timed out (and killed)
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}---")


def run_fsd(args, cwd=None, timeout: float = 30.0, env=None) -> Result:
    """Run `fsd ARGS` to completion. Output goes to files, not pipes, so that a
    daemon that keeps the descriptors open cannot make this wait."""
    argv = [fsd_executable(), *map(os.fspath, args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:  # the caller's cleanup finds daemons by argv
            p.kill()
            p.wait()
            rc = None
        out.seek(0)
        err.seek(0)
        return Result(argv, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def escape_lowerdir(path) -> str:
    return os.fspath(path).replace(":", "\\:")


def overlay_opts(lowers, upper=None, work=None, extra=()) -> list[str]:
    opts = ["lowerdir=" + ":".join(escape_lowerdir(p) for p in lowers)]
    if upper is not None:
        opts.append(f"upperdir={os.fspath(upper)}")
    if work is not None:
        opts.append(f"workdir={os.fspath(work)}")
    opts.extend(extra)
    return opts


# -- unmounting ------------------------------------------------------------------

def _fusectl(minor: int) -> Path:
    """/sys/fs/fuse/connections/MINOR, mounting the fusectl filesystem if need be."""
    if FUSECTL.exists() and not any(m.fstype == "fusectl" for m in mount_table()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], capture_output=True)
    return FUSECTL / str(minor)


def fuse_abort(minor: int) -> bool:
    """Abort a FUSE connection: pending requests fail ECONNABORTED, later ones ENOTCONN."""
    if not FUSECTL.exists():
        return False
    try:
        (_fusectl(minor) / "abort").write_text("1")
        return True
    except OSError:
        return False


def fuse_waiting(minor: int) -> int:
    """Requests of a FUSE connection sent and not yet answered, those the daemon
    has not read yet included."""
    return int((_fusectl(minor) / "waiting").read_text())


def unmount_fuse(mnt, pids=(), timeout: float = 10.0) -> list[str]:
    """Unmount a FUSE mount and make sure its daemon processes have exited.

    fusermount3 -u, else umount -l; a daemon still running after that gets its
    connection aborted, then SIGTERM, then SIGKILL. Returns what went wrong
    (empty when the mount went away and the daemon exited by itself)."""
    mnt = os.path.abspath(os.fspath(mnt))
    problems = []
    entries = [m for m in mounts_at(mnt) if m.fstype.startswith("fuse")]
    if entries:
        try:
            r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True, timeout=timeout)
            if r.returncode:
                problems.append(f"fusermount3 -u {mnt} failed: {r.stderr.strip()}")
        except subprocess.TimeoutExpired:
            problems.append(f"fusermount3 -u {mnt} hung")
        if mounts_at(mnt):
            for m in entries:
                fuse_abort(m.minor)
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=timeout)
    pids = sorted(set(pids) | set(pids_with_arg(mnt)))
    left, _ = wait_daemon_exit(pids, [m.dev for m in entries], timeout)
    if left:
        problems.append(f"daemon pid(s) {left} still running {timeout:.0f}s after unmount; killed. "
                        + " | ".join(describe_process(p) for p in left))
        for m in entries:
            fuse_abort(m.minor)
        kill_all(left)
    if mounts_at(mnt):
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=timeout)
        if mounts_at(mnt):
            problems.append(f"{mnt} still mounted after cleanup")
    return problems


def unmount_plain(mnt, timeout: float = 30.0) -> list[str]:
    """Unmount a kernel mount (umount, else umount -l)."""
    mnt = os.path.abspath(os.fspath(mnt))
    problems = []
    while mounts_at(mnt):
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            problems.append(f"umount {mnt} failed: {r.stderr.strip()}; used umount -l")
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=timeout)
            break
    return problems
