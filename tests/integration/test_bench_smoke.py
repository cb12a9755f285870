"""scripts/bench works: it runs on a toy data set, prints a well-formed table and
JSON, and leaves nothing mounted, also when interrupted. Timings are never
checked: on a shared machine they mean nothing to a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import mounts

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
SCRATCH = REPO / ".cache" / "bench" / "scratch"
MOUNT_IMPLS = ("kernel", "fuse-overlayfs", "fsd")


@pytest.fixture
def bench_ok():
    if os.geteuid() != 0:
        pytest.skip("scripts/bench needs root (kernel overlay, drop_caches)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")


def _run_dir(pid: int) -> Path:
    return SCRATCH / f"run-{pid}"


def _mounted_under(path: Path) -> list[str]:
    p = str(path)
    return [m.mountpoint for m in mounts.mount_table() if m.mountpoint.startswith(p + "/")]


def _daemons_of(path: Path) -> list[int]:
    """FUSE daemons started with a mountpoint under path."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(os.fsencode(path) + b"/") for a in argv) and mounts.alive(int(d)):
            out.append(int(d))
    return out


def _table(stdout: str) -> dict[str, list[str]]:
    """The markdown tables of the output: {id: cells}; every row as wide as its header."""
    rows, width = {}, None
    for line in stdout.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        assert line.endswith("|"), f"malformed table line: {line!r}"
        cells = [c.strip() for c in line.strip("|").split("|")]
        if width is None:
            width = len(cells)
            assert cells[0] == "id", f"table without its header: {line!r}"
            continue
        assert len(cells) == width, f"row of {len(cells)} cells under a header of {width}: {line!r}"
        if set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = cells
    return rows


def _number_or_dash(cell: str) -> None:
    if cell not in ("-", "ERR"):
        assert float(cell.rstrip("*")) >= 0, cell


def test_bench_small_w1_prints_table_and_json(bench_ok, tmp_path):
    out_json = tmp_path / "bench.json"
    p = subprocess.run([str(BENCH), "--reps", "1", "--only", "w1", "--small", "--json", str(out_json)],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    why = f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr[-4000:]}"
    assert p.returncode == 0, why

    rows = _table(p.stdout)
    assert set(rows) == {"w1", "w1w"}, why
    for cells in rows.values():
        for cell in cells[2:9]:
            _number_or_dash(cell)
        assert cells[4] != "-", "no fsd time"

    doc = json.loads(out_json.read_text())
    assert doc["format"] == 1
    assert doc["errors"] == []
    assert doc["options"] == {"reps": 1, "only": ["w1"], "small": True, "timeout": 120.0}
    assert set(doc["workloads"]) == {"w1", "w1w"}
    measured = [i for i in MOUNT_IMPLS if i not in doc["skipped"]]
    assert "fsd" in measured and "kernel" in measured
    for wid, w in doc["workloads"].items():
        assert set(w["runs"]) == set(measured), wid
        for impl in measured:
            (run,) = w["runs"][impl]
            assert run["rep"] == 0 and "error" not in run
            assert isinstance(run["seconds"], float) and run["seconds"] > 0
            assert w["median"][impl] == run["seconds"]
        assert isinstance(w["cpu_median"]["fsd"], float)
        assert set(w["ratios"]) == {"fsd/fuse-overlayfs", "fsd/kernel"}
        assert w["ratios"]["fsd/kernel"] == pytest.approx(w["median"]["fsd"] / w["median"]["kernel"])
        assert w["target"] == "<= 1.0" and w["target_met"] in (True, False, None)
    assert doc["data"]["lower"]["size"] == "small"


def test_bench_interrupted_leaves_nothing_mounted(bench_ok, tmp_path):
    # The same data as above; built here too when this test runs alone.
    p = subprocess.Popen([str(BENCH), "--reps", "3", "--only", "w1", "w2", "w3", "--small"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # the bash script execs python: the run dir is named after this pid
        run_dir = _run_dir(p.pid)
        end = time.monotonic() + 600
        while not any(m.fstype == "fuse.fsd" for m in mounts.mount_table()
                      if m.mountpoint.startswith(str(run_dir) + "/")):
            assert p.poll() is None, f"bench ended before mounting fsd: {p.communicate()}"
            assert time.monotonic() < end, "no fsd mount from the bench within 600s"
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in its terminal
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, stderr.decode()[-4000:]
    assert b"interrupted" in stderr
    assert _mounted_under(run_dir) == []
    assert _daemons_of(run_dir) == []
    assert not run_dir.exists()
    _table(stdout.decode())  # what was measured so far, still well-formed
