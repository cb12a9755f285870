"""scripts/bench-lazy works: on the busybox image it pushes, pulls through its
shaped network, runs the command in the container and checks its output,
prints its tables and JSON, and leaves no store, mount or process behind.
Timings are never checked: on a shared machine they mean nothing to a test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support import mounts

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench-lazy"
SCRATCH = REPO / ".cache" / "bench" / "scratch"
MODES = ("full gzip", "full estargz", "lazy")


def _processes_under(path: Path) -> list[str]:
    needle = str(path) + "/"
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, NotADirectoryError):
            continue
        if needle in argv:
            out.append(f"{d} {argv}")
    return out


def _table(stdout: str, first_header: str) -> dict[str, list[str]]:
    """The markdown table whose first header cell is first_header: {first cell: cells}."""
    rows, width, on = {}, None, False
    for line in stdout.splitlines():
        if not line.startswith("|"):
            on = False
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if width is None or not on:
            if cells[0] != first_header:
                continue
            on, width = True, len(cells)
            rows["header"] = cells
            continue
        assert len(cells) == width, f"row of {len(cells)} cells under a header of {width}: {line!r}"
        if not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells
    assert rows, f"no table headed {first_header!r} in:\n{stdout}"
    return rows


def test_bench_lazy_small_runs_every_mode_it_can_and_cleans_up(fuse_root, tmp_path):
    out_json = tmp_path / "lazy.json"
    p = subprocess.run([str(BENCH), "--small", "--reps", "1", "--max-load", "-1", "--json", str(out_json)],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    why = f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr[-4000:]}"
    assert p.returncode == 0, why
    assert "busy, not judged: load average" in p.stdout, why
    doc = json.loads(out_json.read_text())
    assert doc["errors"] == [], why

    first = _table(p.stdout, "first image")
    second = _table(p.stdout, "second image, into the store holding the first")
    # the full pull of the gzip image is there from the start
    run = doc["runs"]["full gzip"][0]
    assert run["first_output_s"] >= run["pull_s"] > 0, run
    assert run["fetched_first_output"] >= doc["images"]["layer_bytes"]["first:gzip"], run
    assert run["second_fetched"] >= doc["images"]["layer_bytes"]["second:gzip"], run
    assert first["full gzip"][3] != "-" and second["gzip: whole layers"][2] != "-", why
    # every other mode ran, or says in its row why it did not
    for mode in MODES[1:]:
        if mode in doc["skipped"]:
            assert f"not run: {doc['skipped'][mode]}" in first[mode][-1], why
            assert doc["runs"].get(mode, []) == []
        else:
            (run,) = doc["runs"][mode]
            assert "error" not in run and run["first_output_s"] > 0, run
    assert "not measured, the additional layer store of issue 17 is not built yet" in p.stdout

    assert not list(SCRATCH.glob("lazy-*")), "the run's scratch directory is left"
    assert [m.mountpoint for m in mounts.mount_table() if "/.cache/bench/scratch/lazy-" in m.mountpoint] == []
    assert _processes_under(SCRATCH) == []
