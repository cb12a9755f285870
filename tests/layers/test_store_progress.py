"""Progress on a terminal (layers/progress.py): what a line says, one line
per layer across threads, and every long command drawing it on a terminal
but not when piped or with -q."""

import io
import json
import os
import re
import threading

import pytest

from layers.progress import TerminalProgress

from storetools import LAYERS_EXE, file, make_tar, run_on_terminal


class Clock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def test_a_line_says_bytes_of_total_percentage_and_rate():
    out = io.StringIO()
    display = TerminalProgress("importing", out, interval=0, clock=Clock(0, 0, 2, 4))
    display.layer_start(1, 3, "blobs/sha256/" + "ab" * 32, 4_000_000)
    display.layer_bytes(1_000_000)
    display.layer_done(object())
    lines = [chunk.split("\x1b[2K")[-1] for chunk in out.getvalue().split("\n") if chunk]
    assert lines == ["layer 2/3 abababababab: importing 0B of 4MB (0%)",
                     "layer 2/3 abababababab: importing 1MB of 4MB (25%) at 500kB/s",
                     "layer 2/3 abababababab: done 1MB of 4MB (25%) at 250kB/s"]


def test_one_line_per_layer_across_threads():
    out = io.StringIO()
    display = TerminalProgress("pulling", out, interval=0, clock=Clock(0))

    def one(i):
        display.layer_start(i, 3, f"reg/app@sha256:{i}{'0' * 63}", 1000)
        for n in (100, 500, 1000):
            display.layer_bytes(n)
        display.layer_done(object() if i else None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    display.finish()
    last = out.getvalue().rsplit("\x1b[3F", 1)[-1]
    assert last == ("\x1b[2Klayer 1/3 000000000000: present\n"
                    "\x1b[2Klayer 2/3 100000000000: done 1kB of 1kB (100%)\n"
                    "\x1b[2Klayer 3/3 200000000000: done 1kB of 1kB (100%)\n")


@pytest.fixture
def workload(store_env, tmp_path):
    """An imported 1 MB layer and a container with a change, and the command
    lines of every long command but pull and push (tests/integration)."""
    env = store_env
    tar = make_tar(tmp_path / "big.tar", [file("data", os.urandom(1_000_000))])
    env.ok("import", "-q", str(tar), "--name", "big:1")
    env.ok("create", "big:1", "--name", "c")
    mp = env.ok("mount", "c").out.strip()
    with open(os.path.join(mp, "new"), "wb") as f:
        f.write(os.urandom(300_000))
    env.ok("umount", "c")
    layer = json.loads(env.ok("inspect", "big:1").out)["layers"][0]
    return env, {
        "import": ["import", str(tar), "--name", "again:1"],
        "export": ["export", "c", "-o", str(tmp_path / "c.tar")],
        "export-layer": ["export", layer, "-o", str(tmp_path / "layer.tar")],
        "save": ["save", "big:1", "-o", str(tmp_path / "big.oci.tar")],
        "commit": ["commit", "c", "c:1"],
    }


LINE = {  # what the last drawing of each command's line says, but for the rate
    "import": r"layer 1/1 big\.tar: done 1(\.\d+)?MB of 1(\.\d+)?MB \(100%\) at \S+/s",
    "export": r"layer 1/1 c: done 1\.3MB at \S+/s",
    "export-layer": r"layer 1/1 [0-9a-f]{12}: done 1(\.\d+)?MB of 1(\.\d+)?MB \(100%\) at \S+/s",
    "save": r"layer 1/1 [0-9a-f]{12}: done 1(\.\d+)?MB of 1(\.\d+)?MB \(100%\) at \S+/s",
    "commit": r"layer 1/1 c: done 300kB at \S+/s",
}


@pytest.mark.parametrize("command", list(LINE))
def test_long_commands_show_progress_on_a_terminal_only(workload, command):
    env, argv = workload
    code, out = run_on_terminal([LAYERS_EXE] + env.args() + argv[command], env.proc_env())
    assert code == 0, out
    drawn = [line.split("\x1b[2K")[-1] for line in out.replace("\r", "").split("\n")
             if "\x1b[2K" in line]
    assert drawn and re.fullmatch(LINE[command], drawn[-1]), out

    piped = env.cli_proc(*argv[command])
    assert piped.code == 0 and "\x1b" not in piped.out + piped.err
    assert "layer 1/1" not in piped.err

    code, out = run_on_terminal([LAYERS_EXE] + env.args() + argv[command] + ["-q"],
                                env.proc_env())
    assert code == 0 and "\x1b" not in out and "layer 1/1" not in out, out
