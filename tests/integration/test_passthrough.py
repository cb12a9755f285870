"""FUSE passthrough (fsd/file.py): where fsd uses it, reads and writes do not
reach the daemon, and what the files show is what the kernel overlay shows.

The requests fsd served are counted in its debug log (`debug`: one line per
request). Passthrough needs Linux 6.9 and a daemon with CAP_SYS_ADMIN: these
tests mount as root; test_rootless.py has the unprivileged fallback. Without
patches/pyfuse3-3.5.0-passthrough.patch every read reaches fsd, and the tests
counting requests fail.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path

import pytest

from support.layergen import write

MiB = 1 << 20


def _requests(log: Path, op: str) -> int:
    """How many `op` requests fsd logged so far."""
    return len(re.findall(rf"DEBUG {op}\(", log.read_text(errors="replace")))


@pytest.fixture
def kernel_passes_through():
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 9):
        pytest.skip(f"FUSE passthrough needs Linux 6.9 (this is {os.uname().release})")


def _stack(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A lower with two files, an empty upper and a work dir."""
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir(parents=True)
    write(lower, "big", os.urandom(2 * MiB + 123))
    write(lower, "small", b"lower data\n")
    return lower, upper, work


def test_reads_of_a_mount_without_upper_do_not_reach_fsd(tmp_path, mount_fsd, kernel_passes_through):
    lower, _, _ = _stack(tmp_path)
    m = mount_fsd([lower], extra_opts=("debug",))
    want = (lower / "big").read_bytes()
    assert (m.mnt / "big").read_bytes() == want
    with open(m.mnt / "big", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[MiB:MiB + 4096] == want[MiB:MiB + 4096]
    assert _requests(m.log, "open") >= 2
    assert _requests(m.log, "read") == 0


def test_lower_files_of_a_mount_with_upper_stay_on_the_normal_path(tmp_path, mount_fsd,
                                                                    kernel_passes_through):
    """Even with upper_passthrough: a handle on a lower file must move to the
    copy after a copy-up, which a backing file fixed at open cannot."""
    lower, upper, work = _stack(tmp_path)
    m = mount_fsd([lower], upper, work, extra_opts=("debug", "upper_passthrough"))
    assert (m.mnt / "small").read_bytes() == b"lower data\n"
    assert _requests(m.log, "read") == 1


def _exercise(mnt: Path) -> list:
    """Reads, writes, mmap and truncate through mnt, on a lower file (which
    they copy up) and a new one; what each step saw."""
    seen = []
    with open(mnt / "big", "r+b") as f:  # copies up
        f.seek(MiB)
        f.write(b"W" * 5000)
        f.flush()
        seen.append(os.pread(f.fileno(), 10000, MiB - 5000))
        with mmap.mmap(f.fileno(), 0) as mm:
            mm[10:20] = b"M" * 10
            seen.append(bytes(mm[0:30]))
            mm.flush()
        os.ftruncate(f.fileno(), MiB // 2 + 7)
        seen.append(os.fstat(f.fileno()).st_size)
        f.seek(0, os.SEEK_END)
        f.write(b"end")
    seen.append((mnt / "big").read_bytes())
    os.truncate(mnt / "big", 100)  # a truncate by name, the file closed
    seen.append((mnt / "big").read_bytes())
    fd = os.open(mnt / "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, b"N" * 3000, 5000)  # a hole first
        seen.append(os.pread(fd, 9000, 0))
    finally:
        os.close(fd)
    with open(mnt / "new", "ab") as f:
        f.write(b"appended")
    seen.append((mnt / "new").read_bytes())
    return seen


def test_upper_passthrough_matches_the_kernel_overlay(tmp_path, mount_fsd, mount_kernel_overlay,
                                                      kernel_passes_through):
    lower, upper, work = _stack(tmp_path / "fsd")
    m = mount_fsd([lower], upper, work, extra_opts=("debug", "upper_passthrough"))
    klower, kupper, kwork = _stack(tmp_path / "kernel")
    write(klower, "big", (lower / "big").read_bytes())
    kmnt = mount_kernel_overlay([klower], kupper, kwork)

    assert _exercise(m.mnt) == _exercise(kmnt)
    assert _requests(m.log, "read") == 0
    assert _requests(m.log, "write") == 0
    for name in ("big", "new"):
        assert (upper / name).read_bytes() == (kupper / name).read_bytes()
    assert (lower / "big").read_bytes() == (klower / "big").read_bytes()  # no lower changed


def test_a_lower_handle_sees_a_copy_up_through_another_handle(tmp_path, mount_fsd,
                                                              mount_kernel_overlay,
                                                              kernel_passes_through):
    """The copy-up rule: a file opened on the lower reads what is written to
    the copy, however the other handles were opened; no open fails for mixing
    the kernel's I/O modes of one inode (it would with EIO)."""
    def scenario(mnt: Path) -> list:
        seen = []
        reader = os.open(mnt / "small", os.O_RDONLY)  # on the lower
        try:
            writer = os.open(mnt / "small", os.O_WRONLY)  # copies up
            os.pwrite(writer, b"UPPER", 0)
            seen.append(os.pread(reader, 100, 0))
            second = os.open(mnt / "small", os.O_RDONLY)  # on the copy
            os.pwrite(writer, b"again", 0)
            seen.append(os.pread(second, 100, 0))
            seen.append(os.pread(reader, 100, 0))
            for fd in (writer, second):
                os.close(fd)
        finally:
            os.close(reader)
        # all closed: the next handles are on the copy only
        a = os.open(mnt / "small", os.O_RDONLY)
        b = os.open(mnt / "small", os.O_RDWR)
        os.pwrite(b, b"third", 0)
        seen.append(os.pread(a, 100, 0))
        os.close(a)
        os.close(b)
        return seen

    lower, upper, work = _stack(tmp_path / "fsd")
    m = mount_fsd([lower], upper, work, extra_opts=("debug", "upper_passthrough"))
    klower, kupper, kwork = _stack(tmp_path / "kernel")
    kmnt = mount_kernel_overlay([klower], kupper, kwork)
    assert scenario(m.mnt) == scenario(kmnt) == [
        b"UPPER data\n", b"again data\n", b"again data\n", b"third data\n"]
    assert (lower / "small").read_bytes() == b"lower data\n"  # written to the copy only
    # the last two handles passed through: only the reads of the first part
    # (the lower handle, and the copy's while the lower handle kept the
    # inode on the normal path) reached fsd
    reads = _requests(m.log, "read")
    assert 0 < reads <= 3


def test_without_upper_passthrough_upper_files_stay_on_the_normal_path(tmp_path, mount_fsd,
                                                                       kernel_passes_through):
    """A freeze holds back every write (freeze.py) only if it reaches fsd."""
    lower, upper, work = _stack(tmp_path)
    m = mount_fsd([lower], upper, work, extra_opts=("debug",))
    with open(m.mnt / "new", "wb") as f:
        f.write(b"x")
    assert (m.mnt / "new").read_bytes() == b"x"
    assert _requests(m.log, "write") == 1
