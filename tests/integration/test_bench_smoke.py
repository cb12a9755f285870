"""scripts/bench works: it runs on a toy data set, prints a well-formed table and
JSON, and leaves nothing mounted, also when interrupted. Timings are never
checked: on a shared machine they mean nothing to a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import mounts

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
SCRATCH = REPO / ".cache" / "bench" / "scratch"
MOUNT_IMPLS = ("kernel", "fuse-overlayfs", "fsd")
FLOOR = "pyfuse3 floor"  # rootful only


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


def _tables(stdout: str) -> list[dict[str, list[str]]]:
    """The markdown tables of the output, each {id: cells}; every row as wide as its header."""
    tables, width = [], None
    for line in stdout.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        assert line.endswith("|"), f"malformed table line: {line!r}"
        cells = [c.strip() for c in line.strip("|").split("|")]
        if width is None:
            width = len(cells)
            assert cells[0] == "id", f"table without its header: {line!r}"
            tables.append({"id": cells})
            continue
        assert len(cells) == width, f"row of {len(cells)} cells under a header of {width}: {line!r}"
        if set(cells[0]) <= {"-"}:
            continue
        tables[-1][cells[0]] = cells
    return tables


def _number_or_dash(cell: str) -> None:
    if cell not in ("-", "ERR"):
        assert float(cell.rstrip("*")) >= 0, cell


def _column(table: dict[str, list[str]], name: str, wid: str) -> str:
    return table[wid][table["id"].index(name)]


def test_bench_small_w1_prints_tables_and_json(bench_ok, tmp_path):
    out_json = tmp_path / "bench.json"
    # --max-load -1: the run counts as busy whatever the machine does, so the
    # verdicts are known: every target "busy, not judged"
    p = subprocess.run([str(BENCH), "--reps", "1", "--only", "w1", "--small", "--max-load", "-1",
                        "--json", str(out_json)],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    why = f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr[-4000:]}"
    assert p.returncode == 0, why
    assert "busy, not judged: load average" in p.stdout, why

    times, requests = _tables(p.stdout)
    assert set(times) == {"id", "w1", "w1w", "mount", "umount"}, why
    for wid, cells in times.items():
        if wid != "id":
            for cell in cells[2:12]:
                _number_or_dash(cell)
            assert _column(times, "fsd s", wid) != "-", "no fsd time"
            assert _column(times, "floor s", wid) != "-", "no time of the pyfuse3 floor"
            assert _column(times, "target", wid).endswith("busy, not judged"), cells
    assert set(requests) == {"id", "w1", "w1w"}, why

    doc = json.loads(out_json.read_text())
    assert doc["format"] == 2
    assert doc["errors"] == []
    assert doc["options"] == {"reps": 1, "only": ["w1"], "small": True, "timeout": 120.0}
    assert doc["machine"]["busy"] and len(doc["machine"]["idle_before_reps"]) == 1
    assert set(doc["workloads"]) == {"w1", "w1w", "mount", "umount"}
    dirs = sum(1 for _, _, _ in os.walk(REPO / ".cache" / "bench" / "small" / "lower" / "tree"))
    measured = [i for i in MOUNT_IMPLS if i not in doc["skipped"]]
    if "rootless" not in doc["skipped"]:
        measured += [f"{i} rootless" for i in MOUNT_IMPLS[1:] if i in measured]
        assert _column(times, "rootless fsd s", "w1") != "-", why
    measured.append(FLOOR)
    assert "fsd" in measured and "kernel" in measured
    for wid, w in doc["workloads"].items():
        assert set(w["runs"]) == set(measured), wid
        for impl in measured:
            (run,) = w["runs"][impl]
            assert run["rep"] == 0 and "error" not in run
            assert isinstance(run["seconds"], float) and run["seconds"] > 0
            assert w["median"][impl] == run["seconds"]
        assert w["target_verdict"] == "busy, not judged" and w["target_met"] is None
        assert w["ratios"]["fsd/kernel"] == pytest.approx(w["median"]["fsd"] / w["median"]["kernel"])
        if wid in ("mount", "umount"):
            assert w["target"] == "<= 0.1 s" and w["target_value"] == w["median"]["fsd"]
            continue
        assert w["target"] == "<= 1.0"
        assert isinstance(w["cpu_median"]["fsd"], float)
        if doc["requests"] == "fuse:fuse_request_send":
            fuse = [i for i in measured if i != "kernel"]
            assert set(w["why"]) == set(fuse), wid
            for impl in fuse:
                ops = w["why"][impl]["requests_by_op"]
                if impl.startswith("fsd") or impl == FLOOR:
                    # find opens every directory of the tree, but after the first
                    # OPENDIR (answered ENOSYS: enable_no_opendir) the kernel sends none
                    assert ops.get("OPENDIR", 0) <= 1 and "RELEASEDIR" not in ops, (impl, ops)
                    if wid == "w1":
                        assert ops["READDIRPLUS"] >= dirs, impl  # and lists each
                else:
                    assert ops["OPENDIR"] >= dirs, impl  # find opens every directory of the tree
                assert w["why"][impl]["cpu_us_per_request"] >= 0
            # the floor serves the same tree: the kernel asks it what it asks fsd
            assert (w["why"][FLOOR]["requests_by_op"].get("OPENDIR", 0)
                    == w["why"]["fsd"]["requests_by_op"].get("OPENDIR", 0))
            assert _column(requests, "floor us/req", wid) != "-", why
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
    _tables(stdout.decode())  # what was measured so far, still well-formed


def test_bench_podman_section_on_a_tiny_image(bench_ok, tmp_path):
    # --small: the image is the podman tests' busybox tree, not a debootstrapped one
    sys.path.insert(0, str(REPO / "tests"))
    from support import podman as podman_support
    reason = podman_support.ensure_podman()
    if reason:
        pytest.skip(reason)
    out_json = tmp_path / "bench.json"
    p = subprocess.run([str(BENCH), "--reps", "1", "--only", "p1", "--small", "--no-rootless",
                        "--json", str(out_json)],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    why = f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr[-4000:]}"
    assert p.returncode == 0, why
    podman, requests = _tables(p.stdout)
    assert set(podman) == set(requests) == {"id", "p1", "p2", "p3"}, why
    doc = json.loads(out_json.read_text())
    assert doc["errors"] == [] and "podman" not in doc["skipped"], why
    for wid in ("p1", "p2", "p3"):
        w = doc["workloads"][wid]
        assert w["group"] == "podman"
        assert set(w["runs"]) == {"fsd", "fuse-overlayfs"} - set(doc["skipped"]), wid
        for impl, (run,) in w["runs"].items():
            assert "error" not in run and run["seconds"] > 0, (wid, impl)
            # the daemons' CPU, from wait4 once they exited: something, never nothing
            assert run["cpu"] > 0, (wid, impl)
            assert run["info"]["mounts"] >= 1, (wid, impl)
            if doc["requests"] == "fuse:fuse_request_send":
                assert run["requests"].get("LOOKUP", 0) > 0, (wid, impl)


def test_bench_profile_summary_attributes_samples_to_their_owner():
    # --profile's reading of py-spy's folded stacks (no daemon needed)
    sys.path.insert(0, str(REPO / "scripts"))
    from benchlib import profile
    top = "<module> (fsd:8);run (trio/_core/_run.py:2535)"
    handler = ("async_wrapper.<locals>.wrapper (_pyfuse3.py:67);__pyx_gb_7pyfuse3_7generator1 (__init__.c:8723);"
               "request.<locals>.handler (fsd/ops.py:58);Operations.getattr (fsd/ops.py:154)")
    folded = "\n".join([
        f"{top};EpollIOManager.get_events (trio/_core/_io_epoll.py:243);epoll_wait (libc.so.6) 50",
        f"{top};{handler};AttrOps.entry (fsd/attr.py:147);Layer.lstat (fsd/layer.py:90);0x7f (libc.so.6) 7",
        f"{top};{handler} 2",
        f"{top};async_wrapper.<locals>.wrapper (_pyfuse3.py:67);fuse_reply_attr (libfuse3.so.3.14.0);writev (libc.so.6) 5",
        f"{top};unrolled_run (trio/_core/_run.py:2743) 3",
        "garbage line",
    ])
    s = profile.summarize(folded)
    assert s == {"samples": 67, "idle": 50,
                 "components": {"fsd layer.py": 7, "/dev/fuse I/O": 5, "trio": 3, "fsd ops.py": 2},
                 "handlers": {"ops.py Operations.getattr": 9}}
    text = profile.render("w1 fsd", profile.merge([s, s]))
    assert text.startswith("w1 fsd: 34 busy samples (100 waiting)\n  by component: fsd layer.py 41%, /dev/fuse I/O 29%")
