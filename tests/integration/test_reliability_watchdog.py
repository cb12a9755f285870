"""fsd's watchdog on a real mount: a request in flight longer than
fsd.watchdog.LIMIT is logged once in fsd's log, with its operation, its inode
and what it waits on.

The slow request is real: an open for writing of a big lower file, whose
copy-up fsd makes in a worker thread; strace delays that thread's fsync by
LIMIT + 4 s (the call itself is made, later).
"""

from __future__ import annotations

import os
import re

import pytest

from fsd.watchdog import LIMIT
from support.faults import Strace, daemon_pids
from support.layergen import make_layers, write

MiB = 1 << 20


@pytest.mark.fuse_deadline(60)
def test_a_request_held_past_the_limit_is_logged_once_with_what_it_waits_on(tmp_path, mount_fsd):
    (lower,) = make_layers(tmp_path / "layers", 1)
    write(lower, "big", b"b" * (2 * MiB))  # over fsd's threshold for a copy in a worker thread
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd([lower], upper, work)
    inode = os.lstat(m.mnt / "big").st_ino
    delay = int((LIMIT + 4) * 1_000_000)
    trace = Strace(daemon_pids(m)[0], "fsync", tmp_path / "fsync.trace",
                   ("-e", f"inject=fsync:delay_enter={delay}:when=1"))
    try:
        with open(m.mnt / "big", "r+b") as f:  # the open copies the file up
            f.write(b"B")
    finally:
        trace.stop()
    assert (m.mnt / "big").read_bytes()[:2] == b"Bb"
    log = m.log.read_text()
    reports = [line for line in log.splitlines() if "in flight" in line]
    assert len(reports) == 1, log
    assert re.search(rf"WARNING request open \(inode {inode}\) in flight for \d+ s, waiting on: "
                     rf"a worker thread copying {2 * MiB} bytes of b'big'$", reports[0]), reports[0]
