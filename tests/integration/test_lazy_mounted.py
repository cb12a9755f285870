"""Lazy layers on a real fsd mount (fsd/lazy.py): a placeholder lower of sparse
files carrying `user.strata.lazy`, completed by a real fetcher on a unix socket
in this process (support/lazyfetcher.py).  Concurrency is ordered by holding
the fetcher: a request that would wait on the held fetch hangs the test until
its deadline, never a timing assertion."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading

import pytest

from support.lazyfetcher import LAZY_XATTR, A, B, H, lazy_layer


@pytest.fixture
def lazy(tmp_path):
    with lazy_layer(tmp_path) as (layer, fetcher):
        yield layer, fetcher


def _dirs(tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def test_reads_fetch_each_file_once_and_metadata_never(tmp_path, mount_fsd, lazy):
    layer, fetcher = lazy
    m = mount_fsd([layer], *_dirs(tmp_path))
    assert os.stat(m.mnt / "d/b").st_size == len(B)
    assert sorted(os.listdir(m.mnt)) == ["a", "d", "empty", "h1"]
    assert sorted(os.listdir(m.mnt / "d")) == ["b", "h2", "link"]
    assert os.readlink(m.mnt / "d/link") == "../a"
    assert fetcher.requests == []
    assert (m.mnt / "a").read_bytes() == A
    assert (m.mnt / "d/b").read_bytes() == B
    assert (m.mnt / "d/link").read_bytes() == A
    assert (m.mnt / "h1").read_bytes() == H
    assert (m.mnt / "d/h2").read_bytes() == H  # the other name of h1: complete already
    assert (m.mnt / "empty").read_bytes() == b""
    asked = sorted(p for _, p in fetcher.requests)  # h1 by either of its names
    assert asked[:2] == ["a", "d/b"] and asked[2:] in (["d/h2"], ["h1"]), asked
    assert {la for la, _ in fetcher.requests} == {str(layer)}


def test_reads_of_a_mount_without_upper(mount_fsd, lazy):
    """Lower files of a mount without upper pass through (FUSE passthrough,
    where the kernel has it): the backing file is the completed one."""
    layer, fetcher = lazy
    m = mount_fsd([layer])
    assert (m.mnt / "d/b").read_bytes() == B
    assert (m.mnt / "a").read_bytes() == A
    assert len(fetcher.requests) == 2


def test_a_write_copies_up_the_completed_content(tmp_path, mount_fsd, lazy):
    layer, fetcher = lazy
    upper, work = _dirs(tmp_path)
    m = mount_fsd([layer], upper, work)
    with open(m.mnt / "a", "r+b") as f:
        f.write(b"ALPHA")
    with open(m.mnt / "h1", "ab") as f:
        f.write(b"more")
    assert (m.mnt / "a").read_bytes() == b"ALPHA" + A[5:]
    assert (upper / "a").read_bytes() == b"ALPHA" + A[5:]
    assert (m.mnt / "d/h2").read_bytes() == H + b"more"  # the hard link kept
    assert os.getxattr(upper / "a", "user.test") == b"kept"
    for path in ("a", "h1", "d/h2"):
        assert LAZY_XATTR not in os.listxattr(upper / path)
    asked = sorted(p for _, p in fetcher.requests)  # h1 by either of its names
    assert asked[:1] == ["a"] and asked[1:] in (["d/h2"], ["h1"]), asked


@pytest.mark.fsd_errors_expected("could not be fetched")
def test_a_failing_fetcher_gives_eio_one_log_line_and_a_later_open_succeeds(tmp_path, mount_fsd, lazy,
                                                                            fsd_log):
    layer, fetcher = lazy
    m = mount_fsd([layer], *_dirs(tmp_path))
    fetcher.fail = "registry gone"
    for _ in range(3):
        with pytest.raises(OSError) as failed:
            (m.mnt / "a").read_bytes()
        assert failed.value.errno == errno.EIO
    lines = [ln for ln in fsd_log.text().splitlines() if "could not be fetched" in ln]
    assert len(lines) == 1
    assert re.search(rf"ERROR lazy layer {re.escape(str(layer))}: b'a' could not be fetched: "
                     r"registry gone$", lines[0]), lines
    fetcher.fail = None
    assert (m.mnt / "a").read_bytes() == A


def test_a_slow_fetch_does_not_stall_other_requests(tmp_path, mount_fsd, lazy):
    layer, fetcher = lazy
    m = mount_fsd([layer], *_dirs(tmp_path))
    assert (m.mnt / "h1").read_bytes() == H
    fetcher.hold()
    got = []
    reader = threading.Thread(target=lambda: got.append((m.mnt / "d/b").read_bytes()))
    reader.start()
    fetcher.wait_held()
    # While the fetch of d/b is held, other requests are answered:
    assert os.stat(m.mnt / "a").st_size == len(A)
    assert sorted(os.listdir(m.mnt / "d")) == ["b", "h2", "link"]
    assert (m.mnt / "d/h2").read_bytes() == H
    fetcher.release()
    reader.join()
    assert got == [B]


def test_the_lazy_xattr_is_not_shown_through_the_mount(tmp_path, mount_fsd, lazy):
    layer, fetcher = lazy
    m = mount_fsd([layer], *_dirs(tmp_path))
    assert os.listxattr(m.mnt / "a") == ["user.test"]
    assert os.listxattr(m.mnt) == []
    with pytest.raises(OSError) as refused:
        os.setxattr(m.mnt / "empty", "user.strata.other", b"x")
    assert refused.value.errno == errno.EPERM
    if shutil.which("getfattr") is None:
        pytest.skip("getfattr (Debian package attr) is not installed")
    shown = subprocess.run(["getfattr", "-R", "-d", "-m", "-", m.mnt], capture_output=True,
                           text=True, check=True).stdout
    assert "user.test" in shown and "user.strata" not in shown
    assert fetcher.requests == []
