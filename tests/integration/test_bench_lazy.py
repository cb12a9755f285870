"""scripts/bench-lazy works: on the busybox image it pushes gzip and eStargz,
pulls through its shaped network fully and lazily, runs the command in the
container (the bench checks its output), waits for the background fetch,
pulls a second image, has podman pull the image and run it from the store's
additional layer store, prints its tables and JSON, and leaves no store,
mount or process behind.
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


def test_bench_lazy_small_runs_every_mode_and_cleans_up(fuse_root, tmp_path):
    out_json = tmp_path / "lazy.json"
    p = subprocess.Popen([str(BENCH), "--small", "--reps", "1", "--max-load", "-1", "--json", str(out_json)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    stdout, stderr = p.communicate(timeout=900)
    run_dir = SCRATCH / f"lazy-{p.pid}"   # the script execs the bench: its pid
    why = f"exit {p.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr[-4000:]}"
    assert p.returncode == 0, why
    assert "busy, not judged: load average" in stdout, why
    doc = json.loads(out_json.read_text())
    assert doc["errors"] == [], why

    first = _table(stdout, "first image")
    second = _table(stdout, "second image, into the store holding the first")
    for mode in MODES:
        assert first[mode][3] != "-", why
    full, lazy = doc["runs"]["full gzip"][0], doc["runs"]["lazy"][0]
    layer_bytes = doc["images"]["layer_bytes"]
    assert full["first_output_s"] >= full["pull_s"] > 0, full
    assert full["fetched_first_output"] >= layer_bytes["first:gzip"], full
    assert full["second_fetched"] >= layer_bytes["second:gzip"], full
    # the lazy run fetched its layers by ranges only (the one blob it got
    # whole is the config), the full one whole; the command's first output came
    # before the layers were complete or with them; in the end every byte of
    # the layers came (and the bench waited until every layer was an ordinary one)
    def whole_blobs(run):
        return [q for q in run["requests"] if q[2].startswith("sha256:") and q[3] is None]
    assert len(whole_blobs(lazy)) == 1, lazy["requests"]
    assert len(whole_blobs(full)) == 3, full["requests"]
    assert lazy["traffic_after_pull"]["ranged"] >= 2, lazy
    assert lazy["background_done_s"] >= lazy["first_output_s"] > lazy["pull_s"], lazy
    assert lazy["fetched_total"] >= layer_bytes["first:estargz"], lazy
    for wanted in ("gzip: whole layers", "estargz: partial pull by content"):
        assert second[wanted][2] != "-", why
    # podman pulled the gzip image itself, and ran the eStargz one from the
    # store's additional layer store: it fetched the manifest and config only
    if doc["podman_skipped"]:
        assert f"not run: {doc['podman_skipped']}" in stdout, why
    else:
        podman = _table(stdout, "podman run of the first image")
        assert all(cells[3] != "-" for name, cells in podman.items() if name != "header"), why
        plain, als = doc["runs"]["podman pull"][0], doc["runs"]["podman + ALS"][0]
        assert plain["fetched_after_pull"] >= layer_bytes["first:gzip"], plain
        assert als["done_s"] > als["pull_s"] > 0, als

    assert not run_dir.exists(), "the run's scratch directory is left"
    assert [m.mountpoint for m in mounts.mount_table() if m.mountpoint.startswith(f"{run_dir}/")] == []
    assert _processes_under(run_dir) == []
