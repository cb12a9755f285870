"""The daemon's start: trio imported without running what fsd never uses.

Every mount starts a fresh Python, and nearly all of its time to a live mount
is imports (issue 15: start until live <= 0.1 s); trio is most of them.  Its
package imports, whatever the program uses: TLS, DTLS and IDNA support (ssl,
hmac and idna: the first two load libssl and libcrypto), subprocess support,
and its thread cache asks `ctypes.util.find_library("pthread")` at import,
which runs `ldconfig -p` in a child process to read the linker's cache
(ctypes.util imports shutil and tempfile for other searches); and modules
that the standard library's imports import for a function fsd never calls
(urllib.parse imports ipaddress, socket selectors, pathlib fnmatch).  fsd
uses none of it.  Inside `trimmed()`:

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

- the code of every Python module the start imports, in one file: ~150
  modules are otherwise ~150 .pyc files found, opened and read one by one,
  most of what cold caches (the bench drops them before each workload) add
  to a start; 30 mount cycles each on a busy machine, cold: 0.27 -> 0.20 s
  to a live mount.  A cached module is used only if its source file still
  has the mtime and size it had when cached (what a .pyc's header checks),
  from the same directory of the same sys.path; else it is imported as ever.
  Each module's code is unmarshalled when imported, from the file as read;
- the code compiled from source text during the imports: the methods attrs
  generates for trio's classes (~90, ~9 ms) and dataclasses for fsd's (~30,
  ~2.5 ms).  While the start imports, `compile` and `exec` of a text answer
  a call seen at install from the cache, keyed by the whole text, its file
  name, mode and the caller's future flags, so that a different attrs, trio
  or fsd simply compiles anew.  But attrs writes into a __hash__ a number
  that differs at every start (the hash of the class's name; ~40 of its
  methods): a text that differs from a cached one only in numbers of ten
  digits or more, each with the cached one's sign and length, gets the
  cached code with those constants replaced (the same code as compiled, line
  and column positions included); if a number is not a constant of the
  code, it compiles anew.  Such a text is cached in the forms a 64-bit hash
  has but 1 in 10,000: either sign, 16 to 19 digits;
- the regular expressions compiled during the imports (~20, ~2 ms): re's
  compiler parses a pattern and turns it into the code of the sre engine,
  which `_sre.compile` makes a Pattern of; a pattern (and flags) seen at
  install goes straight to `_sre.compile` with the arguments recorded then
  (the cache holds sre's magic number: it is for this sre only); a pattern
  whose parse warned is not cached (its warning would be lost).

`use_start_cache` (the launcher's first step) opens that window; the end of
the daemon's imports (cli.import_daemon) closes it: compile, exec and re's
compiler are as ever again, the finder gone, the cache's memory freed.  scripts/install writes the cache after
byte-compiling (`python -m fsd.startup PATH` writes both): a fresh
interpreter with the launcher's sys.path imports the daemon as a start does
and records what it loaded.  A missing, unreadable or foreign cache (another
Python, another sys.path) is ignored.
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
DEFERRED = ("ssl", "hmac", "idna", "subprocess", "shutil", "tempfile", "ipaddress", "selectors", "fnmatch")

# The start cache, in the environment (sys.prefix) beside bin/; its first bytes
START_CACHE = "fsd-start.cache"
_CACHE_FORMAT = b"fsd start cache 4\n" + importlib.util.MAGIC_NUMBER

# The flags of the caller that compile() inherits unless told not to
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag

_compile, _exec = builtins.compile, builtins.exec
# The start cache's code, each marshalled at an (offset, length) of it:
# unmarshalled only if used, without a copy
_blob = memoryview(b"")
# (source, filename, mode, future flags) -> where its code is
_compiled: dict = {}
# the same for texts with numbers (_numbered): (text with each number's
# digits as 0s, filename, mode, flags) -> (those numbers, where its code is)
_by_template: dict = {}
_NUMBER = r"(?<![\w.])-?\d{10,}(?![\w.])"
# (pattern, flags) -> the arguments re's compiler gave _sre.compile for it
_regexes: dict = {}
# re's compiler, while the start cache stands in for it
_regex_compile = None
# what was compiled from source text while write_start_cache records, and
# the regular expressions
_recording: dict | None = None
_recording_regexes: dict = {}

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


class _CachedLoader(importlib.machinery.SourceFileLoader):
    """A module of the start cache: its code from there, once; the rest (its
    source for tracebacks, its resources) as any source file's."""

    def __init__(self, fullname: str, path: str, code: memoryview):
        super().__init__(fullname, path)
        self._code: memoryview | None = code

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
        # name -> (source file, is a package, source mtime, source size, where its code is)
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        entry = self.modules.pop(name, None)
        if entry is None:
            return None
        source, is_package, mtime, size, at = entry
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
            name, source, loader=_CachedLoader(name, source, _blob[at[0]:at[0] + at[1]]),
            submodule_search_locations=[directory] if is_package else None)


def _numbered(source: str) -> tuple[str, list[int]]:
    """source with the digits of its numbers of 10+ digits as 0s, and those numbers."""
    import re  # imported by then: not a module of the launcher's own start
    numbers = [int(n) for n in re.findall(_NUMBER, source)]
    if not numbers:
        return source, numbers
    return re.sub(_NUMBER, lambda m: re.sub(r"\d", "0", m.group()), source), numbers


def _forms(source: str) -> list[str]:
    """source, and where it has one number of 10+ digits, the same with that
    number of either sign and 16 to 19 digits (a 64-bit hash but 1 in 10,000)."""
    import re
    found = list(re.finditer(_NUMBER, source))
    if len(found) != 1:
        return [source]
    start, end = found[0].span()
    return [source] + [source[:start] + sign + "3" * digits + source[end:]
                       for sign in ("", "-") for digits in (16, 17, 18, 19)]


def _renumber(const, numbers: dict, texts: tuple[str, ...], found: set):
    """A constant (code: its constants, nested too) with the ints in numbers
    replaced; ValueError if a text or bytes constant holds one of texts."""
    kind = type(const)
    if kind is int:
        if const in numbers:
            found.add(abs(const))  # a literal's sign may be an operator's
            return numbers[const]
    elif kind is str or kind is bytes:
        if any((t if kind is str else t.encode()) in const for t in texts):
            raise ValueError(const)
    elif kind is tuple or kind is frozenset:
        return kind(_renumber(c, numbers, texts, found) for c in const)
    elif kind is types.CodeType:
        return const.replace(co_consts=_renumber(const.co_consts, numbers, texts, found))
    return const


def _cached(at: tuple[int, int]):
    return marshal.loads(_blob[at[0]:at[0] + at[1]])


def _code(source: str, filename: str, mode: str, flags: int):
    key = (source, filename, mode, flags)
    at = _compiled.get(key)
    code = None if at is None else _cached(at)
    if code is None and _by_template:
        text, numbers = _numbered(source)
        cached = _by_template.get((text, filename, mode, flags)) if numbers else None
        if cached is not None and len(set(zip(cached[0], numbers))) == len(set(cached[0])):
            mapping = {old: new for old, new in zip(cached[0], numbers)}
            mapping.update({-old: -new for old, new in mapping.items()})
            found: set = set()
            try:
                code = _renumber(_cached(cached[1]), mapping, tuple(str(n) for n in cached[0]), found)
            except ValueError:
                code = None
            if found != {abs(n) for n in cached[0]}:
                code = None
    if code is None:
        code = _compile(source, filename, mode, flags, True)
        if _recording is not None:
            _recording[key] = code
    return code


def _cached_compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
    """compile() while the start imports: from the start cache where it holds
    the same call; with the caller's future flags, as compile() inherits them."""
    if not dont_inherit:
        flags |= sys._getframe(1).f_code.co_flags & _FUTURE_FLAGS
    if (kwargs or optimize != -1 or flags & ~_FUTURE_FLAGS or type(source) is not str
            or type(filename) is not str):
        return _compile(source, filename, mode, flags, True, optimize, **kwargs)
    return _code(source, filename, mode, flags)


def _cached_exec(source, globals=None, locals=None, /, **kwargs):
    """exec() while the start imports: a text is compiled as exec() compiles
    it (file name "<string>", the caller's future flags), from the start
    cache where it holds the same; run in the caller's namespace unless given."""
    caller = sys._getframe(1)
    if globals is None:
        globals = caller.f_globals
        if locals is None:
            locals = caller.f_locals
    if type(source) is str:
        source = _code(source, "<string>", "exec", caller.f_code.co_flags & _FUTURE_FLAGS)
    return _exec(source, globals, locals, **kwargs)


def _cached_regex(pattern, flags=0):
    """re's compiler while the start imports: a pattern seen at install is
    made a Pattern of from the arguments recorded then, without parsing."""
    import _sre
    args = _regexes.get((pattern, flags)) if type(pattern) is str or type(pattern) is bytes else None
    if args is not None:
        return _sre.compile(*args)
    if _recording is None:
        return _regex_compile(pattern, flags)
    import re
    import warnings
    made = []
    sre_compile = _sre.compile

    def record(*args):
        made.append(args)
        return sre_compile(*args)
    _sre.compile = record
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            compiled = _regex_compile(pattern, flags)
    finally:
        _sre.compile = sre_compile
    for w in warned:  # said as ever
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if (type(pattern) is str or type(pattern) is bytes) and len(made) == 1 and not warned \
            and not flags & re.DEBUG:
        source, sre_flags, code, groups, groupindex, indexgroup = made[0]  # ints, not re's named ones
        _recording_regexes[(pattern, int(flags))] = (source, int(sre_flags), [int(c) for c in code], int(groups),
                                                     dict(groupindex), tuple(indexgroup))
    return compiled


def _open_start_cache(modules: dict) -> None:
    global _regex_compile
    sys.meta_path.insert(0, _StartCacheFinder(modules))
    builtins.compile, builtins.exec = _cached_compile, _cached_exec
    import re._compiler  # the start imports re anyway: from the cache now
    _regex_compile, re._compiler.compile = re._compiler.compile, _cached_regex


def close_start_cache() -> None:
    """The end of the start's imports: compile, exec and the import system as
    they were, the cache's memory freed.  Nothing to do without a start cache."""
    global _blob, _regex_compile
    sys.meta_path[:] = [f for f in sys.meta_path if type(f) is not _StartCacheFinder]
    builtins.compile, builtins.exec = _compile, _exec
    if _regex_compile is not None:
        sys.modules["re._compiler"].compile, _regex_compile = _regex_compile, None
    _compiled.clear()
    _by_template.clear()
    _regexes.clear()
    _blob = memoryview(b"")


def use_start_cache(path: str) -> None:
    """Import from the start cache at path until close_start_cache (the
    launcher's first step): nothing happens if it is missing, unreadable or
    made for another Python or another sys.path."""
    global _blob
    try:
        with open(path, "rb") as f:
            data = memoryview(f.read())
        if data[:len(_CACHE_FORMAT)] != _CACHE_FORMAT:
            return
        start = len(_CACHE_FORMAT) + 8
        blob = start + int.from_bytes(data[start - 8:start], "little")
        search, optimize, sre, modules, compiled, by_template, regexes = marshal.loads(data[start:blob])
    except (OSError, ValueError, EOFError, TypeError):
        return
    import _sre
    if search != sys.path or optimize != sys.flags.optimize or sre != _sre.MAGIC:
        return
    _blob = data[blob:]
    _compiled.update(compiled)
    _by_template.update(by_template)
    _regexes.update(regexes)
    _open_start_cache(modules)


def write_start_cache(path: str, start) -> None:
    """Write the start cache at path: what start() (importing fsd.cli and
    running its import_daemon: the daemon's start) imports, and compiles
    before close_start_cache.  Run in a fresh interpreter started as the
    launcher starts it."""
    global _recording
    import _sre
    before = set(sys.modules)  # imported before the launcher reads the cache
    _recording = {}
    _recording_regexes.clear()
    _open_start_cache({})
    try:
        _numbered("0" * 10)  # the patterns a start uses for attrs' hashed methods
        start()
    finally:
        close_start_cache()
    blob = bytearray()

    def put(code) -> tuple[int, int]:
        marshalled = marshal.dumps(code)
        blob.extend(marshalled)
        return len(blob) - len(marshalled), len(marshalled)
    compiled, by_template = {}, {}
    for (source, *how), code in _recording.items():
        for form in _forms(source):
            text, numbers = _numbered(form)
            if not numbers:
                compiled[(source, *how)] = put(code)
            elif (text, *how) not in by_template:
                by_template[(text, *how)] = (numbers, put(code if form is source else _compile(form, *how, True)))
    _recording = None
    modules = {}
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if (name in before or type(module) is not types.ModuleType or spec is None
                or type(spec.loader) is not importlib.machinery.SourceFileLoader):
            continue
        st = os.stat(spec.origin)  # before the code: a source changed since is not used
        modules[name] = (spec.origin, spec.submodule_search_locations is not None,
                         int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, put(spec.loader.get_code(name)))
    index = marshal.dumps((list(sys.path), sys.flags.optimize, _sre.MAGIC, modules, compiled, by_template,
                           dict(_recording_regexes)))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(_CACHE_FORMAT + len(index).to_bytes(8, "little") + index + blob)
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
                    "import importlib\nfrom fsd.startup import write_start_cache\n"
                    f"write_start_cache({start_cache_path()!r},\n"
                    "                  lambda: importlib.import_module('fsd.cli').import_daemon())\n"],
                   check=True)
