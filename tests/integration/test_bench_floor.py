"""The pyfuse3 floor (scripts/benchlib/floorfs.py), the bench's instrument for
what any Python filesystem on pyfuse3 pays: it must do the work an overlay
cannot skip on the workloads it is compared on — on w4, a durable copy of a
file before its first write — or its column would understate the floor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import mounts

REPO = Path(__file__).resolve().parents[2]
FLOORFS = REPO / "scripts" / "benchlib" / "floorfs.py"


@pytest.fixture
def floor(tmp_path):
    """A floorfs mount serving tmp_path/backing at tmp_path/mnt; unmounted after."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounts floorfs as root")
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "old").write_bytes(b"lower data")
    proc = subprocess.Popen([sys.executable, str(FLOORFS), "-o", f"upperdir={backing}", str(mnt)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, "floorfs exited before mounting"
            assert time.monotonic() < deadline, "floorfs did not mount"
            time.sleep(0.05)
        yield backing, mnt
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert not any(m.mountpoint == str(mnt) for m in mounts.mount_table())


def test_a_file_opened_for_writing_is_copied_before_it_is_written(floor):
    backing, mnt = floor
    before = (backing / "old").stat().st_ino
    with open(mnt / "old", "ab") as f:
        f.write(b"+")
    after = (backing / "old").stat().st_ino
    assert after != before, "written in place: the floor paid no copy-up"
    assert (backing / "old").read_bytes() == b"lower data+"
    assert (mnt / "old").read_bytes() == b"lower data+"
    assert not [n for n in os.listdir(backing) if n != "old"], "the copy's temporary name was left"
    with open(mnt / "old", "ab") as f:  # copied once only
        f.write(b"!")
    assert (backing / "old").stat().st_ino == after
    with open(mnt / "old", "wb") as f:  # O_TRUNC of a copied file: in place
        f.write(b"new")
    assert (backing / "old").stat().st_ino == after and (backing / "old").read_bytes() == b"new"


def test_a_file_it_created_is_written_in_place(floor):
    backing, mnt = floor
    with open(mnt / "made", "wb") as f:
        f.write(b"x")
    ino = (backing / "made").stat().st_ino
    with open(mnt / "made", "ab") as f:
        f.write(b"y")
    assert (backing / "made").stat().st_ino == ino
    assert (backing / "made").read_bytes() == b"xy"
