"""Several processes changing one merged tree at once.

Races give the errnos a kernel overlay gives (ENOENT, EEXIST, ENOTEMPTY,
ENOTDIR, EISDIR); never EIO or anything else, and the daemon logs no ERROR
(the fsd_log fixture checks every test). Afterwards the tree is consistent,
the same after a remount, and the kernel overlay reads fsd's upper the same
way. Also: a big copy-up does not stop other requests, and processes that
need the same copy-up share one copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import fsck
from support.layergen import make_layers, whiteout, write
from support.snapshot import compare, invariant_problems, snapshot
from support.upper_ops import daemon_pids, io_counters, wait_until, write_big

MiB = 1 << 20
TESTS = Path(__file__).resolve().parents[1]
WORKERS = 4
SECONDS = 4.0
DIRS, FILES = 4, 12


def _stack(root: Path) -> list[Path]:
    top, mid, bottom = make_layers(root, 3)
    for d in range(DIRS):
        for f in range(FILES):
            layer = (top, mid, bottom)[(d + f) % 3]
            size = 2 * MiB if f == 0 else 100 * (f + 1) * (d + 1)
            write(layer, f"d{d}/f{f}", os.urandom(size))
        (bottom / f"d{d}/s0").mkdir()
        write(bottom, f"d{d}/s1/inner", "inner")
        hidden = next(f for f in range(FILES - 1, 0, -1) if (d + f) % 3)  # a name below the top layer
        whiteout(top, f"d{d}/f{hidden}", "chardev")
    return [top, mid, bottom]


def _upper(tmp_path: Path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


@pytest.mark.fuse_deadline(90)
def test_processes_racing_on_one_tree(tmp_path, mount_fsd, mount_kernel_overlay):
    lowers = _stack(tmp_path / "layers")
    upper, work = _upper(tmp_path)
    m = mount_fsd(lowers, upper, work)
    procs = [subprocess.Popen([sys.executable, "-m", "support.upper_ops", "stress", str(m.mnt), str(seed),
                               str(SECONDS), str(DIRS), str(FILES)],
                              cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in range(WORKERS)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=SECONDS + 60)
        assert p.returncode == 0, f"stress worker failed: {err}"
        reports.append(json.loads(out))
    unexpected = [u for r in reports for u in r["unexpected"]]
    total = sum(r["ops"] for r in reports)
    tally: dict[str, int] = {}
    for r in reports:
        for k, v in r["errors"].items():
            tally[k] = tally.get(k, 0) + v
    assert not unexpected, f"errors no kernel overlay would give ({total} ops):\n" + "\n".join(unexpected[:30])
    assert total > 400, f"only {total} operations in {SECONDS}s"

    before = snapshot(m.mnt)
    assert invariant_problems(before) == []
    fsck.assert_clean(lowers, upper, work)
    m.unmount()
    m = mount_fsd(lowers, upper, work)
    after = snapshot(m.mnt)
    assert compare(before, after, "before remount", "after remount") == []
    changed = {p: (i, after.ino.get(p)) for p, i in before.ino.items() if after.ino.get(p) != i}
    assert not changed, f"inode numbers changed across a remount: {dict(list(changed.items())[:8])}"
    m.unmount()
    # the stack uses the kernel's marker forms only: the kernel reads fsd's upper as is
    kwork = tmp_path / "kwork"
    kwork.mkdir()
    k = mount_kernel_overlay(lowers, upper, kwork)
    assert compare(snapshot(k), before, "kernel on fsd's upper", "fsd") == []


def _daemon_wchar(m) -> int:
    return sum(io_counters(p)["wchar"] for p in daemon_pids(m))


@pytest.mark.fuse_deadline(90)
def test_other_requests_are_served_during_a_big_copy_up(tmp_path, mount_fsd):
    (lower,) = make_layers(tmp_path / "layers", 1)
    size = 200 * MiB
    write_big(lower / "big", size)
    for i in range(50):
        write(lower, f"small/f{i}", f"small {i}")
    upper, work = _upper(tmp_path)
    m = mount_fsd([lower], upper, work)
    tmp = work / "fsd" / "tmp"
    writer = subprocess.Popen([sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('x')",
                               str(m.mnt / "big")])
    try:
        def copying():
            sizes = [os.lstat(tmp / n).st_size for n in os.listdir(tmp) if n != "probe"]
            return sizes and 0 < max(sizes) < size // 2
        assert wait_until(copying, 30), "never saw the copy-up in progress"
        slowest, during = 0.0, 0
        for i in range(50):
            t = time.monotonic()
            os.lstat(m.mnt / f"small/f{i}")
            assert (m.mnt / f"small/f{i}").read_text() == f"small {i}"
            write(m.mnt, f"small/new{i}", "new")
            os.listdir(m.mnt / "small")
            slowest = max(slowest, time.monotonic() - t)
            if writer.poll() is None:
                during += 1
        assert during >= 10, f"the copy-up ended before the other requests were tried ({during})"
        assert slowest < 1.0, f"a request waited {slowest:.2f}s behind the copy-up"
    finally:
        writer.wait(60)
    assert writer.returncode == 0
    assert os.lstat(m.mnt / "big").st_size == size + 1


@pytest.mark.fuse_deadline(90)
def test_processes_needing_one_copy_up_share_it(tmp_path, mount_fsd):
    (lower,) = make_layers(tmp_path / "layers", 1)
    size = 64 * MiB
    write_big(lower / "big", size)
    upper, work = _upper(tmp_path)
    m = mount_fsd([lower], upper, work)
    w0 = _daemon_wchar(m)
    code = "import sys, os; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND); os.write(fd, sys.argv[2].encode())"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(m.mnt / "big"), f"<{i}>"]) for i in range(6)]
    for p in procs:
        assert p.wait(60) == 0
    copied = _daemon_wchar(m) - w0
    assert copied < 1.5 * size, f"{copied / MiB:.0f} MiB written for one {size // MiB} MiB copy-up"
    with open(m.mnt / "big", "rb") as f:
        f.seek(size)
        tail = f.read().decode()
    assert sorted(tail.replace("><", ">\n<").split("\n")) == sorted(f"<{i}>" for i in range(6))
    assert os.lstat(m.mnt / "big").st_size == size + len(tail)
