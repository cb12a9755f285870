"""fsync through fsd syncs the real file in the upper; with fsync=0 or volatile
nothing is synced at all.

The daemon's sync calls are watched with strace -f -y (each descriptor shown
with its path): a file written and fsynced through the mount must be fsynced
(fdatasync for fdatasync) on a descriptor of its upper file, a directory on a
descriptor of its upper directory.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from support.faults import Strace, daemon_pids
from support.layergen import make_layers, write

SYNCS = "fsync,fdatasync,syncfs,sync,sync_file_range"


@pytest.fixture
def strace_ok():
    if shutil.which("strace") is None:
        pytest.skip("needs strace (apt-get install strace)")


def _syncs(lines: list[str]) -> list[tuple[str, str]]:
    """(call, path of its descriptor) of every sync call that returned 0."""
    out = []
    for line in lines:
        m = re.match(r"^\d+\s+(\w+)\(\d+<(.*)>.*\)\s+=\s+0", line)
        if m and m.group(1) in SYNCS.split(","):
            out.append((m.group(1), m.group(2)))
        elif re.match(r"^\d+\s+(sync|syncfs)\(", line):
            out.append((line.split("(")[0].split()[-1], ""))
    return out


def _workload(mnt):
    with open(mnt / "new", "wb") as f:  # a file made in the upper
        f.write(b"new data")
        f.flush()
        os.fsync(f.fileno())
    with open(mnt / "lower-file", "ab") as f:  # copied up, then synced
        f.write(b"+appended")
        f.flush()
        os.fdatasync(f.fileno())
    os.mkdir(mnt / "newdir")
    write(mnt, "newdir/inner", "x")
    fd = os.open(mnt / "newdir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("opt", [None, "fsync=1"])
def test_fsync_reaches_the_upper_file(tmp_path, mount_fsd, strace_ok, opt):
    (lower,) = make_layers(tmp_path / "layers", 1)
    write(lower, "lower-file", "lower")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd([lower], upper, work, extra_opts=[opt] if opt else [])
    trace = Strace(daemon_pids(m)[0], SYNCS, tmp_path / "sync.trace")
    try:
        _workload(m.mnt)
    finally:
        lines = trace.stop()
    got = _syncs(lines)
    want = [("fsync", f"{upper}/new"), ("fdatasync", f"{upper}/lower-file"), ("fsync", f"{upper}/newdir")]
    missing = [w for w in want if w not in got]
    assert not missing, f"fsync through the mount did not sync the upper: missing {missing}; the daemon " \
                        f"synced {got}"
    assert (upper / "lower-file").read_bytes() == b"lower+appended"


@pytest.mark.parametrize("opt", ["fsync=0", "volatile"])
def test_no_sync_with_fsync_0_or_volatile(tmp_path, mount_fsd, strace_ok, opt):
    (lower,) = make_layers(tmp_path / "layers", 1)
    write(lower, "lower-file", "lower")
    write(lower, "big", os.urandom(3 << 20))
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd([lower], upper, work, extra_opts=[opt])
    trace = Strace(daemon_pids(m)[0], SYNCS, tmp_path / "sync.trace")
    try:
        _workload(m.mnt)
        with open(m.mnt / "big", "r+b") as f:  # a big copy-up, then fsync
            f.write(b"X")
            os.fsync(f.fileno())
    finally:
        lines = trace.stop()
    got = _syncs(lines)
    assert got == [], f"with {opt} the daemon still synced: {got}"
    assert (upper / "new").read_bytes() == b"new data"
