"""The `overlay` driver: the kernel's overlayfs, where this process may mount it.

It cannot limit what a container writes (that would take an XFS project
quota on the store's filesystem): a container with limits is refused
(`Driver.check_quota`).

Layers of a store using this driver are extracted in the kernel's marker
form (`layout.FORM_OVERLAY`: char dev 0/0 whiteouts, trusted.overlay.opaque).
mount(8) runs with the store root as working directory and all dirs given
relative to it: no escaping needed and long layer stacks still fit the one
page the kernel accepts for options.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .. import layout
from ..errors import DriverError, MountFailed
from ..records import Quota
from .base import Driver, Mounted, mount_fstype

MAX_OPTIONS = 4000


class OverlayDriver(Driver):
    name = "overlay"
    form = layout.FORM_OVERLAY

    def __init__(self, root: str, mountopt: str = ""):
        self.root = root
        self.mountopt = mountopt

    def check_usable(self) -> None:
        if os.geteuid() != 0:
            raise DriverError(self.name, "the kernel overlay needs root; use fuse")
        try:
            with open("/proc/filesystems") as f:
                if not any(line.split()[-1:] == ["overlay"] for line in f):
                    raise DriverError(self.name, "the kernel has no overlay filesystem")
        except OSError:
            pass
        if shutil.which("mount") is None:
            raise DriverError(self.name, "mount(8) not found")

    def options(self, cdir: str, lowers: list[str]) -> str:
        rel = [os.path.relpath(p, self.root) for p in lowers]
        crel = os.path.relpath(cdir, self.root)
        for p in rel + [crel]:
            if any(c in p for c in ":,\\") or p.startswith(".."):
                raise DriverError(self.name, f"path {p!r} cannot be passed to the kernel")
        opts = [
            "lowerdir=" + ":".join(rel),
            f"upperdir={crel}/upper",
            f"workdir={crel}/work",
        ]
        if self.mountopt:
            opts.append(self.mountopt)
        text = ",".join(opts)
        if len(text) > MAX_OPTIONS:
            raise DriverError(self.name, f"{len(lowers)} layers are too many for one "
                                         "overlay mount")
        return text

    def mount(self, cdir: str, lowers: list[str], quota: Quota = Quota()) -> Mounted:
        self.check_quota(quota)
        merged = os.path.join(cdir, "merged")
        argv = ["mount", "-t", "overlay", "overlay", "-o", self.options(cdir, lowers),
                os.path.relpath(merged, self.root)]
        proc = subprocess.run(argv, cwd=self.root, stdin=subprocess.DEVNULL,
                              capture_output=True)
        if proc.returncode != 0:
            text = proc.stderr.decode(errors="replace").strip().splitlines()
            raise MountFailed(self.name, merged, text[-1] if text else
                              f"mount exited with {proc.returncode}")
        return Mounted(merged, None)

    def umount(self, cdir: str, mounted: Mounted) -> None:
        if mount_fstype(mounted.mountpoint) is None:
            return
        proc = subprocess.run(["umount", mounted.mountpoint], stdin=subprocess.DEVNULL,
                              capture_output=True)
        if proc.returncode != 0 and mount_fstype(mounted.mountpoint) is not None:
            text = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DriverError(self.name, text[-1] if text else
                              f"cannot unmount {mounted.mountpoint}")
