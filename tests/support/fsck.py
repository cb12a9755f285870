"""fsck of fsd's writable side: the upper layer and fsd's work area, checked
against the on-disk formats, so that a test can end with "nothing is damaged,
nothing is left over".

    problems(lowers, upper, workdir, settled=True) -> list of one-line findings
    assert_clean(lowers, upper, workdir, settled=True)

lowers are in lowerdir order (top first).  `settled`: no operation is in
flight and fsd has finished whatever it started (after an unmount, or between
two requests of an in-process test); with settled=False (after a crash, before
the next mount) the work area may hold what the next mount finishes or removes,
but it must still be well-formed.

The formats (fsd/ondisk.py), kept
here as literals: this module checks them, it does not share them.

WORKDIR/fsd/        fsd's work area
    lock            the file flocked by the mount
    tmp/            objects being built; emptied at mount, so empty when settled
    index/          `<lower index>-<st_ino>`: a copy of a hard-linked lower file,
                    kept until every name of it links the upper copy; empty when
                    settled; otherwise a regular file that, if it has more than
                    one link, is the upper object at a name of that lower file
    moving          journal of a directory move (JSON: hex src, hex dst, key),
                    absent when settled (it is written in tmp/, then renamed)
    whiteout        a char device 0/0 that whiteouts in the upper may be hard
                    links of
    freeze, frozen  a reader's pid while the upper is frozen (fsd/freeze.py), each
                    written as NAME.tmp and renamed; all absent when settled
upper               every entry lstat-able; whiteouts (a char device 0/0, or an
                    empty regular file `.wh.NAME`) only where the lowers show
                    NAME in the merged view; when settled, never beside a real
                    NAME (a crash between the two steps of replacing a `.wh.`
                    file leaves both, harmlessly: the real entry wins); opaque
                    markers (an opaque xattr = "y", or a `.wh..wh..opq` file)
                    only on directories; fsd's private xattrs `fsd.ino` (the
                    number kept across copy-up) a decimal number, `fsd.metacopy`
                    only on a regular file that the lowers show as one; no
                    lazy layer's mark (`user.strata.*`, never copied up).

Nothing here imports fsd: the same check runs after a real mount.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

WORK_AREA = "fsd"
WORK_AREA_FILES = {"lock", "tmp", "index", "moving", "whiteout"}
FREEZING = {"freeze", "frozen", "freeze.tmp", "frozen.tmp"}  # a freeze under way
WH_PREFIX = b".wh."
OPAQUE_FILE = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque")
PRIVATE_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
LAZY_PREFIX = b"user.strata."


def _entries(path: bytes) -> list[bytes]:
    return sorted(os.listdir(path))


def _xattrs(path: bytes) -> list[bytes]:
    try:
        return [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)]
    except OSError:
        return []  # no xattrs here (or not readable by this user): nothing to check


def _getxattr(path: bytes, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _is_whiteout_dev(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: bytes) -> bool:
    names = _xattrs(path)
    if any(a in names and _getxattr(path, a) == b"y" for a in OPAQUE_XATTRS):
        return True
    return os.path.lexists(os.path.join(path, OPAQUE_FILE))


def _try_lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class _Lowers:
    """The merged view of the lower layers, as far as the checks need it: for an
    upper directory, which names the lowers show there (and of what type)."""

    def __init__(self, lowers: list[Path], upper: bytes):
        self.roots = [os.fsencode(str(p)) for p in lowers]
        self.upper = upper

    def _real_names(self, layer: bytes, rel: bytes) -> tuple[dict[bytes, int], set[bytes]]:
        """A lower directory's real entries (name -> S_IFMT) and whiteouts."""
        names: dict[bytes, int] = {}
        whiteouts: set[bytes] = set()
        path = os.path.join(layer, rel) if rel else layer
        for name in _entries(path):
            st = os.lstat(os.path.join(path, name))
            if name == OPAQUE_FILE:
                continue
            if name.startswith(WH_PREFIX):
                whiteouts.add(name[len(WH_PREFIX):])
            elif _is_whiteout_dev(st):
                whiteouts.add(name)
            else:
                names[name] = stat.S_IFMT(st.st_mode)
        return names, whiteouts - set(names)

    def dirs(self, rel: bytes) -> list[int]:
        """The lower layers whose directory `rel` merges under the upper's
        directory `rel`, top first (cut below an opaque one, a non-directory or
        a whiteout; none below an opaque upper directory)."""
        merged = list(range(len(self.roots)))
        prefix = b""
        for part in rel.split(b"/") if rel else []:
            below = []
            for index in merged:
                names, whiteouts = self._real_names(self.roots[index], prefix)
                if part in whiteouts:
                    break
                kind = names.get(part)
                if kind is None:
                    continue
                if kind != stat.S_IFDIR:
                    break
                below.append(index)
                if _is_opaque(os.path.join(self.roots[index], prefix, part)):
                    break
            prefix = os.path.join(prefix, part) if prefix else part
            merged = [] if _is_opaque(os.path.join(self.upper, prefix)) else below
        return merged

    def shown(self, rel: bytes) -> dict[bytes, int]:
        """name -> S_IFMT of what the lowers show in directory `rel`."""
        shown: dict[bytes, int] = {}
        hidden: set[bytes] = set()
        for index in self.dirs(rel):
            names, whiteouts = self._real_names(self.roots[index], rel)
            for name, kind in names.items():
                if name not in hidden:
                    shown.setdefault(name, kind)
            hidden |= whiteouts
        return shown


def _check_xattrs(view: "_Lowers", rel: bytes, name: bytes, child: bytes, st, out: list[str]) -> None:
    """Markers and fsd's private xattrs of one upper entry (not a whiteout)."""
    path = os.path.join(view.upper, child)
    attrs = _xattrs(path)
    is_dir = stat.S_ISDIR(st.st_mode)
    for attr in OPAQUE_XATTRS:
        if attr in attrs and not is_dir:
            out.append(f"upper {child!r}: opaque xattr {attr.decode()} on a non-directory")
    for prefix in PRIVATE_PREFIXES:
        origin = _getxattr(path, prefix + b"fsd.ino") if prefix + b"fsd.ino" in attrs else None
        if origin is not None and not origin.isdigit():
            out.append(f"upper {child!r}: inode number xattr is {origin!r}, not a number")
        if prefix + b"fsd.metacopy" in attrs:
            lower_kind = view.shown(rel).get(name)
            if not stat.S_ISREG(st.st_mode) or lower_kind != stat.S_IFREG:
                out.append(f"upper {child!r}: metacopy marker without a lower regular file under it")
    for attr in attrs:
        if attr.startswith(LAZY_PREFIX):
            out.append(f"upper {child!r}: a lazy layer's xattr {attr.decode()} copied up")


def _check_upper(lowers: list[Path], upper: bytes, settled: bool, out: list[str]) -> None:
    view = _Lowers(lowers, upper)

    def walk(rel: bytes) -> None:
        path = os.path.join(upper, rel) if rel else upper
        try:
            names = _entries(path)
        except OSError as exc:
            out.append(f"upper {rel!r}: cannot list ({exc.strerror})")
            return
        shown = None
        for name in names:
            child = os.path.join(rel, name) if rel else name
            try:
                st = os.lstat(os.path.join(upper, child))
            except OSError as exc:
                out.append(f"upper {child!r}: cannot lstat ({exc.strerror})")
                continue
            kind = stat.S_IFMT(st.st_mode)
            target = None
            if name == OPAQUE_FILE:
                if kind != stat.S_IFREG or st.st_size:
                    out.append(f"upper {child!r}: opaque marker is not an empty file")
            elif name.startswith(WH_PREFIX):
                target = name[len(WH_PREFIX):]
                if kind != stat.S_IFREG or st.st_size:
                    out.append(f"upper {child!r}: whiteout file is not an empty file")
                if target in names and settled:
                    out.append(f"upper {child!r}: whiteout beside the real entry {target!r}")
            elif _is_whiteout_dev(st):
                target = name
            if target is not None:
                if shown is None:
                    shown = view.shown(rel)
                if target not in shown:
                    out.append(f"upper {child!r}: whiteout of {target!r}, which no lower shows there")
            else:
                _check_xattrs(view, rel, name, child, st, out)
            if kind == stat.S_IFDIR:
                walk(child)

    walk(b"")


def _check_index(lowers: list[Path], upper: bytes, area: bytes, settled: bool, out: list[str]) -> None:
    index_dir = os.path.join(area, b"index")
    if not os.path.isdir(index_dir):
        out.append("work area: no index directory")
        return
    entries = _entries(index_dir)
    if settled:
        out.extend(f"work area: index entry {e!r} outlived its copy-up" for e in entries)
        return
    for entry in entries:
        try:
            index, ino = (int(x) for x in entry.split(b"-"))
        except ValueError:
            out.append(f"work area: index entry {entry!r} is not named <lower>-<inode>")
            continue
        if not 0 <= index < len(lowers):
            out.append(f"work area: index entry {entry!r} names no lower layer")
            continue
        st = os.lstat(os.path.join(index_dir, entry))
        if not stat.S_ISREG(st.st_mode):
            out.append(f"work area: index entry {entry!r} is not a regular file")
            continue
        root = os.fsencode(str(lowers[index]))
        names = [os.path.relpath(os.path.join(d, f), root)
                 for d, _, files in os.walk(root) for f in files
                 if os.lstat(os.path.join(d, f)).st_ino == ino]
        if not names or os.lstat(os.path.join(root, names[0])).st_nlink < 2:
            out.append(f"work area: index entry {entry!r} names no hard-linked lower file")
            continue
        if st.st_nlink > 1:
            at_names = (_try_lstat(os.path.join(upper, n)) for n in names)
            if not any(u is not None and u.st_ino == st.st_ino for u in at_names):
                out.append(f"work area: index entry {entry!r} is linked, but at no name of its lower file")


def _check_journal(area: bytes, settled: bool, out: list[str]) -> None:
    path = os.path.join(area, b"moving")
    if not os.path.lexists(path):
        return
    if settled:
        out.append("work area: move journal 'moving' left over")
        return
    try:
        record = json.loads(Path(os.fsdecode(path)).read_bytes())
        bytes.fromhex(record["src"]), bytes.fromhex(record["dst"]), int(record["key"])
    except (ValueError, KeyError, TypeError) as exc:
        out.append(f"work area: move journal unreadable ({exc})")


def problems(lowers: list[Path], upper: Path, workdir: Path, settled: bool = True) -> list[str]:
    """Everything wrong with upper and workdir over these lowers; [] if clean."""
    out: list[str] = []
    area = os.fsencode(os.path.join(str(workdir), WORK_AREA))
    if not os.path.isdir(area):
        out.append("work area: missing")
    else:
        for name in _entries(area):
            text = os.fsdecode(name)
            if text in FREEZING:
                if settled:
                    out.append(f"work area: {text!r} left over from a freeze of the upper")
            elif text not in WORK_AREA_FILES:
                out.append(f"work area: unknown entry {name!r}")
            elif text == "whiteout" and not _is_whiteout_dev(os.lstat(os.path.join(area, name))):
                out.append("work area: the shared whiteout is not a char device 0/0")
        tmp = os.path.join(area, b"tmp")
        if settled and os.path.isdir(tmp):
            out.extend(f"work area: tmp/{n.decode(errors='replace')} left over" for n in _entries(tmp))
        _check_index(lowers, os.fsencode(str(upper)), area, settled, out)
        _check_journal(area, settled, out)
    _check_upper(lowers, os.fsencode(str(upper)), settled, out)
    return out


def assert_clean(lowers: list[Path], upper: Path, workdir: Path, settled: bool = True) -> None:
    found = problems(lowers, upper, workdir, settled)
    assert not found, "fsck of the upper and work area:\n" + "\n".join(found)
