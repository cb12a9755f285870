"""What a mount's start imports: every module loaded before the mount is live
delays it (issue 15: start until live <= 0.1 s), so what only some paths need
is imported on those paths. Checked in a fresh interpreter, never timed.

pyfuse3 as scripts/install builds it looks its __version__ up on first use
(patches/pyfuse3-3.5.0-lazy-version.patch): stock pyfuse3 3.5.0 imports
importlib.metadata and searches for its distribution at import, a tenth of
fsd's start. It imports pickle only where it refuses to pickle
(patches/pyfuse3-3.5.0-lazy-pickle.patch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

from support import mounts


def _run(code: str, hash_seed: str | None = None):
    """What `code` prints as JSON on its last line, run in a fresh interpreter
    (with PYTHONHASHSEED=hash_seed, when given)."""
    env = None if hash_seed is None else {**os.environ, "PYTHONHASHSEED": hash_seed}
    r = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}"], capture_output=True, text=True,
                       timeout=60, env=env)
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


def test_importing_pyfuse3_loads_no_pickle_and_pickling_its_objects_still_fails():
    got = _run("import pyfuse3\n"
               "loaded = 'pickle' in sys.modules\n"
               "import pickle\n"
               "refused = []\n"
               "for obj in (pyfuse3.RequestContext(), pyfuse3.SetattrFields()):\n"
               "    try:\n"
               "        pickle.dumps(obj)\n"
               "    except pickle.PicklingError as exc:\n"
               "        refused.append(str(exc))\n"
               "print(json.dumps([loaded, refused]))")
    assert got == [False, ["RequestContext instances can't be pickled",
                           "SetattrFields instances can't be pickled"]]


def test_pyfuse3_version_is_still_the_distribution_version():
    got = _run("import pyfuse3, pyfuse3._pyfuse3 as p\n"
               "print(json.dumps([pyfuse3.__version__, p.__version__, pyfuse3.__version__,\n"
               "                  hasattr(pyfuse3, 'no_such_name'), hasattr(p, 'no_such_name')]))")
    assert got == [metadata.version("pyfuse3")] * 3 + [False, False]


_TRIMMED_START = ("from fsd.startup import DEFERRED, trimmed\n"
                  "with trimmed():\n"
                  "    import fsd.mount\n")


def test_the_daemon_start_runs_none_of_the_modules_trio_imports_unused():
    # the daemon imports trio inside startup.trimmed() (cli.main): ssl, hmac,
    # idna, subprocess, shutil, tempfile, ipaddress, selectors and fnmatch are
    # imported there but not run (unless site ran them before: the launcher
    # starts Python without it), and ctypes.util's library search (ldconfig in
    # a subprocess) does not run
    got = _run("before = set(sys.modules)\n" + _TRIMMED_START +
               "import types\n"
               "ran = {n for n, m in sys.modules.items() if type(m) is types.ModuleType} - before\n"
               "print(json.dumps([sorted(ran & {*DEFERRED, '_ssl', '_hashlib', 'idna.core', 'bz2'}),\n"
               "                  sorted(set(DEFERRED) - set(sys.modules))]))")
    assert got == [[], []]


def test_modules_skipped_at_the_start_work_whole_on_first_use():
    got = _run(_TRIMMED_START +
               "import ssl, subprocess, tempfile, idna.core, hmac, shutil, ipaddress, selectors, fnmatch\n"
               "from trio._core._thread_cache import set_os_thread_name\n"
               "print(json.dumps([ssl.PROTOCOL_TLS_CLIENT > 0, subprocess.run(['true']).returncode,\n"
               "                  tempfile.gettempdir() != '', idna.encode('b\u00fccher.example').decode(),\n"
               "                  len(hmac.digest(b'k', b'm', 'sha256')), shutil.which('sh') is not None,\n"
               "                  set_os_thread_name is not None, str(ipaddress.ip_address('::1')),\n"
               "                  selectors.DefaultSelector is not None, fnmatch.fnmatch('a.py', '*.py')]))")
    # trio still names its worker threads (find_library's answer for pthread works)
    assert got == [True, 0, True, "xn--bcher-kva.example", 32, True, True, "::1", True, True]


def test_a_module_asked_for_its_own_missing_name_while_it_runs_is_not_run_twice():
    # a module run on first use, whose code reads a name of its own it has not
    # set yet through the module object, gets AttributeError, as during an import
    got = _run("import pathlib, tempfile\n"
               "d = pathlib.Path(tempfile.mkdtemp())\n"
               "(d / 'selfref.py').write_text('import sys\\nRUNS = getattr(sys.modules[__name__], \"RUNS\", 0) + 1\\n')\n"
               "sys.path.insert(0, str(d))\n"
               "from fsd import startup\n"
               "startup._defer('selfref')\n"
               "import selfref\n"
               "print(json.dumps(selfref.RUNS))")
    assert got == 1


def test_the_start_collects_no_garbage_and_serving_collects_again():
    # ~50 collections during the imports, ~6 ms of a start: none until the
    # daemon serves (mount._collect_less, which must enable the collector)
    got = _run("import gc\n"
               "from fsd import cli\n"
               "before = sum(s['collections'] for s in gc.get_stats())\n"
               "cli.import_daemon()\n"
               "during = [gc.isenabled(), sum(s['collections'] for s in gc.get_stats()) - before]\n"
               "from fsd.mount import _collect_less\n"
               "_collect_less()\n"
               "print(json.dumps(during + [gc.isenabled()]))")
    assert got == [False, 0, True]


def _imports_of(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run argv with Python's import profile on: its result, and the modules it imported."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    return r, {line.rpartition("|")[2].strip() for line in r.stderr.splitlines()
               if line.startswith("import time:")}


def test_the_installed_fsd_starts_python_without_site():
    # site runs the environment's .pth files (the editable install's import
    # finder) at every start; the launcher of scripts/install skips it
    # (startup.write_launcher) and still finds fsd, its packages and its version
    fsd = mounts.fsd_executable()
    if os.environ.get("STRATA_FSD") or not os.path.exists(fsd):
        pytest.skip("no installed fsd of this checkout")
    r, imported = _imports_of([fsd, "--version"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0] == f"fsd {metadata.version('strata')}"
    assert "fsd.cli" in imported
    assert not imported & {"site", "sitecustomize"}
    assert not [m for m in imported if m.startswith("__editable__")]


def test_a_launcher_is_written_only_where_a_shebang_can_name_python(tmp_path):
    written = _run("from fsd import startup\n"
                   f"ok = startup.write_launcher({str(tmp_path / 'fsd')!r})\n"
                   "sys.executable = '/' + 'x' * startup.SHEBANG_MAX\n"
                   f"too_long = startup.write_launcher({str(tmp_path / 'fsd2')!r})\n"
                   "print(json.dumps([ok, too_long]))")
    assert written == [True, False]
    assert not (tmp_path / "fsd2").exists()
    r, imported = _imports_of([str(tmp_path / "fsd"), "-h"])
    assert r.returncode == 0 and "lowerdir" in r.stdout
    assert "site" not in imported and "fsd.cli" in imported


def _write_cache(cache, start: str, prologue: str = "", hash_seed: str | None = None) -> None:
    """The start cache at `cache` of what the code `start` imports, written in a fresh interpreter."""
    _run(f"{prologue}from fsd import startup\n"
         f"startup.write_start_cache({str(cache)!r}, lambda: exec({start!r}))\n"
         "print(json.dumps(None))", hash_seed)


def _cached(names: str = "sys.modules") -> str:
    """Code printing which of `names` were loaded from the start cache."""
    return (f"cached = sorted(n for n in {names} if type(getattr(sys.modules.get(n), '__loader__', None))"
            " is startup._CachedLoader)\n")


# Code that checks every code the start cache answers with against what
# compile() gives for the same call (code objects compare their bytecode,
# constants, names and line and column tables)
_CHECKED_CODE = ("differs = []\n"
                 "def checked(source, filename, mode, flags, code_=startup._code):\n"
                 "    code = code_(source, filename, mode, flags)\n"
                 "    if code != startup._compile(source, filename, mode, flags, True):\n"
                 "        differs.append(source)\n"
                 "    return code\n"
                 "startup._code = checked\n")


def test_the_start_loads_its_modules_and_generated_methods_from_the_start_cache(tmp_path):
    # ~170 .pyc files read at every start (~0.05 s with cold caches), and the
    # methods attrs and dataclasses compile for trio's and fsd's classes
    # (~12 ms): from one file (startup.use_start_cache, the launcher's first step)
    # Two fixed hash seeds, so that attrs' __hash__ texts differ from the cached
    # ones (what the cache must then answer) in the same numbers at every run: a
    # hash of under 16 digits (1 in 10,000 per class) compiles anew, correctly.
    cache = tmp_path / "start.cache"
    _write_cache(cache, "import fsd.cli\nfsd.cli.import_daemon()", hash_seed="1")
    got = _run("import builtins, re._compiler\n"
               "from fsd import startup\n"
               "as_ever = [builtins.compile, builtins.exec, list(sys.meta_path), re._compiler.compile]\n"
               f"startup.use_start_cache({str(cache)!r})\n"
               # every Pattern made from the cache is the one re's compiler makes
               # (Patterns compare their text, flags and sre code)
               "regexes, cached_regex = [], re._compiler.compile\n"
               "def checked_regex(pattern, flags=0):\n"
               "    got = cached_regex(pattern, flags)\n"
               "    regexes.append(got == startup._regex_compile(pattern, flags))\n"
               "    return got\n"
               "re._compiler.compile = checked_regex\n"
               "held = [len(startup._compiled), sum('__create_fn__' in k[0] for k in startup._compiled)]\n"
               "startup._recording = {}  # what is compiled anew\n"
               + _CHECKED_CODE +
               "from fsd.cli import import_daemon\n"
               "import_daemon()\n"
               + _cached() +
               "compiled = [source for source, *_ in startup._recording]\n"
               "closed = [[builtins.compile, builtins.exec, sys.meta_path, re._compiler.compile] == as_ever,\n"
               "          len(startup._compiled)]\n"
               "print(json.dumps([cached, held, compiled, closed, differs, regexes,\n"
               "                  sorted(map(str, startup._recording_regexes))]))", hash_seed="2")
    cached, held, compiled, closed, differs, regexes, regexes_compiled = got
    assert differs == []
    assert len(regexes) > 10 and all(regexes) and regexes_compiled == []
    assert {"trio", "trio._core._run", "attr._make", "pyfuse3._pyfuse3", "fsd.cli", "fsd.params",
            "fsd.mount", "fsd.ops"} <= set(cached)
    # nothing is compiled anew, attrs' __hash__ methods included, whose text
    # holds this process's hash of the class's name (hash randomization)
    assert compiled == []
    assert held[1] > 10  # dataclasses' methods too
    # once the daemon is imported, compile, exec and the import system are as ever
    assert closed == [True, 0]


def test_a_module_changed_since_the_start_cache_was_written_is_imported_from_its_source(tmp_path):
    pkgs = tmp_path / "pkgs"
    (pkgs / "pkg").mkdir(parents=True)
    (pkgs / "pkg" / "__init__.py").write_text("VALUE = 'pkg'\n")
    for name in ("same", "longer", "touched", "gone"):
        (pkgs / "pkg" / f"{name}.py").write_text(f"VALUE = {name!r}\n")
    prologue = f"sys.path.insert(0, {str(pkgs)!r})\n"
    cache = tmp_path / "start.cache"
    _write_cache(cache, "import pkg.same, pkg.longer, pkg.touched, pkg.gone", prologue)
    (pkgs / "pkg" / "longer.py").write_text("VALUE = 'longer, changed'\n")
    touched = pkgs / "pkg" / "touched.py"
    touched.write_text("VALUE = 'TOUCHED'\n")  # the same size: its mtime tells
    os.utime(touched, (1, 1))
    (pkgs / "pkg" / "gone.py").unlink()
    got = _run(prologue + "from fsd import startup\n"
               f"startup.use_start_cache({str(cache)!r})\n"
               "import pkg, pkg.same, pkg.longer, pkg.touched\n"
               "try:\n"
               "    import pkg.gone\n"
               "    gone = 'imported'\n"
               "except ImportError:\n"
               "    gone = 'ImportError'\n"
               + _cached("['pkg', 'pkg.same', 'pkg.longer', 'pkg.touched']") +
               "print(json.dumps([cached, pkg.VALUE, pkg.same.VALUE, pkg.longer.VALUE,\n"
               "                  pkg.touched.VALUE, gone, pkg.same.__file__, pkg.__path__]))")
    assert got == [["pkg", "pkg.same"], "pkg", "same", "longer, changed", "TOUCHED", "ImportError",
                   str(pkgs / "pkg" / "same.py"), [str(pkgs / "pkg")]]


def test_a_start_cache_for_another_sys_path_a_damaged_or_a_missing_one_is_ignored(tmp_path):
    cache = tmp_path / "start.cache"
    _write_cache(cache, "import trio", "sys.path.append('/nonexistent')\n")
    damaged = tmp_path / "damaged.cache"
    damaged.write_bytes(cache.read_bytes()[:5000])
    got = _run("from fsd import startup\n"
               "finders = list(sys.meta_path)\n"
               f"for path in ({str(cache)!r}, {str(damaged)!r}, {str(tmp_path / 'missing')!r}):\n"
               "    startup.use_start_cache(path)\n"
               "import trio\n"
               "print(json.dumps([sys.meta_path == finders, len(startup._compiled)]))")
    assert got == [True, 0]


def test_compile_answered_from_the_start_cache_keeps_the_callers_future_flags(tmp_path):
    # compile() inherits the caller's `from __future__` flags; answered from
    # the cache, a caller with and one without `annotations` get what each
    # would have compiled
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    source = "def f(x: undefined_name): pass\n"
    (pkgs / "plain.py").write_text(f"code = compile({source!r}, '<f>', 'exec')\n")
    (pkgs / "postponed.py").write_text("from __future__ import annotations\n"
                                       f"code = compile({source!r}, '<f>', 'exec')\n")
    prologue = f"sys.path.insert(0, {str(pkgs)!r})\n"
    cache = tmp_path / "start.cache"
    start = "import plain, postponed\n"
    _write_cache(cache, start, prologue)
    got = _run(prologue + "from fsd import startup\n"
               f"startup.use_start_cache({str(cache)!r})\n" + start +
               "startup.close_start_cache()\n"
               "def defines(code):\n"
               "    try:\n"
               "        exec(code, {})\n"
               "        return True\n"
               "    except NameError:\n"
               "        return False\n"
               "print(json.dumps([None, defines(plain.code), defines(postponed.code),\n"
               "                  compile is startup._compile]))")
    assert got[1:] == [False, True, True]


def test_a_text_that_differs_from_a_cached_one_in_a_hash_gets_its_code_with_that_number(tmp_path):
    # attrs writes hash(ClassName) into a __hash__: another number at every start
    cache = tmp_path / "start.cache"
    hashed = "def h(self):\n    return hash((\n        {},\n        self.x,\n    ))\n"
    both = "X = '{0}'\nY = {0}\n"  # the number in a text too: that text must change with it
    _write_cache(cache, f"compile({hashed.format(-1234567890123456789)!r}, '<h>', 'exec')\n"
                        f"compile({both.format(1234567890123)!r}, '<b>', 'exec')\n")
    calls = [(hashed.format(n), "<h>") for n in (-1234567890123456789, 987654321098765432, -999999999999999)]
    calls.append((both.format(3210987654321), "<b>"))
    got = _run("from fsd import startup\n"
               f"startup.use_start_cache({str(cache)!r})\n"
               "startup._recording = {}\n"
               + _CHECKED_CODE +
               f"namespaces = [{{}} for _ in {calls!r}]\n"
               f"for (source, filename), ns in zip({calls!r}, namespaces):\n"
               "    exec(compile(source, filename, 'exec'), ns)\n"
               "compiled = [source for source, *_ in startup._recording]\n"
               "startup.close_start_cache()\n"
               "print(json.dumps([differs, compiled, namespaces[-1]['X'], namespaces[-1]['Y'],\n"
               "                  namespaces[1]['h'].__code__.co_consts]))")
    differs, compiled, x, y, consts = got
    assert differs == []
    # a hash of 15 digits is a form not cached; the text with the number is compiled anew
    assert compiled == [calls[2][0], calls[3][0]]
    assert [x, y] == ["3210987654321", 3210987654321]
    assert 987654321098765432 in consts


def test_a_pattern_whose_parse_warns_is_not_cached_and_warns_at_every_start(tmp_path):
    cache = tmp_path / "start.cache"
    start = "import re\nre.compile('[[a]')\nre.compile('x+y')\n"  # '[[': FutureWarning (nested set)
    _write_cache(cache, start)
    got = _run("import warnings\n"
               "from fsd import startup\n"
               f"startup.use_start_cache({str(cache)!r})\n"
               "startup._recording = {}  # what is compiled anew\n"
               "with warnings.catch_warnings(record=True) as warned:\n"
               "    warnings.simplefilter('always')\n"
               f"    exec({start!r})\n"
               "startup.close_start_cache()\n"
               "print(json.dumps([[str(w.category.__name__) for w in warned],\n"
               "                  sorted(p for p, _ in startup._recording_regexes)]))")
    # '[[a]' parsed again (its warning), 'x+y' from the cache (not compiled anew)
    assert got == [["FutureWarning"], []]
