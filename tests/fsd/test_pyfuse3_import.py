"""pyfuse3 as scripts/install builds it looks its __version__ up on first use
(patches/pyfuse3-3.5.0-lazy-version.patch): stock pyfuse3 3.5.0 imports
importlib.metadata and searches for its distribution at import, a tenth of
fsd's start (issue 15). Checked in a fresh interpreter, never timed."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata


def _run(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_importing_pyfuse3_does_not_load_package_metadata():
    got = _run("import pyfuse3\nprint(json.dumps('importlib.metadata' in sys.modules))")
    assert got is False


def test_pyfuse3_version_is_still_the_distribution_version():
    got = _run("import pyfuse3, pyfuse3._pyfuse3 as p\n"
               "print(json.dumps([pyfuse3.__version__, p.__version__, pyfuse3.__version__,\n"
               "                  hasattr(pyfuse3, 'no_such_name'), hasattr(p, 'no_such_name')]))")
    assert got == [metadata.version("pyfuse3")] * 3 + [False, False]
