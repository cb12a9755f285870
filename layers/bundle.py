"""An OCI runtime bundle's `config.json` for a container (`layers bundle`).

`runtime_config(...)` is a pure function of what the store knows: the root
is the container's merged mount, the process comes from the image config
(Entrypoint + Cmd, Env, WorkingDir, User), the mounts are the usual /proc,
/dev, /sys ones plus the container's volumes, binds and tmpfs mounts.  When
not root, a user namespace maps the caller to root, and /sys is a bind (a
user namespace may not mount sysfs).  No cgroup settings: the runtime is run
with cgroups disabled (`crun --cgroup-manager=disabled`), which this
project's machines need.  The only rlimit, RLIMIT_NOFILE, never exceeds the
caller's hard limit, which a runtime could not raise.

A user name in the image config is looked up in the container's own
/etc/passwd and /etc/group, read beneath the root without following links.
"""

from __future__ import annotations

import os
import resource
from typing import Iterable

from .errors import LayersError, UsageError
from .fsutil import open_beneath
from .records import MountSpec

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
        "CAP_SYS_CHROOT"]     # podman's default set
NOFILE = 1 << 20


def _base_mounts(rootless: bool) -> list[dict]:
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
         + ([] if rootless else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]
    if rootless:
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    return mounts


def _mount(m: MountSpec, volume_path) -> dict:
    if m.type == "tmpfs":
        return {"destination": m.destination, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev"] + list(m.options)}
    source = volume_path(m.source) if m.type == "volume" else m.source
    options = [o for o in m.options if o not in ("bind", "rbind")]
    if "ro" not in options and "rw" not in options:
        options.append("rw")
    return {"destination": m.destination, "type": "bind", "source": source,
            "options": ["rbind"] + options}


def _lookup(root_fd: int, path: str, name: str) -> list[str] | None:
    """The fields of the `name` line of /etc/passwd or /etc/group."""
    try:
        fd = open_beneath(root_fd, path)
    except (OSError, LayersError):
        return None
    with os.fdopen(fd, "rb") as f:
        for line in f.read(1 << 20).decode(errors="replace").splitlines():
            fields = line.split(":")
            if fields and fields[0] == name and len(fields) >= 3:
                return fields
    return None


def resolve_user(user: str, rootfs: str) -> tuple[int, int]:
    """The image config's `User` (`uid`, `uid:gid`, `name`, `name:group`, …) →
    (uid, gid).  UsageError when a name is not in the container's files."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if name.isdigit():
            uid = int(name)
            entry = None
        else:
            entry = _lookup(root_fd, "etc/passwd", name)
            if entry is None or len(entry) < 4:
                raise UsageError(f"user {name!r} is not in the container's /etc/passwd")
            uid = int(entry[2])
        if group:
            if group.isdigit():
                return uid, int(group)
            gentry = _lookup(root_fd, "etc/group", group)
            if gentry is None:
                raise UsageError(f"group {group!r} is not in the container's /etc/group")
            return uid, int(gentry[2])
        if entry is None and name.isdigit():
            return uid, 0
        return uid, int(entry[3])
    except ValueError:
        raise UsageError(f"cannot read user {user!r} from the container") from None
    finally:
        os.close(root_fd)


def image_command(image_config: dict) -> tuple[list[str], list[str]]:
    """What a container of the image runs unless told otherwise: its argv
    (Entrypoint + Cmd, maybe empty) and environment (PATH always set)."""
    cfg = image_config.get("config") or {}
    argv = [str(a) for a in list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])]
    env = [str(e) for e in cfg.get("Env") or []]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    return argv, env


def runtime_config(rootfs: str, image_config: dict, mounts: Iterable[MountSpec],
                   volume_path, hostname: str, euid: int | None = None,
                   egid: int | None = None, args: list[str] | None = None) -> dict:
    """The `config.json` of a bundle whose root is `rootfs` (see module doc).
    `args` replace the image's Entrypoint + Cmd."""
    euid = os.geteuid() if euid is None else euid
    egid = os.getegid() if egid is None else egid
    rootless = euid != 0
    cfg = image_config.get("config") or {}
    default_argv, env = image_command(image_config)
    argv = args if args else default_argv
    if not argv:
        raise UsageError("the image has no command (Entrypoint/Cmd); give one")
    uid, gid = resolve_user(str(cfg.get("User") or ""), rootfs)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    linux: dict = {"namespaces": namespaces,
                   "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys",
                                   "/proc/latency_stats", "/proc/timer_list",
                                   "/proc/timer_stats", "/proc/sched_debug",
                                   "/sys/firmware", "/proc/scsi"],
                   "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                                     "/proc/sys", "/proc/sysrq-trigger"]}
    if rootless:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": euid, "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": egid, "size": 1}]
    user_mounts = [_mount(m, volume_path) for m in mounts]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": argv,
            "env": env,
            "cwd": cfg.get("WorkingDir") or "/",
            "capabilities": {k: list(CAPS) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": _base_mounts(rootless) + user_mounts,
        "linux": linux,
    }
