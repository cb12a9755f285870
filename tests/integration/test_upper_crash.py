"""A crash of fsd (SIGKILL of the daemon) in the middle of a copy-up or of the
rename of a merged directory: what the crash left in the upper and work area
is well-formed, and after a remount the merged view shows the old state or the
new one, never a half-copied file or a half-moved tree, and the fsck finds the
work area clean again.

The kill is aimed by watching the work area: the object being built there
shows how far the copy has gone.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support import fsck
from support.layergen import make_layers, whiteout, write
from support.upper_ops import kill_and_detach, pattern, wait_until

MiB = 1 << 20
BIG = 200 * MiB


def _tmp_dir(work: Path) -> Path:
    return work / "fsd" / "tmp"


def _building(work: Path) -> list[tuple[str, int]]:
    """(path, size) of everything in the work area's scratch dir right now
    (directories with size 0)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(_tmp_dir(work)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                out.append((os.path.relpath(p, _tmp_dir(work)), 0 if stat.S_ISDIR(st.st_mode) else st.st_size))
            except FileNotFoundError:
                pass
    return out


@pytest.fixture(scope="module")
def big_lower(tmp_path_factory):
    """A lower layer with a 200 MiB file: (layer, sha256 of it, sha256 of it + "x")."""
    layer = tmp_path_factory.mktemp("big-lower")
    h = hashlib.sha256()
    block = pattern(MiB, b"crash")
    with open(layer / "big", "wb") as f:
        for i in range(BIG // MiB):
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk)
            h.update(chunk)
    old = h.hexdigest()
    h.update(b"x")
    return layer, old, h.hexdigest()


def _sha_through(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return os.lstat(path).st_size, h.hexdigest()


def _start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


# -- copy-up of a big file ---------------------------------------------------------------------

@pytest.mark.fuse_deadline(90)
@pytest.mark.parametrize("when", ["started", "half", "copied"])
def test_sigkill_during_copy_up_of_a_big_file(big_lower, tmp_path, mount_fsd, when):
    lower, old, new = big_lower
    upper, work = _dirs(tmp_path)
    m = mount_fsd([lower], upper, work)
    limit = {"started": 1, "half": BIG // 2, "copied": BIG}[when]
    writer = _start("import sys; open(sys.argv[1], 'a').write('x')", m.mnt / "big")

    def far_enough():
        sizes = [s for p, s in _building(work) if p != "probe"]
        return bool(sizes) and max(sizes) >= limit
    hit = wait_until(far_enough, 30)
    kill_and_detach(m)
    try:
        writer.wait(20)
    except subprocess.TimeoutExpired:
        writer.kill()
        pytest.fail("the writer hung after the daemon died")
    if when != "copied":
        assert hit, f"the copy-up was never seen in progress ({when}); nothing was tested"
    assert writer.returncode != 0 or when == "copied", "the append succeeded though the daemon was killed first"
    fsck.assert_clean([lower], upper, work, settled=False)  # what the crash left is well-formed

    m2 = mount_fsd([lower], upper, work)
    fsck.assert_clean([lower], upper, work)  # the next mount cleaned the work area
    size, digest = _sha_through(m2.mnt / "big")
    assert (size, digest) in ((BIG, old), (BIG + 1, new)), \
        f"partial file after a crash during copy-up: size {size} (killed when {when})"
    if (upper / "big").exists():
        assert os.lstat(upper / "big").st_size in (BIG, BIG + 1)
    # and the file is fully usable
    with open(m2.mnt / "big", "a") as f:
        f.write("y")
    assert os.lstat(m2.mnt / "big").st_size == size + 1


# -- rename of a merged directory ------------------------------------------------------------------

def _merged_tree(top: Path, bottom: Path):
    for i in range(24):
        write(bottom, f"tree/data/f{i:02d}", pattern(4 * MiB, b"%d" % i))
    for i in range(40):
        write(bottom, f"tree/small/s{i:02d}", f"small {i}")
        write(top, f"tree/small/t{i:02d}", f"top {i}")
    write(bottom, "tree/gone", "whited out")
    whiteout(top, "tree/gone", "chardev")
    os.symlink("small/s00", top / "tree" / "link")
    write(bottom, "tree/deep/a/b/c", "deep")


def _state(root: Path) -> dict[str, str]:
    """rel -> content hash / link target / 'dir' of everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
    return out


@pytest.mark.fuse_deadline(90)
@pytest.mark.parametrize("when", ["early", "late", "switch"])
def test_sigkill_during_rename_of_a_merged_directory(tmp_path, mount_fsd, when):
    """early/late: while the moved tree is built in the work area; switch: once
    fsd has recorded that it is about to switch the trees (its journal
    WORKDIR/fsd/moving exists), if that moment is caught."""
    top, bottom = make_layers(tmp_path / "layers", 2)
    _merged_tree(top, bottom)
    upper, work = _dirs(tmp_path)
    m = mount_fsd([top, bottom], upper, work)
    write(m.mnt, "tree/new-in-upper", "made through the mount")
    os.unlink(m.mnt / "tree/small/s01")
    expected = _state(m.mnt / "tree")
    assert len(expected) > 100

    limit = {"early": 1, "late": 60 * MiB, "switch": None}[when]
    mover = _start("import os, sys; os.rename(sys.argv[1], sys.argv[2])", m.mnt / "tree", m.mnt / "moved")

    def far_enough():
        if limit is None:
            return (work / "fsd" / "moving").exists() or mover.poll() is not None
        built = _building(work)
        return len(built) > 1 and sum(s for _, s in built) >= limit
    hit = wait_until(far_enough, 30)
    kill_and_detach(m)
    try:
        mover.wait(20)
    except subprocess.TimeoutExpired:
        mover.kill()
        pytest.fail("the renaming process hung after the daemon died")
    if when != "switch":
        assert hit, f"the tree was never seen being built ({when}); nothing was tested"
    fsck.assert_clean([top, bottom], upper, work, settled=False)  # what the crash left is well-formed

    m2 = mount_fsd([top, bottom], upper, work)
    fsck.assert_clean([top, bottom], upper, work)  # no tmp leftovers, the journal finished
    old, new = (m2.mnt / "tree").exists(), (m2.mnt / "moved").exists()
    assert old != new, f"after the crash: old name present {old}, new name present {new}"
    got = _state(m2.mnt / ("tree" if old else "moved"))
    lost = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
    assert not (lost or extra or changed), \
        f"{'old' if old else 'new'} state after the crash: lost {lost[:10]}, extra {extra[:10]}, changed {changed[:10]}"
    # the rename can be done now, completely
    if old:
        os.rename(m2.mnt / "tree", m2.mnt / "moved")
    assert _state(m2.mnt / "moved") == expected
    assert not (m2.mnt / "tree").exists()
