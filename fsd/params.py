"""Mount options of fsd, parsed and checked once into a frozen `OverlayParams`.

The command line is fuse-overlayfs's, because containers/storage passes exactly
that: `-o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W[,opts]`.  Everything a
user can get wrong is caught here, before anything is mounted, as a `ParamError`
whose text is the one line the user sees.
"""

from __future__ import annotations

import dataclasses
import os
import stat

__all__ = ["OverlayParams", "ParamError", "IdMapping", "split_options", "parse_options"]


class ParamError(Exception):
    """A mount option or path is unusable; str(self) is the one-line message."""


@dataclasses.dataclass(frozen=True)
class IdMapping:
    """One `container:host:size` range of a uidmapping/gidmapping option."""

    container: int
    host: int
    size: int


@dataclasses.dataclass(frozen=True)
class OverlayParams:
    mountpoint: str
    lowerdirs: tuple[str, ...]  # absolute, symlinks resolved, top first
    upperdir: str | None = None
    workdir: str | None = None
    fsync: bool = True
    volatile: bool = False
    whiteout: str | None = None  # 'chardev' | 'file' | None: probe the upper
    metacopy: bool = False
    ro: bool = False
    allow_other: bool = False
    debug: bool = False
    timeout: float = 3600.0
    logfile: str | None = None
    uidmapping: tuple[IdMapping, ...] = ()
    gidmapping: tuple[IdMapping, ...] = ()
    squash_to_uid: int | None = None
    squash_to_gid: int | None = None
    static_nlink: bool = False
    noacl: bool = False
    upper_passthrough: bool = False  # upper files by FUSE passthrough too (file.py)
    xattr_permissions: int = 0
    quota_bytes: int | None = None
    quota_inodes: int | None = None
    noatime: bool = False  # reads never update an atime in the upper (O_NOATIME)
    nodiratime: bool = False  # reads of directories never do
    passthrough: tuple[str, ...] = ()  # generic mount flags handed to the kernel
    warnings: tuple[str, ...] = ()

    @property
    def writable(self) -> bool:
        return self.upperdir is not None and not self.ro


# Generic mount flags that libfuse/the kernel understand; fsd hands them on.
_KERNEL_FLAGS = frozenset("nosuid suid nodev dev noexec exec sync async dirsync lazytime nolazytime".split())
# The atime options, as mount(8) reads them (the last one wins): fsd applies them to
# the upper itself, since FUSE leaves atimes to the daemon.  Every option but
# noatime puts back the upper filesystem's own rules (relatime, mostly), which the
# kernel overlay's atime updates go through too.
_ATIME_OPTIONS = {
    "noatime": ("noatime", True), "atime": ("noatime", False), "relatime": ("noatime", False),
    "norelatime": ("noatime", False), "strictatime": ("noatime", False),
    "nodiratime": ("nodiratime", True), "diratime": ("nodiratime", False),
}
# Accepted for compatibility with fuse-overlayfs and mount(8); they change nothing here.
_ACCEPTED_NOOPS = frozenset(
    "rw default_permissions auto noauto user nouser users _netdev nofail "
    "defaults allow_root threaded fast_ino noxattrs writeback redirect_dir "
    "index xino userxattr".split()
)
_BOOL_VALUES = {"0": False, "1": True, "false": False, "true": True, "no": False, "yes": True}


def split_options(text: str) -> list[str]:
    """Split an -o string at unescaped commas; `\\,` is a literal comma.

    Empty items (`,,volatile`, a trailing comma) are dropped, as containers/storage
    produces them.  Backslashes other than `\\,` are kept for the value parsers.
    """
    items, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    return [item for item in items if item]


def _split_lowerdir(value: str) -> list[str]:
    """Split at unescaped colons; `\\:` is a literal colon, `\\\\` a backslash."""
    dirs, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ":\\":
            cur.append(value[i + 1])
            i += 2
            continue
        if ch == ":":
            dirs.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    dirs.append("".join(cur))
    return dirs


def _unescape(value: str) -> str:
    """`\\:` and `\\\\` in a path option: a colon and a backslash, as in lowerdir."""
    parts = _split_lowerdir(value)
    return ":".join(parts) if len(parts) > 1 else parts[0]


def _existing_dir(what: str, path: str, cwd: str) -> str:
    if not path:
        raise ParamError(f"{what}: empty path")
    full = os.path.realpath(os.path.join(cwd, path))
    try:
        st = os.stat(full)
    except OSError as exc:
        raise ParamError(f"{what} '{path}': {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ParamError(f"{what} '{path}': not a directory")
    return full


def _parse_int(name: str, value: str, minimum: int = 0) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise ParamError(f"bad value for option '{name}': '{value}'") from None
    if number < minimum:
        raise ParamError(f"bad value for option '{name}': '{value}'")
    return number


_SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _parse_size(name: str, value: str) -> int:
    """N with an optional K, M, G or T suffix (powers of 1024)."""
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    suffix = text[-1:] if text[-1:] in _SIZE_SUFFIXES else ""
    number = text[: len(text) - len(suffix)]
    if not number.isdigit():
        raise ParamError(f"bad value for option '{name}': '{value}' (want N, NK, NM or NG)")
    return int(number) * _SIZE_SUFFIXES[suffix]


def _parse_bool(name: str, value: str | None) -> bool:
    if value is None:
        return True
    try:
        return _BOOL_VALUES[value.lower()]
    except KeyError:
        raise ParamError(f"bad value for option '{name}': '{value}'") from None


def _parse_mapping(name: str, value: str) -> tuple[IdMapping, ...]:
    """`C:H:N[:C:H:N...]`; a leading colon (containers/storage writes one) is allowed."""
    fields = value.lstrip(":").split(":")
    if not value.lstrip(":") or len(fields) % 3:
        raise ParamError(f"bad value for option '{name}': '{value}' (want container:host:size triples)")
    numbers = [_parse_int(name, f) for f in fields]
    ranges = tuple(IdMapping(*numbers[i:i + 3]) for i in range(0, len(numbers), 3))
    if any(r.size == 0 for r in ranges):
        raise ParamError(f"bad value for option '{name}': '{value}' (empty range)")
    return ranges


def _inside(path: str, other: str) -> bool:
    """True when path is other or lies below it."""
    return path == other or path.startswith(other.rstrip("/") + "/")


def parse_options(option_strings: list[str], mountpoint: str, cwd: str | None = None) -> OverlayParams:
    """Turn the -o strings and the mountpoint into checked OverlayParams.

    Raises ParamError naming the option or path at fault.  Unknown options are not
    errors: each adds one line to `warnings`, as fuse-overlayfs prints them.
    """
    cwd = cwd or os.getcwd()
    values: dict[str, str | None] = {}
    warnings: list[str] = []
    passthrough: list[str] = []
    for text in option_strings:
        for item in split_options(text):
            key, sep, value = item.partition("=")
            values[key] = value if sep else None

    def take(name: str) -> str | None:
        return values.pop(name, None)

    def take_value(name: str) -> str | None:
        if name in values and values[name] is None:
            raise ParamError(f"option '{name}' needs a value")
        return take(name)

    lower_value = take_value("lowerdir")
    upper_value = take_value("upperdir")
    work_value = take_value("workdir")
    if not mountpoint:
        raise ParamError("no mountpoint given")
    mnt = _existing_dir("mountpoint", mountpoint, cwd)
    if lower_value is None:
        raise ParamError("no lowerdir given (-o lowerdir=DIR[:DIR...])")
    lowers = tuple(_existing_dir("lowerdir", d, cwd) for d in _split_lowerdir(lower_value))
    for d in lowers:
        if d == mnt:
            raise ParamError(f"lowerdir '{d}' is the mountpoint")
        if _inside(mnt, d):
            raise ParamError(f"mountpoint '{mnt}' is inside lowerdir '{d}'")
    if (upper_value is None) != (work_value is None):
        raise ParamError("upperdir and workdir must be given together")
    upper = work = None
    if upper_value is not None:
        upper = _existing_dir("upperdir", _unescape(upper_value), cwd)
        work = _existing_dir("workdir", _unescape(work_value), cwd)
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            raise ParamError(f"upperdir '{upper}' and workdir '{work}' are on different filesystems")
        if _inside(upper, work) or _inside(work, upper):
            raise ParamError(f"upperdir '{upper}' and workdir '{work}' must not be inside each other")
        for d in lowers:
            for name, path in (("upperdir", upper), ("workdir", work)):
                if _inside(path, d) or _inside(d, path):
                    raise ParamError(f"{name} '{path}' overlaps lowerdir '{d}'")
        for name, path in (("upperdir", upper), ("workdir", work)):
            if _inside(mnt, path):
                raise ParamError(f"mountpoint '{mnt}' is inside {name} '{path}'")

    kw: dict = {}
    if "fsync" in values:
        kw["fsync"] = _parse_bool("fsync", take("fsync"))
    for flag in ("volatile", "ro", "allow_other", "debug", "static_nlink", "noacl",
                 "upper_passthrough"):
        if flag in values:
            kw[flag] = _parse_bool(flag, take(flag))
    if "metacopy" in values:
        v = take("metacopy")
        if v not in (None, "on", "off"):
            raise ParamError(f"bad value for option 'metacopy': '{v}' (want on or off)")
        kw["metacopy"] = v != "off"
    if "whiteout" in values:
        v = take("whiteout")
        if v not in ("chardev", "file"):
            raise ParamError(f"bad value for option 'whiteout': '{v}' (want chardev or file)")
        kw["whiteout"] = v
    if "timeout" in values:
        v = take_value("timeout")
        try:
            kw["timeout"] = float(v)
        except ValueError:
            raise ParamError(f"bad value for option 'timeout': '{v}'") from None
        if kw["timeout"] < 0:
            raise ParamError(f"bad value for option 'timeout': '{v}'")
    if "logfile" in values:
        kw["logfile"] = os.path.join(cwd, _unescape(take_value("logfile")))
    for name in ("uidmapping", "gidmapping"):
        if name in values:
            kw[name] = _parse_mapping(name, take_value(name))
    if "squash_to_root" in values:
        take("squash_to_root")
        kw["squash_to_uid"] = kw["squash_to_gid"] = 0
    for name in ("squash_to_uid", "squash_to_gid"):
        if name in values:
            kw[name] = _parse_int(name, take_value(name))
    if "xattr_permissions" in values:
        v = take_value("xattr_permissions")
        if v not in ("0", "1", "2"):
            raise ParamError(f"bad value for option 'xattr_permissions': '{v}' (want 0, 1 or 2)")
        kw["xattr_permissions"] = int(v)
    if "quota_bytes" in values:
        kw["quota_bytes"] = _parse_size("quota_bytes", take_value("quota_bytes"))
    if "quota_inodes" in values:
        kw["quota_inodes"] = _parse_int("quota_inodes", take_value("quota_inodes"))
    if "rw" in values:
        kw["ro"] = False
    if upper is None:
        kw["ro"] = True
        if "quota_bytes" in kw or "quota_inodes" in kw:
            raise ParamError("quota_bytes and quota_inodes need an upperdir")
    if kw.get("upper_passthrough") and ("quota_bytes" in kw or "quota_inodes" in kw):
        # writes through passthrough handles never reach fsd's accounting
        raise ParamError("upper_passthrough cannot be used with quota_bytes or quota_inodes")

    for key in list(values):
        value = values.pop(key)
        if key in _KERNEL_FLAGS:
            passthrough.append(key)
        elif key in _ATIME_OPTIONS:
            field, on = _ATIME_OPTIONS[key]
            kw[field] = on
        elif key in _ACCEPTED_NOOPS or key in ("context", "fscontext", "defcontext", "rootcontext"):
            continue
        else:
            shown = key if value is None else f"{key}={value}"
            warnings.append(f"unknown option '{key}' ignored ({shown})")

    return OverlayParams(
        mountpoint=mnt, lowerdirs=lowers, upperdir=upper, workdir=work,
        passthrough=tuple(passthrough), warnings=tuple(warnings), **kw,
    )
