"""What a mount's start imports: every module loaded before the mount is live
delays it (issue 15: start until live <= 0.1 s), so what only some paths need
is imported on those paths. Checked in a fresh interpreter, never timed.

pyfuse3 as scripts/install builds it looks its __version__ up on first use
(patches/pyfuse3-3.5.0-lazy-version.patch): stock pyfuse3 3.5.0 imports
importlib.metadata and searches for its distribution at import, a tenth of
fsd's start."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata


def _run(code: str):
    """What `code` prints as JSON on its last line, run in a fresh interpreter."""
    r = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _modules_after(imports: str) -> set[str]:
    return set(_run(f"{imports}\nprint(json.dumps(sorted(sys.modules)))"))


def test_command_line_parsing_loads_neither_trio_nor_package_metadata():
    # importlib.metadata is for --version alone; bad usage is answered before trio loads
    loaded = _modules_after("import fsd.cli")
    assert not loaded & {"importlib.metadata", "trio", "pyfuse3"}


def test_a_foreground_daemon_loads_neither_the_syslog_handler_nor_package_metadata():
    loaded = _modules_after("import fsd.cli, fsd.mount")
    assert not loaded & {"logging.handlers", "importlib.metadata"}


def test_pyfuse3_version_is_still_the_distribution_version():
    got = _run("import pyfuse3, pyfuse3._pyfuse3 as p\n"
               "print(json.dumps([pyfuse3.__version__, p.__version__, pyfuse3.__version__,\n"
               "                  hasattr(pyfuse3, 'no_such_name'), hasattr(p, 'no_such_name')]))")
    assert got == [metadata.version("pyfuse3")] * 3 + [False, False]
