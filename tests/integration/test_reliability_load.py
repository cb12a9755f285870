"""fsd under load: 8 processes doing mixed operations on one mount for a bounded
time (stress workers of tests/support/upper_ops.py, plus workers that use files
through mmap after closing them and files unlinked while open), and a process
walking the whole tree beside them. No errno a kernel overlay would not give
in such races, no EIO, no ERROR in the log (the fsd_log fixture); afterwards the
daemon's open descriptors return to their idle level.

And memory: many lookups and forgets (the kernel is made to forget with
drop_caches) do not make the daemon's resident memory grow without bound.

Default: 10 s of load and 100k lookups; the long variants 60 s and 1M lookups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import mounts
from support.faults import daemon_pids, drop_caches, fd_count, fd_targets, rss_kib
from support.layergen import make_layers, whiteout, write

TESTS = Path(__file__).resolve().parents[1]
MiB = 1 << 20
DIRS, FILES = 4, 12


def _stack(root: Path) -> list[Path]:
    top, mid, bottom = make_layers(root, 3)
    for d in range(DIRS):
        for f in range(FILES):
            layer = (top, mid, bottom)[(d + f) % 3]
            write(layer, f"d{d}/f{f}", os.urandom(MiB if f == 0 else 100 * (f + 1) * (d + 1)))
        (bottom / f"d{d}/s0").mkdir()
        write(bottom, f"d{d}/s1/inner", "inner")
        whiteout(top, f"d{d}/f{FILES - 1 - d}", "chardev")
    for seed in range(100, 102):
        for i in range(FILES):
            write(bottom, f"mm{seed}/m{i}", os.urandom(4096 * (i + 1)))
    return [top, mid, bottom]


def _settle(pid: int, want: int, timeout: float = 15.0) -> int:
    """The daemon's fd count once it is back to want (RELEASEs come asynchronously)."""
    end = time.monotonic() + timeout
    n = fd_count(pid)
    while n > want and time.monotonic() < end:
        drop_caches()
        time.sleep(0.1)
        n = fd_count(pid)
    return n


def _load(seconds: float, tmp_path, mount_fsd):
    lowers = _stack(tmp_path / "layers")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd(lowers, upper, work)
    (pid,) = daemon_pids(m)
    os.listdir(m.mnt)
    # a read reply of two pages or more is spliced through a pipe that libfuse
    # then keeps for the session: part of the idle level, not a leak
    (m.mnt / "d0" / "f0").read_bytes()
    idle_fds = fd_count(pid)
    idle_list = fd_targets(pid)
    stress = [[sys.executable, "-m", "support.upper_ops", "stress", str(m.mnt), str(seed), str(seconds),
               str(DIRS), str(FILES)] for seed in range(5)]
    others = [[sys.executable, "-m", "support.faults", "load", kind, str(m.mnt), str(seed), str(seconds),
               str(DIRS), str(FILES)] for kind, seed in (("mmap", 100), ("mmap", 101), ("unlinked", 102),
                                                          ("walk", 103))]
    procs = [subprocess.Popen(argv, cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in stress + others]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, fd_count(pid))
        time.sleep(0.2)
    reports = []
    for p, argv in zip(procs, stress + others):
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"a load worker hung: {argv[3:5]}")
        assert p.returncode == 0, f"worker {argv[3:5]} failed: {err[-2000:]}"
        reports.append(json.loads(out))
    unexpected = [u for r in reports for u in r["unexpected"]]
    total = sum(r["ops"] for r in reports)
    assert not unexpected, f"errors no kernel overlay would give ({total} ops):\n" + "\n".join(unexpected[:30])
    walks = reports[-1]["ops"]
    assert total > 8 * seconds * 10 and walks >= 2, f"only {total} operations ({walks} walks) in {seconds}s"
    assert all(mounts.alive(p) for p in daemon_pids(m)), "the daemon died under load"

    after = _settle(pid, idle_fds)
    assert after <= idle_fds, (f"the daemon holds {after} descriptors after the load, {idle_fds} when idle "
                               f"(peak {peak}):\nnow:  " + "\n      ".join(fd_targets(pid)) +
                               "\nidle: " + "\n      ".join(idle_list))
    assert os.listdir(work / "fsd" / "tmp") == []
    print(f"load: {total} operations in {seconds}s, {walks} walks; fds idle {idle_fds}, peak {peak}, after {after}")


@pytest.mark.fuse_deadline(90)
def test_eight_processes_and_a_tree_walk(tmp_path, mount_fsd):
    _load(10, tmp_path, mount_fsd)


@pytest.mark.long
@pytest.mark.fuse_deadline(240)
def test_eight_processes_and_a_tree_walk_long(tmp_path, mount_fsd):
    _load(60, tmp_path, mount_fsd)


# -- memory after many lookups and forgets ---------------------------------------------------------

def _lookups(total: int, tmp_path, mount_fsd, files: int = 10_000):
    (lower,) = make_layers(tmp_path / "layers", 1)
    for i in range(files // 1000):
        d = lower / f"dir{i}"
        d.mkdir()
        for j in range(1000):
            (d / f"f{j:04d}").write_bytes(b"")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    m = mount_fsd([lower], upper, work)
    (pid,) = daemon_pids(m)
    names = [m.mnt / f"dir{i}" / f"f{j:04d}" for i in range(files // 1000) for j in range(1000)]
    rounds = max(3, total // files)
    rss, fds = [], []
    t = time.monotonic()
    for r in range(rounds):
        for p in names:
            os.lstat(p)
        subprocess.run(["sync"], check=True)
        drop_caches()
        time.sleep(0.2)  # FORGETs are sent as the kernel evicts
        rss.append(rss_kib(pid))
        fds.append(fd_count(pid))
    took = time.monotonic() - t
    # The RSS of a Python process swings with what the allocator hands back,
    # and with how many FORGETs came before the sample: compare peaks, the
    # last third's against the first third's (the warm-up round left out).
    third = max(1, (rounds - 1) // 3)
    early, late = max(rss[1:1 + third]), max(rss[-third:])
    grown = late - early
    print(f"{rounds * files} lookups+forgets in {took:.0f}s; RSS KiB per round {rss}; fds {fds}")
    assert grown < max(4096, early // 10), \
        f"the daemon's peak RSS grew by {grown} KiB over {rounds - 1} rounds of {files} lookups and forgets: {rss}"
    assert fds[-1] <= fds[0], f"descriptors grew with lookups: {fds}"


@pytest.mark.fuse_deadline(120)
def test_memory_after_100k_lookups_and_forgets(tmp_path, mount_fsd):
    _lookups(100_000, tmp_path, mount_fsd)


@pytest.mark.long
@pytest.mark.fuse_deadline(900)
def test_memory_after_a_million_lookups_and_forgets(tmp_path, mount_fsd):
    _lookups(1_000_000, tmp_path, mount_fsd, files=20_000)
