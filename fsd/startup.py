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

And the start cache, which the launcher reads before anything else:

- the code of every Python module the start imports, in one file: ~170
  modules are otherwise ~170 .pyc files found, opened and read, and with cold
  caches (the bench drops them before each workload) those reads are ~0.05 s
  of a start.  A cached module is used only if its source file still has the
  mtime and size it had when cached (what a .pyc's header checks), from the
  same directory of the same sys.path; else it is imported as ever;
- the code attrs compiles for the classes trio defines with it (~80 methods
  generated from source text at every import, ~9 ms): `compile` answers a
  call it saw at install from the cache, keyed by the whole source text, its
  file name, mode and the caller's future flags, so a different attrs or trio
  simply compiles anew.

scripts/install writes it after byte-compiling (`python -m fsd.startup PATH`
writes both): a fresh interpreter with the launcher's sys.path imports the
daemon as a start does and records what it loaded.  A missing, unreadable or
foreign cache (another Python, another sys.path) is ignored.
"""

from __future__ import annotations

import __future__
import builtins
import contextlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import threading
import types

# A #! line longer than this is cut by the kernel (BINPRM_BUF_SIZE, Linux 5.1)
SHEBANG_MAX = 255

# What trio's import imports (some through ctypes.util) and runs nothing of
DEFERRED = ("ssl", "hmac", "idna", "subprocess", "shutil", "tempfile")

# The start cache, in the environment (sys.prefix) beside bin/; its first bytes
START_CACHE = "fsd-start.cache"
_CACHE_FORMAT = b"fsd start cache 1\n" + importlib.util.MAGIC_NUMBER

# The flags of the caller that compile() inherits unless told not to
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag

_compile = builtins.compile
# (source, filename, mode, future flags) -> code, from the start cache
_compiled: dict = {}
# what compile() compiled in trimmed(), while write_start_cache records
_recording: dict | None = None

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


def _cached_compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
    """compile(), answered from the start cache where it holds the same call."""
    if not dont_inherit:
        flags |= sys._getframe(1).f_code.co_flags & _FUTURE_FLAGS
    if (kwargs or optimize != -1 or flags & ~_FUTURE_FLAGS or type(source) is not str
            or type(filename) is not str):
        return _compile(source, filename, mode, flags, True, optimize, **kwargs)
    key = (source, filename, mode, flags)
    code = _compiled.get(key)
    if code is None:
        code = _compile(source, filename, mode, flags, True)
        if _recording is not None:
            _recording[key] = code
    return code


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
    if _compiled or _recording is not None:
        builtins.compile = _cached_compile
    try:
        yield
    finally:
        ctypes.util.find_library = search
        builtins.compile = _compile


class _CachedLoader(importlib.machinery.SourceFileLoader):
    """A module of the start cache: its code from there, once; the rest (its
    source for tracebacks, its resources) as any source file's."""

    def __init__(self, fullname: str, path: str, code: bytes):
        super().__init__(fullname, path)
        self._code: bytes | None = code

    def get_code(self, fullname):
        code, self._code = self._code, None
        if fullname != self.name or code is None:
            return super().get_code(fullname)
        return marshal.loads(code)


class _StartCacheFinder:
    """First on sys.meta_path once the start cache is read: a module it holds,
    if its source file is as it was when cached; any other is left to the
    finders after it.  Each module is offered once (a later import of the
    same name, after a failure, goes the ordinary way)."""

    def __init__(self, modules: dict):
        # name -> (source file, is a package, source mtime, source size, code)
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        entry = self.modules.pop(name, None)
        if entry is None:
            return None
        source, is_package, mtime, size, code = entry
        directory = os.path.dirname(source)
        where = os.path.dirname(directory) if is_package else directory
        if where not in (sys.path if path is None else path):
            return None
        try:
            st = os.stat(source)
        except OSError:
            return None
        if (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF) != (mtime, size):
            return None
        return importlib.util.spec_from_file_location(
            name, source, loader=_CachedLoader(name, source, code),
            submodule_search_locations=[directory] if is_package else None)


def use_start_cache(path: str) -> None:
    """Import from the start cache at path from now on (the launcher's first
    step): nothing happens if it is missing, unreadable or made for another
    Python or another sys.path."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_CACHE_FORMAT):
            return
        search, optimize, modules, compiled = marshal.loads(memoryview(data)[len(_CACHE_FORMAT):])
    except (OSError, ValueError, EOFError, TypeError):
        return
    if search != sys.path or optimize != sys.flags.optimize:
        return
    sys.meta_path.insert(0, _StartCacheFinder(modules))
    _compiled.update(compiled)


def write_start_cache(path: str, start) -> None:
    """Write the start cache at path: what start() (cli.import_daemon: the
    daemon's start) imports and compiles in trimmed().  Run in a fresh
    interpreter started as the launcher starts it."""
    global _recording
    _recording = {}
    start()
    modules = {}
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if (type(module) is not types.ModuleType or spec is None
                or type(spec.loader) is not importlib.machinery.SourceFileLoader):
            continue
        st = os.stat(spec.origin)  # before the code: a source changed since is not used
        code = spec.loader.get_code(name)
        modules[name] = (spec.origin, spec.submodule_search_locations is not None,
                         int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, marshal.dumps(code))
    data = _CACHE_FORMAT + marshal.dumps((list(sys.path), sys.flags.optimize, modules, _recording))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def start_cache_path() -> str:
    return os.path.join(sys.prefix, START_CACHE)


def _launcher_path() -> str:
    """The launcher's first lines: sys.path as site would give fsd."""
    import sysconfig
    paths = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    return ("import sys\n"
            "sys.path[0:1] = []  # not this script's directory\n"
            f"sys.path += {list(dict.fromkeys(paths))!r}\n")


def write_launcher(path: str) -> bool:
    """Write fsd's launcher at path: this Python started without site (-S),
    with the environment's packages and the directory holding fsd on
    sys.path, as site would have them (after the standard library).  False,
    leaving path as it is, where a #! line cannot name this Python (a path
    too long, or with white space)."""
    shebang = f"#!{sys.executable} -S"
    if len(shebang) > SHEBANG_MAX or any(c.isspace() for c in sys.executable):
        return False
    text = (f"{shebang}\n"
            "# fsd's launcher, written by scripts/install (fsd/startup.py): Python\n"
            "# without site, and on sys.path what site would give fsd\n"
            + _launcher_path() +
            "from fsd.startup import use_start_cache\n"
            f"use_start_cache({start_cache_path()!r})\n"
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
        sys.exit(0)
    import subprocess
    subprocess.run([sys.executable, "-S", "-c", _launcher_path() +
                    "from fsd.cli import import_daemon\nfrom fsd.startup import write_start_cache\n"
                    f"write_start_cache({start_cache_path()!r}, import_daemon)\n"],
                   check=True)
