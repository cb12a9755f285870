"""Edge cases where fsd differed from the kernel overlay (most found by xfstests),
each run on both and the outcomes compared.

Every scenario builds the same objects in three places, `<name>.<state>`:
  lower  - in the lower layer only,
  copied - in the lower layer, copied up through the mount before the run,
  upper  - made through the mount;
then runs the same calls on the kernel overlay and on fsd (each on its own copy
of the lower layer, with its own upper) and compares what they return.  Calls
run in a forked child (tests/support/faults.py in_child) so that umask and ids
are the scenario's own.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from support.faults import in_child
from support.upper_ops import errname, results_of

STATES = ("lower", "copied", "upper")
KERNEL_OPTS = ("redirect_dir=off", "index=off", "metacopy=off")
# The kernel mode whose hard-link semantics fsd chose: lower hard links stay links.
KERNEL_INDEX_OPTS = ("redirect_dir=off", "index=on", "metacopy=off")


class Twin:
    """One lower layer built twice, mounted by the kernel overlay and by fsd."""

    def __init__(self, tmp_path: Path, mount_fsd, mount_kernel_overlay, build: Callable[[Path, str], None],
                 kernel_opts=KERNEL_OPTS, fsd_opts=(), upper_root: Path | None = None):
        self.tmp = tmp_path
        self.build = build
        self.mount_fsd = mount_fsd
        self.mount_kernel_overlay = mount_kernel_overlay
        self.kernel_opts = tuple(kernel_opts)
        self.fsd_opts = tuple(fsd_opts)
        self.dirs = {}
        for side in ("kernel", "fsd"):
            lower = tmp_path / f"{side}-lower"
            lower.mkdir()
            for state in ("lower", "copied"):
                (lower / state).mkdir()
                build(lower / state, state)
            up_base = (upper_root or tmp_path) / side
            up_base.mkdir()
            (up_base / "up").mkdir()
            (up_base / "work").mkdir()
            self.dirs[side] = (lower, up_base / "up", up_base / "work")
        self.roots = {}
        self.fm = None
        self._mount()
        for root in self.roots.values():
            self._prepare(root)

    def _mount(self):
        lower, up, work = self.dirs["kernel"]
        self.roots["kernel"] = self.mount_kernel_overlay([lower], up, work, self.kernel_opts,
                                                         mountpoint=self.tmp / "kmnt")
        lower, up, work = self.dirs["fsd"]
        self.fm = self.mount_fsd([lower], up, work, self.fsd_opts)
        self.roots["fsd"] = self.fm.mnt

    def _prepare(self, root: Path):
        (root / "upper").mkdir()
        self.build(root / "upper", "upper")
        for dirpath, dirnames, filenames in os.walk(root / "copied"):
            for name in [*dirnames, *filenames, ""]:
                p = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(p)  # setting the times copies up (hard links too)
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def remount(self):
        self.mount_kernel_overlay.umount(self.roots["kernel"])
        self.fm.unmount()
        self._mount()

    def run(self, call: Callable[[str], object], ids=None) -> dict[str, dict[str, object]]:
        """{side: {state: result}}: call(state dir, relative to the root) in a child."""
        out = {}
        for side, root in self.roots.items():
            out[side] = dict(zip(STATES, in_child(lambda: [_result(call, s) for s in STATES], ids, cwd=root)))
        return out

    def assert_same(self, call: Callable[[str], object], what: str, ids=None, states=STATES):
        """Compare in the given states; returns fsd's results of every state."""
        got = self.run(call, ids)
        bad = [f"{what} ({s}):\n    kernel: {got['kernel'][s]!r}\n    fsd:    {got['fsd'][s]!r}"
               for s in states if got["kernel"][s] != got["fsd"][s]]
        assert not bad, "\n".join(bad)
        return got["fsd"]


def _result(call, state):
    try:
        return call(state)
    except OSError as e:
        return errname(e)


def _nlinks(d, *names):
    return [os.lstat(f"{d}/{n}").st_nlink for n in names]


def _write(p: Path, data: bytes = b"data"):
    p.write_bytes(data)


# -- link counts of lower hard links (kernel: index=on) ---------------------------------------------

def _build_links(base: Path, state: str):
    for group, names in (("unlinked", "ab"), ("linked", "ab"), ("over", "abc"), ("moved", "ab"),
                         ("both", "ab"), ("three", "abc"), ("other", "ab")):
        d = base / group
        d.mkdir()
        _write(d / names[0], group.encode())
        for n in names[1:]:
            os.link(d / names[0], d / n)
    _write(base / "over" / "x", b"x")


def _link_ops(d):
    return results_of(
        lambda: os.unlink(f"{d}/unlinked/a"), lambda: _nlinks(d, "unlinked/b"),
        lambda: os.link(f"{d}/linked/a", f"{d}/linked/n"), lambda: _nlinks(d, "linked/n", "linked/a", "linked/b"),
        lambda: os.rename(f"{d}/over/x", f"{d}/over/a"), lambda: _nlinks(d, "over/a", "over/b", "over/c"),
        lambda: os.rename(f"{d}/moved/a", f"{d}/moved/z"), lambda: _nlinks(d, "moved/z", "moved/b"),
        lambda: os.link(f"{d}/both/a", f"{d}/both/n"), lambda: os.unlink(f"{d}/both/a"),
        lambda: os.unlink(f"{d}/both/b"), lambda: _nlinks(d, "both/n"),
        lambda: os.unlink(f"{d}/three/c"), lambda: _nlinks(d, "three/a", "three/b"),
        lambda: _nlinks(d, "other/b"), lambda: _append(f"{d}/other/a"),
        lambda: os.link(f"{d}/other/b", f"{d}/other/n"), lambda: _nlinks(d, "other/n", "other/b", "other/a"))


def _append(path, data=b"+"):
    with open(path, "ab") as f:
        f.write(data)


def _all_nlinks(d):
    return {f"{g}/{n}": os.lstat(f"{d}/{g}/{n}").st_nlink for g in sorted(os.listdir(d))
            for n in sorted(os.listdir(f"{d}/{g}"))}


def test_lower_hard_link_counts_match_kernel_index_on(tmp_path, mount_fsd, mount_kernel_overlay):
    """What the merged view shows: unlink, link, rename over and of one name of a
    lower hard-link group, counted on every name, and again after a remount."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_links, KERNEL_INDEX_OPTS)
    twin.assert_same(_all_nlinks, "link counts before")
    twin.assert_same(_link_ops, "link counts after each call")
    twin.assert_same(_all_nlinks, "link counts of every name after")
    twin.remount()
    twin.assert_same(_all_nlinks, "link counts after a remount")


# -- a directory replaced while open ------------------------------------------------------------------

def _build_dirs(base: Path, state: str):
    for name in ("replaced", "removed", "file"):
        (base / name).mkdir()
        (base / name / "b").mkdir()
    _write(base / "file" / "f")


def _fstat_after(path, change):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if not path.endswith("/f") else 0))
    try:
        change()
        st = os.fstat(fd)
        return [stat.S_IFMT(st.st_mode) == stat.S_IFDIR, st.st_nlink]
    finally:
        os.close(fd)


def _replace_ops(d):
    os.mkdir(f"{d}/replaced/a")
    _write(Path(f"{d}/file/g"))
    return results_of(lambda: _fstat_after(f"{d}/replaced/b", lambda: os.rename(f"{d}/replaced/a", f"{d}/replaced/b")),
                lambda: _fstat_after(f"{d}/removed/b", lambda: os.rmdir(f"{d}/removed/b")),
                lambda: _fstat_after(f"{d}/file/f", lambda: os.rename(f"{d}/file/g", f"{d}/file/f")))


def test_open_directory_replaced_by_rename(tmp_path, mount_fsd, mount_kernel_overlay):
    """fstat of an open directory that a rename replaced: nlink 0, as after rmdir.
    Of an object that was only in the lower layer, the kernel shows the count of
    that lower object, which stays; fsd shows 0, as for any object with no name."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_dirs)
    got = twin.assert_same(_replace_ops, "fstat of replaced objects", states=("copied", "upper"))
    assert got["lower"] == [[True, 0], [True, 0], [False, 0]]


# -- O_DIRECT ------------------------------------------------------------------------------------------

def _build_file(base: Path, state: str):
    _write(base / "f", b"0123456789" * 1000)


def _direct_ops(d):
    rbuf, wbuf = mmap.mmap(-1, 4096), mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    wbuf.write(b"D" * 4096)
    aligned, data = memoryview(rbuf), memoryview(wbuf)

    def through(flags, *calls):
        fd = os.open(f"{d}/f", flags | os.O_DIRECT)
        try:
            return results_of(*(lambda c=c: c(fd) for c in calls))
        finally:
            os.close(fd)
    out = [through(os.O_RDONLY, lambda fd: len(os.pread(fd, 3, 1)), lambda fd: os.preadv(fd, [aligned], 4096)),
           through(os.O_RDWR, lambda fd: os.pwrite(fd, b"abc", 1), lambda fd: os.pwrite(fd, data, 4096),
                   lambda fd: os.preadv(fd, [aligned], 0), lambda fd: len(os.pread(fd, 100, 3)))]
    with open(f"{d}/f", "rb") as f:
        data = f.read()
    return out + [len(data), data[4090:4100].decode()]


def test_o_direct_keeps_its_alignment_rules(tmp_path, mount_fsd, mount_kernel_overlay):
    """An unaligned O_DIRECT read or write fails EINVAL as on the upper's ext4;
    aligned ones work."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_file)
    got = twin.assert_same(_direct_ops, "O_DIRECT reads and writes")
    assert got["upper"][1][0] == "EINVAL"


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_o_direct_on_a_tmpfs_upper(tmpfs, tmp_path, mount_fsd, mount_kernel_overlay):
    """The upper's filesystem decides what O_DIRECT does (tmpfs: no alignment rules)."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_file, upper_root=tmpfs)
    twin.assert_same(_direct_ops, "O_DIRECT reads and writes on tmpfs", states=("copied", "upper"))


# -- an open file with no name left --------------------------------------------------------------------

def _reopen_ops(d):
    fd = os.open(f"{d}/f", os.O_RDONLY)
    try:
        os.unlink(f"{d}/f")
        return results_of(lambda: _read_reopened(fd, os.O_RDONLY), lambda: _read_reopened(fd, os.O_RDWR),
                    lambda: os.path.exists(f"{d}/f"))
    finally:
        os.close(fd)


def _read_reopened(fd, flags):
    again = os.open(f"/proc/self/fd/{fd}", flags)
    try:
        return [os.pread(again, 10, 0).decode(), os.fstat(again).st_nlink]
    finally:
        os.close(again)


def test_unlinked_open_file_can_be_reopened(tmp_path, mount_fsd, mount_kernel_overlay):
    """/proc/self/fd/N of a file whose last name is gone opens it again.  Of a
    file that was only in the lower layer, the kernel shows the lower file's own
    count and answers EEXIST for writing (its copy-up meets the whiteout); fsd
    shows 0, as for any object with no name, and ENOENT: nothing can be copied
    up without a name."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_file)
    got = twin.assert_same(_reopen_ops, "reopening an unlinked file", states=("copied", "upper"))
    assert got["lower"] == [["0123456789", 0], "ENOENT", False]


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def _handle_of(path: str) -> bytes:
    """name_to_handle_at(2): struct file_handle {u32 size; int type; bytes}."""
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", buf, 0, 128)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), buf, ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    size = struct.unpack_from("I", buf, 0)[0]
    return buf.raw[:8 + size]


def _open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    buf = ctypes.create_string_buffer(handle, len(handle))
    fd = _libc.open_by_handle_at(mount_fd, buf, flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def test_unlinked_open_file_opens_by_handle(tmp_path, mount_fsd):
    """open_by_handle_at of a file whose last name is gone while it is open."""
    from support.layergen import make_layers, write
    top, bottom = make_layers(tmp_path / "l", 2)
    write(bottom, "lower", "from below")
    upper, work = tmp_path / "up", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd([top, bottom], upper, work).mnt
    write(m, "upper", "made above")
    got = {}
    root = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("lower", "upper"):
            handle = _handle_of(str(m / name))
            fd = os.open(m / name, os.O_RDONLY)
            try:
                os.unlink(m / name)
                again = _open_by_handle(root, handle, os.O_RDONLY)
                got[name] = os.pread(again, 20, 0).decode()
                os.close(again)
            finally:
                os.close(fd)
    finally:
        os.close(root)
    assert got == {"lower": "from below", "upper": "made above"}


# -- default ACLs on create ------------------------------------------------------------------------------

ACL_DEFAULT, ACL_ACCESS = "system.posix_acl_default", "system.posix_acl_access"
UMASKS = (0, 0o022, 0o077)


def _acl(user: int, group: int, other: int, named_user: tuple[int, int] | None = None) -> bytes:
    """The xattr form of a POSIX ACL: u::, g::, o:: entries and, with
    named_user (uid, perm), that user's entry and a mask of rwx."""
    entries = [(0x01, user, 0xFFFFFFFF)]
    if named_user is not None:
        entries.append((0x02, named_user[1], named_user[0]))
    entries.append((0x04, group, 0xFFFFFFFF))
    if named_user is not None:
        entries.append((0x10, 7, 0xFFFFFFFF))
    entries.append((0x20, other, 0xFFFFFFFF))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries)


def _build_acl_dirs(base: Path, state: str):
    for name, mode, acl in (("acl", 0o755, _acl(5, 4, 0)), ("sgid", 0o2775, _acl(7, 7, 5)),
                            ("named", 0o755, _acl(7, 5, 4, named_user=(4242, 6))), ("plain", 0o755, None)):
        (base / name).mkdir()
        os.chown(base / name, 0, 4242)
        os.chmod(base / name, mode)
        if acl is not None:
            os.setxattr(base / name, ACL_DEFAULT, acl)
        for umask in UMASKS:  # removed and made again: over a whiteout in the lower states
            _write(base / name / f"w{umask:o}")


def _xattr(path, name):
    try:
        return os.getxattr(path, name, follow_symlinks=False).hex()
    except OSError as e:
        return errname(e)


def _created(umask):
    def ops(d):
        os.umask(umask)
        out = {}
        for parent in ("acl", "sgid", "named", "plain"):
            p = f"{d}/{parent}"
            t = f"{umask:o}"
            os.unlink(f"{p}/w{t}")
            made = results_of(lambda: os.close(os.open(f"{p}/f{t}", os.O_WRONLY | os.O_CREAT, 0o666)),
                              lambda: os.mkdir(f"{p}/w{t}", 0o777),
                              lambda: os.mkdir(f"{p}/d{t}", 0o777), lambda: os.mkfifo(f"{p}/p{t}", 0o666),
                              lambda: os.mknod(f"{p}/r{t}", stat.S_IFREG | 0o666),
                              lambda: os.symlink("x", f"{p}/s{t}"))
            made.append(results_of(lambda: _tmpfile_mode(p)))
            out[parent] = [made] + [
                (n, f"{stat.S_IMODE(os.lstat(f'{p}/{n}{t}').st_mode):o}", os.lstat(f"{p}/{n}{t}").st_gid,
                 _xattr(f"{p}/{n}{t}", ACL_ACCESS), _xattr(f"{p}/{n}{t}", ACL_DEFAULT))
                for n in "fdprsw"]
        return out
    return ops


def _tmpfile_mode(d):
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o666)
    try:
        return f"{stat.S_IMODE(os.fstat(fd).st_mode):o}"
    finally:
        os.close(fd)


@pytest.mark.parametrize("umask", UMASKS)
def test_default_acl_decides_the_mode_of_new_objects(tmp_path, mount_fsd, mount_kernel_overlay, umask):
    """In a directory with a default ACL the new object's mode comes from the
    ACL and the requested mode, without the umask; elsewhere from the umask."""
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, _build_acl_dirs)
    twin.assert_same(_created(umask), f"objects created with umask {umask:o}")


# -- atime options ---------------------------------------------------------------------------------------

OLD, NEWER = 1_000_000_000 * 10**9, 1_200_000_000 * 10**9  # atime before mtime: relatime updates it


def _build_atime(base: Path, state: str):
    _write(base / "f", b"read me")
    (base / "sub").mkdir()
    _write(base / "sub" / "x")


def _set_times(d):
    for n in ("f", "sub"):
        os.utime(f"{d}/{n}", ns=(OLD, NEWER))


def _atime_ops(d):
    before = {n: os.stat(f"{d}/{n}").st_atime_ns for n in ("f", "sub")}
    with open(f"{d}/f", "rb") as f:
        f.read()
    os.listdir(f"{d}/sub")
    return {n: os.stat(f"{d}/{n}").st_atime_ns != before[n] for n in before}


ATIME_OPTIONS = ["noatime", "nodiratime", "relatime", "norelatime", "strictatime", "atime", "diratime"]


@pytest.mark.parametrize("option", ATIME_OPTIONS)
def test_atime_options_act_as_on_the_kernel(tmp_path, mount_fsd, mount_kernel_overlay, option):
    """Each atime option mounts, and reads change atimes as on the kernel overlay
    mounted with it."""
    def build(base, state):
        _build_atime(base, state)
        if state == "lower":
            _set_times(base)
    twin = Twin(tmp_path, mount_fsd, mount_kernel_overlay, build, KERNEL_OPTS + (option,), (option,))
    for root in twin.roots.values():
        for state in ("copied", "upper"):
            _set_times(root / state)
    twin.assert_same(_atime_ops, f"atimes after reads with {option}")
