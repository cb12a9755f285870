"""The `fuse` driver: fsd as a mount program, exactly as containers/storage
runs fuse-overlayfs.

Level 3: imports `errors`, `records`, `drivers.base`.

`fsd -o lowerdir=TOP:…:BOTTOM,upperdir=U,workdir=W MOUNTPOINT` returns 0 once
the mount is live, the daemon staying in the background; on failure it
prints one `fsd: …` line and exits non-zero.  `fusermount3 -u` unmounts and
the daemon exits.  In option values `\\` `:` `,` are escaped with `\\`.
A container's limits go to fsd as `quota_bytes=N,quota_inodes=N`: fsd counts
every change of the upper, so they hold on any filesystem, rootless too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from ..errors import DriverError, MountFailed
from ..records import Quota
from .base import Driver, Mounted, mount_fstype, pid_alive

MOUNT_TIMEOUT = 60.0


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


class FuseDriver(Driver):
    name = "fuse"

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
        merged = os.path.join(cdir, "merged")
        argv = [self.program(), "-o", self.options(cdir, lowers, quota), merged]
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
