"""fsd's command line, as containers/storage and people use it (mount.fuse3: test_mount_fuse3).

Every accepted form mounts the same two-layer stack and must show the same
merged tree; every bad form must print exactly one line starting `fsd: ` that
names the problem, exit non-zero and leave nothing mounted or running.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import mounts
from support.layergen import write
from support.mounts import escape_lowerdir

EXPECTED = {"top.txt": "top", "bottom.txt": "bottom", "shared": "from top", "dir": None}


@dataclass
class Paths:
    root: Path
    top: Path
    bottom: Path
    mnt: Path
    upper: Path
    work: Path
    file: Path  # a regular file
    missing: Path  # does not exist

    @property
    def lowerdir(self) -> str:
        return f"lowerdir={self.top}:{self.bottom}"


@pytest.fixture
def paths(tmp_path):
    root = tmp_path
    top, bottom = root / "layers" / "top", root / "layers" / "bottom"
    write(top, "top.txt", "top")
    write(top, "shared", "from top")
    write(top, "dir/t", "t")
    write(bottom, "bottom.txt", "bottom")
    write(bottom, "shared", "from bottom")
    write(bottom, "dir/b", "b")
    for d in ("mnt", "upper", "work"):
        (root / d).mkdir()
    f = write(root, "a-file", "not a dir")
    return Paths(root, top, bottom, root / "mnt", root / "upper", root / "work", f, root / "missing")


def assert_merged(mnt: Path):
    assert sorted(os.listdir(mnt)) == sorted(EXPECTED)
    for name, text in EXPECTED.items():
        if text is not None:
            assert (mnt / name).read_text() == text
    assert sorted(os.listdir(mnt / "dir")) == ["b", "t"]


def assert_nothing_left(mnt: Path, *argv_mnt: str):
    assert not mounts.mounts_at(mnt), f"{mnt} is mounted after a failed start: {mounts.mounts_at(mnt)}"
    left = mounts.wait_exited(mounts.pids_with_arg(str(mnt), *argv_mnt), 5)
    assert not left, f"fsd processes {left} still running after a failed start"


def assert_one_error_line(r: mounts.Result, *names):
    """Non-zero exit, exactly one stderr line `fsd: ...`, mentioning each of names
    (a tuple in names means: one of these)."""
    assert r.returncode not in (0, None), "fsd should have failed:\n" + r.describe()
    lines = r.stderr_lines
    assert len(lines) == 1, "expected exactly one error line:\n" + r.describe()
    assert lines[0].startswith("fsd: "), r.describe()
    for name in names:
        alts = name if isinstance(name, tuple) else (name,)
        assert any(a in lines[0] for a in alts), f"error line does not name {alts}: {lines[0]!r}"


# -- accepted forms ------------------------------------------------------------------
# Each form returns (argv, cwd); the mountpoint is paths.mnt, passed as "mnt" when cwd is set.

def _escaped_colon(p: Paths, _log):
    odd = p.root / "layers" / "with:colon"
    p.top.rename(odd)
    return ["-o", f"lowerdir={escape_lowerdir(odd)}:{p.bottom}", p.mnt], None


def _relative(p: Paths, _log):
    return ["-o", "lowerdir=layers/top:./layers/../layers/bottom", "mnt"], p.root


def _storage_links(p: Paths, _log, relative=True):
    """containers/storage: <root>/overlay/l/ABC -> ../<id>/diff, run with cwd <root>/overlay."""
    ov = p.root / "overlay"
    for name, layer, short in (("id-top", p.top, "ABC"), ("id-bottom", p.bottom, "DEF")):
        (ov / name).mkdir(parents=True)
        layer.rename(ov / name / "diff")
        (ov / "l").mkdir(exist_ok=True)
        os.symlink(f"../{name}/diff", ov / "l" / short)
    if relative:
        return ["-o", "lowerdir=l/ABC:l/DEF", "../mnt"], ov
    return ["-o", f"lowerdir={ov}/l/ABC:{ov}/l/DEF", p.mnt], None


def _symlinked_layer_parent(p: Paths, _log):
    os.symlink(p.root / "layers", p.root / "via")
    return ["-o", f"lowerdir={p.root}/via/top:{p.root}/via/bottom", p.mnt], None


FORMS = {
    "one -o": lambda p, log: (["-o", f"{p.lowerdir},logfile={log}", p.mnt], None),
    "several -o": lambda p, log: (["-o", p.lowerdir, "-o", "ro", "-o", f"logfile={log}", p.mnt], None),
    "SOURCE MOUNTPOINT -o": lambda p, log: (["overlay", p.mnt, "-o", p.lowerdir], None),
    "SOURCE MOUNTPOINT -o, fuse-overlayfs source": lambda p, log: (
        ["fuse-overlayfs", p.mnt, "-o", f"{p.lowerdir},logfile={log}"], None),
    "empty options": lambda p, log: (["-o", f",,{p.lowerdir},,ro,,", p.mnt], None),
    "empty options and volatile": lambda p, log: (["-o", f"{p.lowerdir},,volatile", p.mnt], None),
    "trailing comma": lambda p, log: (["-o", f"{p.lowerdir},", p.mnt], None),
    "trailing comma in a second -o": lambda p, log: (["-o", p.lowerdir, "-o", "ro,", p.mnt], None),
    "escaped colon in lowerdir": _escaped_colon,
    "relative lowerdir and mountpoint": _relative,
    "containers/storage l/ links, relative": _storage_links,
    "containers/storage l/ links, absolute": lambda p, log: _storage_links(p, log, relative=False),
    "symlinked parent of lowerdirs": _symlinked_layer_parent,
}


@pytest.mark.parametrize("form", FORMS)
def test_accepted_form(paths, mount_fsd, fsd_log, form):
    args, cwd = FORMS[form](paths, fsd_log.new_path())
    mnt_arg = next(a for a in args if os.fspath(a).endswith("mnt"))
    r = mount_fsd.run(args, mnt_arg, cwd=cwd)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(paths.mnt, mounts.FSD_FSTYPE), r.describe()
    assert "unknown option" not in r.stderr, r.describe()
    assert_merged(paths.mnt)
    # the daemon left the cwd it was started in: the stack must stay reachable
    assert (paths.mnt / "bottom.txt").read_text() == "bottom"


# Options fuse-overlayfs users pass; fsd accepts each (maybe with a "not yet
# effective" warning, never "unknown option") and mounts.
KNOWN_OPTIONS = ["ro", "allow_other", "noacl", "fsync=0", "fsync=1", "static_nlink", "volatile",
                 "squash_to_root", "squash_to_uid=1000", "squash_to_gid=1000",
                 "uidmapping=0:0:65536", "gidmapping=0:0:65536", "xattr_permissions=0",
                 "timeout=1"]  # debug: see test_lifecycle (libfuse's -d implies -f)


@pytest.mark.parametrize("opt", KNOWN_OPTIONS)
def test_known_option_is_accepted(paths, mount_fsd, opt):
    m = mount_fsd([paths.top, paths.bottom], extra_opts=[opt], mountpoint=paths.mnt)
    assert f"unknown option '{opt.partition('=')[0]}'" not in m.result.stderr, m.result.describe()
    assert sorted(os.listdir(m.mnt)) == sorted(EXPECTED)


def test_unknown_options_warn_once_each_and_mount(paths, mount_fsd):
    m = mount_fsd([paths.top, paths.bottom], extra_opts=["foo=bar", "bogus", "x-gvfs-show"],
                  mountpoint=paths.mnt)
    lines = m.result.stderr_lines
    for name in ("foo", "bogus", "x-gvfs-show"):
        hits = [line for line in lines if f"unknown option '{name}'" in line]
        assert len(hits) == 1, f"want one warning for {name!r}:\n" + m.result.describe()
    assert_merged(m.mnt)
    log = m.log.read_text()
    for name in ("foo", "bogus", "x-gvfs-show"):
        assert f"unknown option '{name}'" in log, f"logfile lacks the warning for {name}: {log!r}"


def test_logfile_is_appended(paths, mount_fsd):
    log = paths.root / "kept.log"
    log.write_text("an earlier line\n")
    r = mount_fsd.run(["-o", f"{paths.lowerdir},bogus,logfile={log}", paths.mnt], paths.mnt)
    assert r.returncode == 0, r.describe()
    text = log.read_text()
    assert text.startswith("an earlier line\n") and "unknown option 'bogus'" in text, text


# -- bad forms ----------------------------------------------------------------------------
# Each returns (argv, names the error line must contain; a tuple: one of them).

BAD = {
    "no options": lambda p: ([p.mnt], ["lowerdir"]),
    "no lowerdir": lambda p: (["-o", "ro", p.mnt], ["lowerdir"]),
    "empty lowerdir": lambda p: (["-o", "lowerdir=", p.mnt], ["lowerdir"]),
    "missing lowerdir": lambda p: (["-o", f"lowerdir={p.top}:{p.missing}", p.mnt], [str(p.missing)]),
    "lowerdir is a file": lambda p: (["-o", f"lowerdir={p.file}:{p.bottom}", p.mnt], [str(p.file)]),
    "lowerdir is the mountpoint": lambda p: (["-o", f"lowerdir={p.top}:{p.mnt}", p.mnt],
                                             [(str(p.mnt), "lowerdir", "mountpoint")]),
    "dangling lowerdir symlink": lambda p: (
        os.symlink(p.missing, p.root / "dangling") or ["-o", f"lowerdir={p.root}/dangling", p.mnt],
        [(str(p.root / "dangling"), str(p.missing))]),
    "upperdir without workdir": lambda p: (["-o", f"{p.lowerdir},upperdir={p.upper}", p.mnt], ["workdir"]),
    "workdir without upperdir": lambda p: (["-o", f"{p.lowerdir},workdir={p.work}", p.mnt], ["upperdir"]),
    "missing upperdir": lambda p: (
        ["-o", f"{p.lowerdir},upperdir={p.missing},workdir={p.work}", p.mnt], [str(p.missing)]),
    "upperdir is a file": lambda p: (
        ["-o", f"{p.lowerdir},upperdir={p.file},workdir={p.work}", p.mnt], [str(p.file)]),
    "missing workdir": lambda p: (
        ["-o", f"{p.lowerdir},upperdir={p.upper},workdir={p.missing}", p.mnt], [str(p.missing)]),
    "workdir is a file": lambda p: (
        ["-o", f"{p.lowerdir},upperdir={p.upper},workdir={p.file}", p.mnt], [str(p.file)]),
    "fsync=x": lambda p: (["-o", f"{p.lowerdir},fsync=x", p.mnt], ["fsync"]),
    "fsync without value": lambda p: (["-o", f"{p.lowerdir},fsync=", p.mnt], ["fsync"]),
    "no mountpoint": lambda p: (["-o", p.lowerdir], [("mountpoint", "MOUNTPOINT")]),
    "missing mountpoint": lambda p: (["-o", p.lowerdir, p.missing], [str(p.missing)]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_form_fails_with_one_line(paths, mount_fsd, case):
    args, names = BAD[case](paths)
    mnt = paths.missing if case == "missing mountpoint" else paths.mnt
    r = mount_fsd.run(args, mnt)
    assert_one_error_line(r, *names)
    assert_nothing_left(mnt)


# -- --version, -h -------------------------------------------------------------------------

@pytest.fixture
def fsd_installed():
    if not os.path.exists(mounts.fsd_executable()):
        pytest.skip(f"fsd is not installed at {mounts.fsd_executable()} (run scripts/install)")


def test_version(fsd_installed):
    r = mounts.run_fsd(["--version"])
    assert r.returncode == 0, r.describe()
    assert r.stdout.splitlines()[0] == f"fsd {importlib.metadata.version('strata')}", r.describe()


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(fsd_installed, flag):
    r = mounts.run_fsd([flag])
    assert r.returncode == 0, r.describe()
    out = r.stdout + r.stderr
    assert "usage" in out.lower() and "lowerdir" in out, r.describe()


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_a_reader_that_stops_early_gets_no_traceback(fsd_installed, flag):
    """`fsd --version | head -1`: the pipe is closed before fsd writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([mounts.fsd_executable(), flag], stdout=write_end, stderr=subprocess.PIPE,
                           timeout=30)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (0, b"")


def readme_fsd_options() -> list[str]:
    """The option names of README's `fsd options` table: `quota_bytes` of
    `quota_bytes=N[KMG]`, `-d`, `nosuid` …"""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## fsd options", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = re.split(r"(?<!\\)\|", line)[1]
            for code in re.findall(r"`([^`]*)`", first_cell):
                names.append(re.split(r"[=…]", code)[0].strip())
    return names


def test_help_lists_every_option_of_the_readme(fsd_installed):
    names = readme_fsd_options()
    assert {"quota_bytes", "quota_inodes", "whiteout", "xattr_permissions"} <= set(names)
    r = mounts.run_fsd(["-h"])
    missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w])",
                                                  r.stdout)]
    assert missing == [], r.describe()
