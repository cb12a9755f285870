"""The daemon's start: trio imported without running what fsd never uses.

Every mount starts a fresh Python, and nearly all of its time to a live mount
is imports (issue 15: start until live <= 0.1 s); trio is most of them.  Its
package imports, whatever the program uses: TLS, DTLS and IDNA support (ssl,
hmac and idna: the first two load libssl and libcrypto), subprocess support,
and its thread cache asks `ctypes.util.find_library("pthread")` at import,
which runs `ldconfig -p` in a child process to read the linker's cache
(ctypes.util imports shutil and tempfile for other searches).  fsd uses none
of it.  Inside `trimmed()`:

- those modules are imported but not run (`_Deferred`): their code runs on the
  first use of one of their attributes, so whoever does use them later gets
  them whole, only later;
- `find_library("pthread")` is answered as ldconfig answers it on glibc,
  `libpthread.so.0`, without the child process (any other name, or another
  libc, is searched as ever).

About 10 ms of a warm start of ~80 ms, more when the files are not cached
(libssl and libcrypto alone are 5 MB).  Only the daemon's entry (cli.py)
uses it: a program that imports fsd's modules imports trio as it is.

And the launcher: pip's console script starts Python with site, which runs
the environment's .pth files (the editable install's import finder among
them), ~3 ms of every start for two sys.path entries.  `write_launcher`
writes one that starts Python without site and sets those entries itself;
scripts/install puts it over pip's (`python -m fsd.startup PATH`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import types

# A #! line longer than this is cut by the kernel (BINPRM_BUF_SIZE, Linux 5.1)
SHEBANG_MAX = 255

# What trio's import imports (some through ctypes.util) and runs nothing of
DEFERRED = ("ssl", "hmac", "idna", "subprocess", "shutil", "tempfile")

_run_lock = threading.RLock()
_running: set[str] = set()


class _Deferred(types.ModuleType):
    """A module imported but not run yet: the first attribute it lacks (any but
    those importlib set, such as __spec__ and __file__) runs its code, once.
    importlib.util.LazyLoader is not enough: in Python 3.11 its modules run
    at the `import name` statement itself, which reads __spec__."""

    def __getattr__(self, name: str):
        spec = self.__spec__
        with _run_lock:
            if type(self) is _Deferred and spec.name not in _running:
                _running.add(spec.name)
                try:
                    if spec.submodule_search_locations is not None:
                        self.__path__ = spec.submodule_search_locations
                    spec.loader.exec_module(self)
                except BaseException:
                    sys.modules.pop(spec.name, None)  # as a failed import leaves it
                    raise
                finally:
                    _running.discard(spec.name)
                self.__class__ = types.ModuleType
        if type(self) is _Deferred:  # asked by its own code while it runs
            raise AttributeError(f"partially initialized module {spec.name!r} has no attribute {name!r}")
        return getattr(self, name)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    module.__dict__.pop("__path__", None)  # a package's submodules run it first
    module.__class__ = _Deferred
    sys.modules[name] = module


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@contextlib.contextmanager
def trimmed():
    """Import trio (and what imports it) in this block: see the module doc."""
    for name in DEFERRED:
        _defer(name)
    import ctypes.util
    search = ctypes.util.find_library

    def find_library(name: str):
        return "libpthread.so.0" if name == "pthread" and _glibc() else search(name)
    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = search


def write_launcher(path: str) -> bool:
    """Write fsd's launcher at path: this Python started without site (-S),
    with the environment's packages and the directory holding fsd on
    sys.path, as site would have them (after the standard library).  False,
    leaving path as it is, where a #! line cannot name this Python (a path
    too long, or with white space)."""
    import sysconfig
    shebang = f"#!{sys.executable} -S"
    if len(shebang) > SHEBANG_MAX or any(c.isspace() for c in sys.executable):
        return False
    paths = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    text = (f"{shebang}\n"
            "# fsd's launcher, written by scripts/install (fsd/startup.py): Python\n"
            "# without site, and on sys.path what site would give fsd\n"
            "import sys\n"
            "sys.path[0:1] = []  # not this script's directory\n"
            f"sys.path += {list(dict.fromkeys(paths))!r}\n"
            "from fsd.cli import main\n"
            "sys.exit(main())\n")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return True


if __name__ == "__main__":  # scripts/install: python -m fsd.startup PATH
    if not write_launcher(sys.argv[1]):
        print(f"fsd: {sys.executable} cannot be named on a #! line; {sys.argv[1]} left as it is",
              file=sys.stderr)
