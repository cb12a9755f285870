"""Mount options with awkward paths: commas (`\\,`), colons (`\\:` in lowerdir, and
in upperdir/workdir, which the kernel overlay unescapes too), spaces,
backslashes, relative paths; and mountpoints that would make fsd serve its
own layers (inside a lower or the upper, also reached through a symlink): refused with one line `fsd: ...`, nothing mounted.
(The plain forms are in test_cli_options.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import mounts
from support.faults import probe
from support.layergen import write


def _esc(path) -> str:
    """A path as a value inside -o: backslash, comma and colon escaped."""
    return os.fspath(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _esc_comma(path) -> str:
    return os.fspath(path).replace(",", "\\,")


def _stack(root: Path, top_name: str, bottom_name: str) -> tuple[Path, Path]:
    top, bottom = root / top_name, root / bottom_name
    write(top, "top.txt", "top")
    write(top, "dir/t", "t")
    write(bottom, "bottom.txt", "bottom")
    write(bottom, "dir/b", "b")
    return top, bottom


def _check(mnt: Path, upper: Path | None = None):
    assert sorted(os.listdir(mnt)) == ["bottom.txt", "dir", "top.txt"], os.listdir(mnt)
    assert sorted(os.listdir(mnt / "dir")) == ["b", "t"]
    if upper is not None:
        write(mnt, "dir/new", "written")
        assert (upper / "dir/new").read_text() == "written"


ODD = {
    "commas": ("lo,w,er", "bot,tom", "up,per", "wo,rk", "mn,t"),
    "colons": ("lo:wer", "bot:tom", "up:per", "wo:rk", "mn:t"),
    "spaces": ("lo wer", " bottom ", "up per", "wo rk", "m n t"),
    "backslashes": ("lo\\wer", "bot\\tom", "up\\per", "wo\\rk", "mn\\t"),
    "everything": ("a, b:c\\d", "e,f: g", "u,p:p er", "w:o,r k", "m,n:t "),
}


@pytest.mark.parametrize("kind", ODD)
def test_odd_characters_in_every_path(tmp_path, mount_fsd, fsd_log, kind):
    top_n, bottom_n, up_n, work_n, mnt_n = ODD[kind]
    top, bottom = _stack(tmp_path / "layers", top_n, bottom_n)
    upper, work, mnt = tmp_path / up_n, tmp_path / work_n, tmp_path / mnt_n
    for d in (upper, work, mnt):
        d.mkdir()
    log = fsd_log.new_path()
    opts = (f"lowerdir={_esc(top)}:{_esc(bottom)},upperdir={_esc(upper)},workdir={_esc(work)},"
            f"logfile={_esc_comma(log)}")
    r = mount_fsd.run(["-o", opts, str(mnt)], mnt)
    assert r.returncode == 0, r.describe()
    assert mounts.is_mounted(mnt, mounts.FSD_FSTYPE), r.describe()
    _check(mnt, upper)


def test_unescaped_colons_in_upperdir_and_workdir(tmp_path, mount_fsd):
    """Only lowerdir is a list: a colon elsewhere is part of the path."""
    top, bottom = _stack(tmp_path / "layers", "top", "bottom")
    upper, work, mnt = tmp_path / "up:per", tmp_path / "wo:rk", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    r = mount_fsd.run(["-o", f"lowerdir={top}:{bottom},upperdir={upper},workdir={work}", str(mnt)], mnt)
    assert r.returncode == 0, r.describe()
    _check(mnt, upper)


def test_relative_paths_everywhere(tmp_path, mount_fsd):
    root = tmp_path / "root dir"
    top, bottom = _stack(root / "layers", "top", "bottom")
    for d in ("upper", "work", "mnt"):
        (root / d).mkdir()
    (root / "cwd").mkdir()
    r = mount_fsd.run(["-o", "lowerdir=../layers/top:../layers/./bottom,upperdir=../upper,workdir=./../work",
                       "../mnt"], "../mnt", cwd=root / "cwd")
    assert r.returncode == 0, r.describe()
    _check(root / "mnt", root / "upper")


# -- mountpoints that would serve fsd's own layers --------------------------------------------------

def _refused(r, mount_fsd, mnt: Path, shown_at: str, *names):
    """One `fsd: ` line naming one of names, non-zero exit, nothing mounted; if fsd did
    mount, say whether listing the directory where the mountpoint shows in the merged
    view (shown_at) hangs: the daemon would look up its own mountpoint."""
    if r.returncode == 0:
        fuse = [e for e in mounts.mounts_at(mnt) if e.fstype.startswith("fuse")]
        inside = probe(mnt / shown_at, "listdir", 3) if fuse else "not mounted"
        for e in fuse:  # a daemon stuck on its own mount would hold the test up
            mounts.fuse_abort(e.minor)
        pytest.fail(f"fsd mounted on {mnt}; listing {shown_at or '.'} in it: {inside}\n" + r.describe(),
                    pytrace=False)
    lines = r.stderr_lines
    assert len(lines) == 1 and lines[0].startswith("fsd: "), "want one line `fsd: ...`:\n" + r.describe()
    assert any(n in lines[0] for n in names), f"the line names none of {names}: {lines[0]!r}"
    assert not mounts.mounts_at(mnt), f"{mnt} mounted after a refusal"


@pytest.mark.fuse_deadline(60)
@pytest.mark.parametrize("where", ["in the top lower", "deep in the bottom lower", "through a symlink into a lower",
                                   "in the upper"])
def test_mountpoint_inside_a_layer_is_refused(tmp_path, mount_fsd, where):
    top, bottom = _stack(tmp_path / "layers", "top", "bottom")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    os.symlink(bottom, tmp_path / "via-link")
    mnt = {"in the top lower": top / "dir" / "mnt",
           "deep in the bottom lower": bottom / "dir" / "a" / "b" / "mnt",
           "through a symlink into a lower": tmp_path / "via-link" / "mnt",
           "in the upper": upper / "mnt"}[where]
    mnt.mkdir(parents=True)
    mount_fsd.track(os.path.realpath(mnt))  # cleaned up even if mounted, by its real path
    r = mount_fsd.run(["-o", f"lowerdir={top}:{bottom},upperdir={upper},workdir={work}", str(mnt)], mnt)
    real = os.path.realpath(mnt)
    layer = next(d for d in (top, bottom, upper) if real.startswith(str(d) + "/"))
    shown_at = os.path.dirname(os.path.relpath(real, layer))
    _refused(r, mount_fsd, Path(real), shown_at, "mountpoint", str(mnt), real)
