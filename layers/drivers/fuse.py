"""The `fuse` driver: fsd as a mount program, exactly as containers/storage
runs fuse-overlayfs.

`fsd -o lowerdir=TOP:…:BOTTOM,upperdir=U,workdir=W MOUNTPOINT` returns 0 once
the mount is live, the daemon staying in the background; on failure it
prints one `fsd: …` line and exits non-zero.  `fusermount3 -u` unmounts and
the daemon exits.  In option values `\\` `:` `,` are escaped with `\\`.
A container's limits go to fsd as `quota_bytes=N,quota_inodes=N`: fsd counts
every change of the upper, so they hold on any filesystem, rootless too.

`frozen` holds a mounted container's upper still while the store reads it,
by fsd's freeze protocol (fsd/freeze.py): only a daemon that catches
SIGUSR1 and SIGUSR2 is asked (another mount program would die of them);
our pid in `WORK/fsd/freeze`, SIGUSR1; fsd answers with `WORK/fsd/frozen`
once no change is in flight and none can start; SIGUSR2 thaws, and so does
our exit.  Before that a
syncfs of the mount hands fsd what the kernel still holds (pages written
through a shared mmap).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator

from ..errors import DriverError, MountFailed
from ..records import Quota
from .base import Driver, Mounted, mount_fstype, pid_alive

MOUNT_TIMEOUT = 60.0
FREEZE_TIMEOUT = 30.0     # for fsd to let the changes in flight end
# fsd's freeze protocol: its directory in the workdir and the two files there
WORK_AREA, FREEZE_REQUEST, FROZEN = "fsd", "freeze", "frozen"
LOG = "fsd.log"           # in the container's directory: what fsd logs for its mount


def escape_option(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def find_mount_program(configured: str | None) -> str | None:
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "fsd")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("fsd")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _daemon_pid(mountpoint: str) -> int | None:
    """The pid of the process serving `mountpoint` (found by its argv)."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and argv[-1] == b"" and argv[-2] == os.fsencode(mountpoint) \
                and any(a.startswith(b"lowerdir=") or b",lowerdir=" in a
                        or a.startswith(b"-olowerdir") for a in argv):
            return int(name)
    return None


def _syncfs(path: str) -> None:
    """syncfs(2) of the filesystem at `path` (Python has no os.syncfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _catches(pid: int, signals: tuple[int, ...]) -> bool:
    """Whether process `pid` has handlers for all `signals` (its SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f
                        if line.startswith("SigCgt:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    return all(mask >> (s - 1) & 1 for s in signals)


def _holds(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except FileNotFoundError:
        return False


class FuseDriver(Driver):
    name = "fuse"
    can_freeze = True

    def __init__(self, mount_program: str | None = None, mountopt: str = "",
                 override_stat: bool = False):
        self.configured = mount_program
        self.mountopt = mountopt
        self.override_stat = override_stat

    def program(self) -> str:
        exe = find_mount_program(self.configured)
        if exe is None:
            raise DriverError(self.name, f"mount program {self.configured or 'fsd'} "
                                         "not found")
        return exe

    def check_usable(self) -> None:
        self.program()
        if not os.path.exists("/dev/fuse"):
            raise DriverError(self.name, "/dev/fuse is missing")

    def check_quota(self, quota: Quota) -> None:
        pass

    def options(self, cdir: str, lowers: list[str], quota: Quota = Quota()) -> str:
        opts = [
            "lowerdir=" + ":".join(escape_option(p) for p in lowers),
            "upperdir=" + escape_option(os.path.join(cdir, "upper")),
            "workdir=" + escape_option(os.path.join(cdir, "work")),
        ]
        if self.configured is None or os.path.basename(self.configured) == "fsd":
            # fsd's warnings and errors (an EIO's why, a lazy file it could not
            # fetch) beside the container's upper: syslog, fsd's default once
            # detached, is lost where no /dev/log listens (containers, CI)
            opts.append("logfile=" + escape_option(os.path.join(cdir, LOG)))
        if self.override_stat:
            opts.append("xattr_permissions=2")
        if self.mountopt:
            opts.append(self.mountopt)
        if quota.bytes is not None:
            opts.append(f"quota_bytes={quota.bytes}")
        if quota.inodes is not None:
            opts.append(f"quota_inodes={quota.inodes}")
        return ",".join(opts)

    def mount(self, cdir: str, lowers: list[str], quota: Quota = Quota()) -> Mounted:
        return self._mount(self.options(cdir, lowers, quota), os.path.join(cdir, "merged"))

    def mount_read_only(self, lowers: list[str], mountpoint: str,
                        extra: tuple[str, ...] = ()) -> Mounted:
        """`lowers` merged at `mountpoint`, with no upper: read-only."""
        lowerdir = "lowerdir=" + ":".join(escape_option(p) for p in lowers)
        return self._mount(",".join([lowerdir, *extra]), mountpoint)

    def _mount(self, options: str, merged: str) -> Mounted:
        argv = [self.program(), "-o", options, merged]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise MountFailed(self.name, merged, f"{argv[0]} did not return within "
                                                 f"{MOUNT_TIMEOUT:g}s") from None
        except OSError as e:
            raise MountFailed(self.name, merged, f"{argv[0]}: {e.strerror}") from None
        if proc.returncode != 0:
            reason = _last_line(proc.stderr.decode(errors="replace")) \
                or _last_line(proc.stdout.decode(errors="replace")) \
                or f"{argv[0]} exited with {proc.returncode}"
            raise MountFailed(self.name, merged, reason)
        if mount_fstype(merged) is None:
            raise MountFailed(self.name, merged, f"{argv[0]} exited 0 but nothing "
                                                 "is mounted")
        return Mounted(merged, _daemon_pid(merged))

    @contextlib.contextmanager
    def frozen(self, cdir: str, mounted: Mounted) -> Iterator[None]:
        """The upper as fsd had written it at one instant, held so while the
        context lasts (module doc).  DriverError when fsd does not answer."""
        if mounted.pid is None:
            raise DriverError(self.name, f"no daemon pid known for {mounted.mountpoint}")
        area = os.path.join(cdir, "work", WORK_AREA)
        if not _catches(mounted.pid, (signal.SIGUSR1, signal.SIGUSR2)):
            raise DriverError(self.name, f"the daemon of {mounted.mountpoint} (pid "
                                         f"{mounted.pid}) cannot freeze the upper (not an "
                                         "fsd that can); umount it before commit")
        frozen = os.path.join(area, FROZEN)
        me = f"{os.getpid()}\n".encode()
        _syncfs(mounted.mountpoint)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(frozen)                    # a crashed daemon's, or a dead reader's
        request = os.path.join(area, FREEZE_REQUEST)
        with open(request + ".tmp", "wb") as f:      # whole, as fsd reads it
            f.write(me)
        os.rename(request + ".tmp", request)
        try:
            os.kill(mounted.pid, signal.SIGUSR1)
            deadline = time.monotonic() + FREEZE_TIMEOUT
            while not _holds(frozen, me):
                if not pid_alive(mounted.pid):
                    raise DriverError(self.name, f"fsd (pid {mounted.pid}) ended while "
                                                 "freezing the upper")
                if time.monotonic() > deadline:
                    raise DriverError(self.name, f"fsd (pid {mounted.pid}) did not freeze "
                                                 f"the upper within {FREEZE_TIMEOUT:g}s")
                time.sleep(0.005)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mounted.pid, signal.SIGUSR2)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request)               # fsd removes it too once thawed

    def umount(self, cdir: str, mounted: Mounted, lazy: bool = False) -> None:
        if mount_fstype(mounted.mountpoint) is None:
            return
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is None:
            raise DriverError(self.name, "fusermount3 not found")
        argv = [tool, "-u"] + (["-z"] if lazy else []) + [mounted.mountpoint]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0 and mount_fstype(mounted.mountpoint) is not None:
            raise DriverError(self.name, _last_line(proc.stderr.decode(errors="replace"))
                              or f"cannot unmount {mounted.mountpoint}")
        self._wait_daemon(mounted.pid)

    @staticmethod
    def _wait_daemon(pid: int | None, timeout: float = 5.0) -> None:
        """The daemon exits after the unmount; give it a moment to finish.  A
        detached daemon is reaped by init, maybe much later: a zombie is done."""
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.01)

    def clean_dead(self, cdir: str, mounted: Mounted) -> None:
        if mounted.pid is not None:
            try:
                os.kill(mounted.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        self.umount(cdir, Mounted(mounted.mountpoint, None), lazy=True)
