"""What a mount's start imports: every module loaded before the mount is live
delays it (issue 15: start until live <= 0.1 s), so what only some paths need
is imported on those paths. Checked in a fresh interpreter, never timed."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def test_command_line_parsing_loads_neither_trio_nor_package_metadata():
    # importlib.metadata is for --version alone; bad usage is answered before trio loads
    loaded = _modules_after("import fsd.cli")
    assert not loaded & {"importlib.metadata", "trio", "pyfuse3"}


def test_a_foreground_daemon_does_not_load_the_syslog_handler():
    loaded = _modules_after("import fsd.cli, fsd.mount")
    assert "logging.handlers" not in loaded
