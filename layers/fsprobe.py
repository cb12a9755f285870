"""What the filesystem under the store is and can do: the mount table,
network filesystems, extended attributes, d_type.

- `read_mountinfo()` parses /proc/self/mountinfo into `MountInfo` entries
  (octal escapes undone); `mount_fstype(path)` is the fs type mounted exactly
  at `path` (the drivers see their own mounts with it); `mount_of(path)` the
  mount holding `path`, as `findmnt --target` finds it.
- `classify(entry)`: what is wrong with keeping a store on that mount — a
  network filesystem (NFS home directories break rootless storage: user
  xattrs, locks, uid handling, and an upper changed behind the daemon's back).
- `probe_xattrs(scratch)`, `probe_dtype(scratch)`: try the thing in an empty
  scratch dir on the filesystem; None when it works, else why it failed.
- `examine(root, scratch)`: the facts and the warnings `layers info` prints.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

# Types as mountinfo names them; `fuse.X` is a FUSE filesystem of subtype X.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "coda", "ceph", "glusterfs",
    "lustre", "gpfs", "beegfs", "orangefs", "pvfs2", "9p", "davfs", "ocfs2", "gfs2",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph-fuse", "fuse.cephfs", "fuse.s3fs",
    "fuse.rclone", "fuse.gcsfuse", "fuse.davfs2", "fuse.juicefs", "fuse.seaweedfs",
})


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""
    dev: str              # "major:minor" of the filesystem
    root: str             # the dir of the filesystem mounted here
    mountpoint: str
    fstype: str
    source: str
    options: str          # super options ("rw,relatime,…")


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> MountInfo | None:
    """The entry a mountinfo line describes; None for a line of another shape."""
    left, sep, right = line.partition(" - ")
    fields, tail = left.split(), right.split()
    if not sep or len(fields) < 6 or not tail:
        return None
    return MountInfo(dev=fields[2], root=_unescape(fields[3]),
                     mountpoint=_unescape(fields[4]), fstype=tail[0],
                     source=_unescape(tail[1]) if len(tail) > 1 else "",
                     options=tail[2] if len(tail) > 2 else "")


def read_mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """The mount table in mount order; empty when it cannot be read."""
    try:
        with open(path) as f:
            return [e for e in map(parse_mountinfo_line, f) if e is not None]
    except OSError:
        return []


def mount_fstype(path: str) -> str | None:
    """The fs type mounted exactly at `path` (last one wins), or None."""
    path = os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)
    found = None
    for entry in read_mountinfo():
        if entry.mountpoint == path:
            found = entry.fstype
    return found


def _under(path: str, mountpoint: str) -> bool:
    return mountpoint == "/" or path == mountpoint or path.startswith(mountpoint + "/")


def mount_of(path: str, entries: list[MountInfo] | None = None,
             dev: str | None = None) -> MountInfo | None:
    """The mount holding `path`: of the mounts whose mount point contains
    it, those of its filesystem (`dev`, "major:minor"; taken from a stat of
    `path` when it exists) first, then the deepest, then the last mounted."""
    path = os.path.realpath(path)
    if entries is None:
        entries = read_mountinfo()
    if dev is None:
        try:
            st = os.stat(path)
            dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        except OSError:
            pass
    best, best_key = None, None
    for order, entry in enumerate(entries):
        if not _under(path, entry.mountpoint):
            continue
        key = (entry.dev == dev, len(entry.mountpoint), order)
        if best_key is None or key > best_key:
            best, best_key = entry, key
    return best


def classify(entry: MountInfo) -> list[str]:
    """Warnings about keeping a store on this mount (empty: none)."""
    if entry.fstype in NETWORK_FS:
        return [f"network filesystem: {entry.mountpoint} is {entry.fstype} "
                f"({entry.source}); rootless storage needs a local filesystem "
                "(xattrs, locks, uids) — set graphroot to a local directory"]
    return []


def probe_xattrs(scratch: str, privileged: bool | None = None) -> str | None:
    """None when a file in `scratch` takes user.* extended attributes (and,
    for root, trusted.* ones: the kernel overlay's markers); else why not.
    fsd keeps rootless owners and its markers in them."""
    if privileged is None:
        privileged = os.geteuid() == 0
    path = os.path.join(scratch, "xattr-probe")
    with open(path, "wb"):
        pass
    try:
        for ns in ("user", "trusted") if privileged else ("user",):
            try:
                os.setxattr(path, f"{ns}.strata.probe", b"1")
                if os.getxattr(path, f"{ns}.strata.probe") != b"1":
                    return f"{ns}.* extended attributes do not read back"
            except OSError as e:
                return f"{ns}.* extended attributes refused ({e.strerror})"
        return None
    finally:
        os.unlink(path)


DT_UNKNOWN = 0


class _Dirent64(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


def dirent_types(path: str) -> dict[str, int] | None:
    """Name → d_type as readdir(3) reports them in `path` (not `.`, `..`);
    None when libc cannot be reached."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        readdir = getattr(libc, "readdir64", None) or libc.readdir
    except (OSError, AttributeError):
        return None
    libc.opendir.argtypes, libc.opendir.restype = [ctypes.c_char_p], ctypes.c_void_p
    readdir.argtypes, readdir.restype = [ctypes.c_void_p], ctypes.POINTER(_Dirent64)
    libc.closedir.argtypes, libc.closedir.restype = [ctypes.c_void_p], ctypes.c_int
    handle = libc.opendir(os.fsencode(path))
    if not handle:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    out = {}
    try:
        while True:
            entry = readdir(handle)
            if not entry:
                break
            name = os.fsdecode(entry.contents.d_name)
            if name not in (".", ".."):
                out[name] = entry.contents.d_type
    finally:
        libc.closedir(handle)
    return out


def probe_dtype(scratch: str) -> str | None:
    """None when listing a dir in `scratch` reports the type of each entry
    (d_type), else why not: overlays (kernel and fsd) need it to tell
    whiteouts and dirs apart without a stat per name."""
    probe = os.path.join(scratch, "dtype-probe")
    os.mkdir(probe)
    try:
        os.mkdir(os.path.join(probe, "d"))
        with open(os.path.join(probe, "f"), "wb"):
            pass
        types = dirent_types(probe)
        if types is None:
            return None
        if types.get("d", DT_UNKNOWN) == DT_UNKNOWN or types.get("f", DT_UNKNOWN) == DT_UNKNOWN:
            return "directory listings do not report file types " \
                   "(an xfs made with ftype=0?)"
        return None
    finally:
        for name in ("d", "f"):
            try:
                (os.rmdir if name == "d" else os.unlink)(os.path.join(probe, name))
            except FileNotFoundError:
                pass
        os.rmdir(probe)


def examine(root: str, scratch: str) -> tuple[dict, list[str]]:
    """(facts, warnings) about the filesystem of the store at `root`;
    `scratch` is an empty dir on it the probes may write in."""
    mount = mount_of(root)
    facts: dict = {"fstype": mount.fstype if mount else None,
                   "source": mount.source if mount else None,
                   "mountpoint": mount.mountpoint if mount else None}
    warnings = classify(mount) if mount else []
    try:
        sv = os.statvfs(root)
        facts["size"] = sv.f_blocks * sv.f_frsize
        facts["free"] = sv.f_bavail * sv.f_frsize
    except OSError:
        pass
    for key, problem in (("xattrs", probe_xattrs(scratch)), ("d_type", probe_dtype(scratch))):
        facts[key] = problem is None
        if problem is not None:
            where = f" on {mount.fstype} at {mount.mountpoint}" if mount else ""
            warnings.append(f"{key}{where}: {problem}")
    return facts, warnings
