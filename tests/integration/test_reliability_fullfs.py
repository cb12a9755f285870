"""The upper on a full filesystem: a size- or inode-limited tmpfs mounted by the test.

A copy-up that does not fit fails with ENOSPC and leaves nothing behind: the
lower file is intact and still shown, nothing of the copy is in the upper or in
WORKDIR/fsd/tmp, and the space used on the small filesystem is what it was.
Writes that fit still succeed, a write that runs out of space says ENOSPC (not
EIO), and once space is freed through the mount the same copy-up works, with
no remount. The same for a directory rename that copies a merged tree when the
filesystem runs out of inodes.
"""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from support.faults import entries_below, free_bytes, small_tmpfs, used_bytes
from support.layergen import make_layers, write
from support.upper_ops import errno_of, write_big

MiB = 1 << 20


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _append(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _fill(path, chunk: int = MiB) -> tuple[int, str]:
    """Append to path until the filesystem is full: (bytes written, the errno that stopped it)."""
    done = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                n = os.write(fd, b"f" * chunk)
            except OSError as e:
                return done, errno.errorcode[e.errno]
            done += n
            if n < chunk:
                chunk = max(1, chunk - n)
    finally:
        os.close(fd)


@pytest.mark.fuse_deadline(90)
def test_copy_up_that_does_not_fit(tmp_path, mount_fsd):
    (lower,) = make_layers(tmp_path / "layers", 1)
    big_sha = write_big(lower / "big", 12 * MiB + 5)
    write(lower, "dir/small", os.urandom(100_000))
    write(lower, "dir/keep", "keep")
    with small_tmpfs(tmp_path / "small", "16m") as fs:
        upper, work = fs / "upper", fs / "work"
        upper.mkdir()
        work.mkdir()
        m = mount_fsd([lower], upper, work)
        mnt = m.mnt
        # leave about 6 MiB: less than the big file
        filler = max(0, free_bytes(fs) - 6 * MiB)
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * filler)
        assert 4 * MiB < free_bytes(fs) < 12 * MiB
        used = used_bytes(fs)

        got = {
            "append (copy-up at open)": errno_of(_append, mnt / "big", b"x"),
            "truncate to a larger size": errno_of(os.truncate, mnt / "big", 13 * MiB),
            "chmod (copy-up of the data too)": errno_of(os.chmod, mnt / "big", 0o600),
            "setxattr": errno_of(os.setxattr, mnt / "big", "user.x", b"1"),
        }
        assert got == {k: "ENOSPC" for k in got}, f"a copy-up larger than the free space: {got}"
        assert not os.path.lexists(upper / "big"), "a partial copy is in the upper"
        assert entries_below(work / "fsd" / "tmp") == [], "the work area keeps a partial copy"
        assert used_bytes(fs) == used, f"space used went from {used} to {used_bytes(fs)}: a leak"
        assert _sha(lower / "big") == big_sha, "the lower file changed"
        assert _sha(mnt / "big") == big_sha, "the mount shows another big file after the failed copy-up"
        assert os.stat(mnt / "big").st_mode & 0o777 == 0o644

        # what fits still works
        _append(mnt / "dir/small", b"+fits")
        write(mnt, "new-file", os.urandom(MiB))
        os.mkdir(mnt / "new-dir")
        fd = os.open(mnt / "dir/keep", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        assert (mnt / "dir/small").read_bytes().endswith(b"+fits")
        assert (mnt / "dir/keep").read_bytes() == b""

        # a write that runs out of space: ENOSPC, the file keeps what was written
        written, err = _fill(mnt / "grow")
        assert err == "ENOSPC", f"a write on a full upper failed with {err}"
        assert os.stat(mnt / "grow").st_size == written
        assert errno_of(_append, mnt / "big", b"x") == "ENOSPC"
        assert entries_below(work / "fsd" / "tmp") == []
        st = os.statvfs(mnt)
        assert st.f_bavail * st.f_frsize < MiB, "statfs through the mount does not show the full upper"

        # free space through the mount: the same copy-up works, no remount
        for name in ("filler", "grow", "new-file"):
            os.unlink(mnt / name)
        _append(mnt / "big", b"x")
        h = hashlib.sha256(open(lower / "big", "rb").read() + b"x").hexdigest()
        assert _sha(mnt / "big") == h
        assert os.lstat(upper / "big").st_size == 12 * MiB + 6
        assert _sha(lower / "big") == big_sha
        assert entries_below(work / "fsd" / "tmp") == []
        m.unmount()


@pytest.mark.fuse_deadline(90)
def test_tree_copy_that_runs_out_of_inodes(tmp_path, mount_fsd):
    top, bottom = make_layers(tmp_path / "layers", 2)
    for i in range(60):
        write(bottom, f"tree/f{i:02d}", f"file {i}")
    write(bottom, "tree/sub/deep", "deep")
    write(top, "tree/top", "top")
    write(bottom, "other", "other")
    with small_tmpfs(tmp_path / "small", "64m", nr_inodes=40) as fs:
        upper, work = fs / "upper", fs / "work"
        upper.mkdir()
        work.mkdir()
        m = mount_fsd([top, bottom], upper, work)
        mnt = m.mnt
        before = sorted(os.listdir(mnt / "tree"))
        inodes = os.statvfs(fs).f_ffree
        assert errno_of(os.rename, mnt / "tree", mnt / "moved") == "ENOSPC"
        assert sorted(os.listdir(mnt / "tree")) == before
        assert not os.path.lexists(mnt / "moved") and not os.path.lexists(upper / "moved")
        assert (mnt / "tree/sub/deep").read_text() == "deep"
        assert entries_below(work / "fsd" / "tmp") == [], "the work area keeps a partial tree"
        assert os.statvfs(fs).f_ffree == inodes, "inodes leaked by the failed rename"
        # small things still fit
        _append(mnt / "other", b"+")
        assert (mnt / "other").read_text() == "other+"
        m.unmount()
