"""open(2) with O_TMPFILE on fsd against the kernel overlay (which has it
since Linux 6.7): a file with no name in a lower, merged or upper directory,
written, fstat'ed, given a name by linkat(2) with AT_EMPTY_PATH, read back
through that name; one closed without a name leaves nothing behind, in the
view, in the upper or in fsd's work area. fsd also counts it against its
quota from the start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from pathlib import Path

import pytest

from support import fsck
from support.convert import convert_layers
from support.upper_ops import errname
from support.layergen import make_layers, write

KERNEL_OPTS = ("redirect_dir=off", "index=off", "metacopy=off")
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def link_fd(fd: int, path: Path) -> None:
    """linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): a name for an open file
    (root may; through /proc/self/fd both the kernel overlay and fsd answer
    EXDEV)."""
    if _libc.linkat(fd, b"", AT_FDCWD, os.fsencode(path), AT_EMPTY_PATH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
DIRS = ["lower-dir", "merged-dir", "upper-dir", ""]  # "": the root


def _stack(root: Path) -> list[Path]:
    top, bottom = make_layers(root, 2)
    write(bottom, "lower-dir/old", "old")
    write(bottom, "merged-dir/below", "below")
    write(top, "merged-dir/above", "above")
    for layer in (top, bottom):
        os.chmod(layer, 0o755)
    return [top, bottom]


def _tmpfile_story(root: Path, d: str) -> list:
    """O_TMPFILE in root/d: what each step gives, errors as their names."""
    out = []
    where = root / d if d else root
    try:
        fd = os.open(where, os.O_TMPFILE | os.O_RDWR, 0o640)
    except OSError as e:
        return [("open", errname(e))]
    try:
        os.write(fd, b"tmpfile data")
        os.setxattr(fd, "user.before-link", b"1")
        out.append(("xattrs", os.listxattr(fd), os.getxattr(fd, "user.before-link")))
        st = os.fstat(fd)
        out.append(("fstat", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink, st.st_size))
        out.append(("listing before link", sorted(os.listdir(where))))
        name = where / "linked"
        link_fd(fd, name)
        out.append(("fstat after link", os.fstat(fd).st_nlink))
        os.write(fd, b" and more")
    finally:
        os.close(fd)
    st = os.stat(name)
    out.append(("stat", stat.S_IMODE(st.st_mode), st.st_nlink, st.st_size, name.read_bytes(),
                os.getxattr(name, "user.before-link")))
    out.append(("listing", sorted(os.listdir(where))))
    # one never linked: gone with its descriptor
    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 8192)
    os.close(fd)
    out.append(("listing after an unlinked one", sorted(os.listdir(where))))
    # through /proc/self/fd: both answer EXDEV
    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        os.link(f"/proc/self/fd/{fd}", where / "via-proc", follow_symlinks=True)
        out.append(("link via /proc", "ok"))
    except OSError as e:
        out.append(("link via /proc", errname(e)))
    finally:
        os.close(fd)
    # O_EXCL: never linkable
    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        link_fd(fd, where / "excl")
        out.append(("link O_EXCL", "ok"))
    except OSError as e:
        out.append(("link O_EXCL", errname(e)))
    finally:
        os.close(fd)
    return out


@pytest.mark.parametrize("d", DIRS)
def test_o_tmpfile_matches_the_kernel_overlay(tmp_path, mount_fsd, mount_kernel_overlay, d):
    layers = _stack(tmp_path / "layers")
    uppers = {}
    for name in ("kernel", "fsd"):
        uppers[name] = tmp_path / f"{name}-upper"
        write(uppers[name], "upper-dir/new", "new")
        (tmp_path / f"{name}-work").mkdir()
    roots = {"kernel": mount_kernel_overlay(convert_layers(layers, tmp_path / "k"), uppers["kernel"],
                                            tmp_path / "kernel-work", KERNEL_OPTS),
             "fsd": mount_fsd(layers, uppers["fsd"], tmp_path / "fsd-work").mnt}
    got = {name: _tmpfile_story(root, d) for name, root in roots.items()}
    assert got["fsd"] == got["kernel"], f"O_TMPFILE in {d or 'the root'!r}:\n kernel {got['kernel']}\n" \
                                        f" fsd    {got['fsd']}"
    assert got["fsd"][0][0] == "xattrs", got["fsd"]  # not EOPNOTSUPP on both
    listed = {name: sorted(os.listdir(upper / d if d else upper)) for name, upper in uppers.items()}
    assert listed["fsd"] == listed["kernel"] and "linked" in listed["fsd"], listed  # the upper holds no more
    problems = fsck.problems(layers, uppers["fsd"], tmp_path / "fsd-work")
    assert not problems, problems


def test_o_tmpfile_counts_against_the_quota(tmp_path, mount_fsd):
    layers = _stack(tmp_path / "layers")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd(layers, upper, work, extra_opts=("quota_bytes=1M",)).mnt

    def free() -> int:
        sv = os.statvfs(m)
        return sv.f_bavail * sv.f_frsize

    before = free()
    fd = os.open(m, os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"x" * (256 << 10))
        assert before - free() >= 256 << 10
        written = 256 << 10
        with pytest.raises(OSError) as e:
            while written < 4 << 20:
                written += os.write(fd, b"x" * (256 << 10))
        assert e.value.errno == errno.EDQUOT
        assert written <= 1 << 20
    finally:
        os.close(fd)
    assert free() == before  # gone with its descriptor, and out of the usage


def test_an_o_tmpfile_leaves_nothing_when_the_daemon_dies(tmp_path, mount_fsd):
    """It lives only as an open file of the daemon's: killed, nothing of it is
    left for the next mount to clean."""
    from support.faults import daemon_pids, detach_dead

    layers = _stack(tmp_path / "layers")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd(layers, upper, work)
    os.utime(m.mnt / "merged-dir")  # copied up now, not by the O_TMPFILE
    before = sorted(os.listdir(upper / "merged-dir"))
    fd = os.open(m.mnt / "merged-dir", os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"x" * (1 << 20))
        for pid in daemon_pids(m):
            os.kill(pid, 9)
        detach_dead(m)
    finally:
        with contextlib.suppress(OSError):  # the flush finds no daemon
            os.close(fd)
    m = mount_fsd(layers, upper, work)
    assert sorted(os.listdir(m.mnt / "merged-dir")) == ["above", "below"]
    assert sorted(os.listdir(upper / "merged-dir")) == before
    problems = fsck.problems(layers, upper, work)
    assert not problems, problems
