"""Copy layers into the marker forms the kernel overlay reads.

The kernel overlay (mounted without `userxattr`) knows only char dev 0/0
whiteouts and the `trusted.overlay.opaque=y` xattr. convert_layers() copies a
stack so that it means the same thing to the kernel as the original means to
fsd:

- `.wh.NAME` (empty file)        -> char dev 0/0 named NAME
- `.wh..wh..opq` in a dir        -> trusted.overlay.opaque=y on that dir
- user.overlay.opaque=y, user.fuseoverlayfs.opaque=y -> trusted.overlay.opaque=y
- any other overlay-private xattr (trusted.overlay.*, user.overlay.*,
  user.fuseoverlayfs.*) is dropped: fsd hides them, the kernel would either
  show the user.* ones or interpret the trusted.* ones.

Everything else is copied exactly: data (holes kept), mode, owner, xattrs,
times, symlink targets, fifos, devices, and hard links inside a layer.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .layergen import OPAQUE_XATTRS, OPQ_NAME, PRIVATE_XATTR_PREFIXES, WH_PREFIX

KERNEL_OPAQUE = "trusted.overlay.opaque"


def convert_layers(layers: list[Path], dest_root: Path) -> list[Path]:
    """Convert each layer (any order) into dest_root/<index>; same order back."""
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, layer in enumerate(layers):
        dst = dest_root / f"k{i:03d}"
        convert_layer(Path(layer), dst)
        out.append(dst)
    return out


def convert_layer(src: Path, dst: Path) -> None:
    links: dict[tuple[int, int], Path] = {}
    _copy_dir(src, dst, links)


def _is_private(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _opaque_by_xattr(xattrs: dict[str, bytes]) -> bool:
    return any(xattrs.get(n) == b"y" for n in OPAQUE_XATTRS.values())


def _copy_meta(src: Path, dst: Path, st: os.stat_result, xattrs: dict[str, bytes]):
    is_link = stat.S_ISLNK(st.st_mode)
    for name, value in xattrs.items():
        if not _is_private(name):
            os.setxattr(dst, name, value, follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not is_link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_data(src: Path, dst: Path, size: int):
    """Copy keeping holes (SEEK_DATA/SEEK_HOLE)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fd_in, fd_out = fi.fileno(), fo.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd_in, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fd_in, data, os.SEEK_HOLE)
            off = data
            while off < hole:
                n = os.copy_file_range(fd_in, fd_out, hole - off, off, off)
                if n == 0:
                    break
                off += n
            pos = hole
        fo.truncate(size)


def _copy_dir(src: Path, dst: Path, links: dict):
    st = os.lstat(src)
    xattrs = _xattrs(src)
    os.mkdir(dst)
    opaque = _opaque_by_xattr(xattrs)
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = e.name
        s = Path(e.path)
        if name == OPQ_NAME:
            opaque = True
            continue
        if name.startswith(WH_PREFIX):
            os.mknod(dst / name[len(WH_PREFIX):], stat.S_IFCHR | 0o600, os.makedev(0, 0))
            continue
        est = os.lstat(s)
        mode = est.st_mode
        d = dst / name
        if stat.S_ISDIR(mode):
            _copy_dir(s, d, links)
            continue
        key = (est.st_dev, est.st_ino)
        if est.st_nlink > 1 and key in links:
            os.link(links[key], d)
            continue
        if stat.S_ISREG(mode):
            _copy_data(s, d, est.st_size)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(d, stat.S_IFMT(mode) | 0o600, est.st_rdev)
        elif stat.S_ISSOCK(mode):
            os.mknod(d, stat.S_IFSOCK | 0o600)
        else:
            raise AssertionError(f"unexpected file type {mode:o} at {s}")
        _copy_meta(s, d, est, _xattrs(s))
        if est.st_nlink > 1:
            links[key] = d
    if opaque:
        os.setxattr(dst, KERNEL_OPAQUE, b"y")
    _copy_meta(src, dst, st, xattrs)
