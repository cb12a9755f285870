"""fsd's writable upper against the kernel overlay: the same seeded random
sequence of operations on both, every result compared, then the whole trees.

Each seed: a random layer stack (tests/support/layergen.py); the kernel overlay
mounts a kernel-format copy with its own upper/work, fsd the original with
another. tests/support/upper_ops.py generates the operations (create O_EXCL,
write/append/truncate, O_TRUNC, fallocate punch-hole, fsync/fdatasync, unlink,
rmdir, mkdir over whiteouts, fifos, sockets, devices (0/0 refused), symlinks,
links, renames with NOREPLACE/EXCHANGE, chmod, chown, utimens with
UTIME_NOW/OMIT, user.* xattrs, reads) and reads back what each one touched.

Where fsd does better than the kernel on purpose, the random sequence stays
away and targeted tests below assert fsd's result: renaming a directory with
lower parts (kernel: EXDEV; the kernel side is brought to the same state by
copying the tree through its mount), and lower hard links that stay linked
after copy-up (the kernel without index=on breaks them).

Rerun one seed: pytest tests/integration/test_upper_differential.py -k seed103
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from support import fsck, layergen
from support.convert import convert_layer, convert_layers
from support.layergen import make_layers, whiteout, write
from support.snapshot import compare, invariant_problems, snapshot
from support.upper_ops import (OpGenerator, apply, dir_times_dropped, errno_of, run_sequence, show_op,
                               times_settled, walk)

# (seed, fsd's extra options): the view must not depend on the marker format or on metacopy
SEEDS = [(101, ()), (102, ()), (103, ()), (104, ("whiteout=file",)), (105, ("metacopy=on",)),
         (106, ("volatile",))]
OPS = 150
UPPER_TIME = 1_400_000_000 * 10**9
# index=on: the kernel mode whose hard-link semantics fsd chose (lower hard links stay
# links after copy-up, and every name counts the links of the merged view)
KERNEL_OPTS = ("redirect_dir=off", "index=on", "metacopy=off")
KERNEL_INDEX_OFF = ("redirect_dir=off", "index=off", "metacopy=off")


class Pair:
    """A stack mounted twice: the kernel overlay and fsd, each with its own upper."""

    def __init__(self, tmp_path: Path, lowers: list[Path], mount_fsd, mount_kernel_overlay,
                 klowers: list[Path] | None = None, fsd_opts=()):
        self.tmp = tmp_path
        self.lowers = lowers
        self.klowers = klowers if klowers is not None else convert_layers(lowers, tmp_path / "kernel-lowers")
        self.t0 = time.time_ns() - 10**9  # mtimes from here on are "now" (the kernel's clock is coarse)
        for d in ("kup", "kwork", "fup", "fwork"):
            (tmp_path / d).mkdir()
            os.utime(tmp_path / d, ns=(UPPER_TIME, UPPER_TIME))  # both roots start alike
        self.kup, self.fup, self.fwork = tmp_path / "kup", tmp_path / "fup", tmp_path / "fwork"
        self.kmnt = mount_kernel_overlay(self.klowers, self.kup, tmp_path / "kwork", KERNEL_OPTS)
        self.mount_fsd = mount_fsd
        self.fsd_opts = tuple(fsd_opts)
        self.fm = mount_fsd(lowers, self.fup, self.fwork, self.fsd_opts)
        self.deferred: list[str] = []

    @property
    def roots(self) -> dict[str, Path]:
        return {"kernel": self.kmnt, "fsd": self.fm.mnt}

    def view(self):
        return walk(self.kmnt, self.kup)

    def run(self, gen: OpGenerator, count: int, what: str):
        log: list = []
        soft: list = []
        bad = run_sequence(gen, self.roots, self.view, count, log, soft)
        for i, op, results in soft[:3]:
            self.deferred.append(f"{what}: op #{i} {show_op(op)}: atime differs\n  kernel: {results['kernel']!r}\n"
                                 f"  fsd:    {results['fsd']!r}")
        if bad:
            i, op, results = bad[0]
            recent = "\n".join(f"  #{j} {show_op(o)} -> {r['kernel'][0]}" for j, o, r in log[-12:-1])
            pytest.fail(f"{what}: op #{i} {show_op(op)} differs\n  kernel: {results['kernel']!r}\n"
                        f"  fsd:    {results['fsd']!r}\nops before it:\n{recent}", pytrace=False)
        return log

    def assert_trees_equal(self, what: str):
        got = snapshot(self.fm.mnt)
        expected = times_settled(snapshot(self.kmnt), self.t0)
        settled = times_settled(got, self.t0)
        diffs = compare(dir_times_dropped(expected), dir_times_dropped(settled), "kernel", "fsd")
        assert not diffs, f"{what}: merged trees differ:\n" + "\n".join(diffs)
        # directory mtimes: checked last (finish()), so that one bug there hides nothing else
        diffs = compare(expected, settled, "kernel", "fsd")
        if diffs:
            self.deferred.append(f"{what}: directory mtimes differ (the kernel keeps a directory's mtime "
                                 "when it copies something up into it):\n" + "\n".join(diffs))
        problems = invariant_problems(got)
        assert not problems, f"{what}: fsd mount invariants broken:\n" + "\n".join(problems[:40])
        return got

    def finish(self):
        """Fail with what assert_trees_equal put off."""
        assert not self.deferred, "\n".join(self.deferred[:4])

    def remount_fsd(self):
        self.fm.unmount()
        self.fm = self.mount_fsd(self.lowers, self.fup, self.fwork, self.fsd_opts)


# -- the random sequence ------------------------------------------------------------------

@pytest.mark.fuse_deadline(90)
@pytest.mark.parametrize("seed,opts", SEEDS, ids=[f"seed{s}" + "".join(f"-{o}" for o in opts) for s, opts in SEEDS])
def test_random_operations_match_kernel(tmp_path, seed, opts, mount_fsd, mount_kernel_overlay):
    stack = layergen.generate_stack(tmp_path / "stack", seed, size=0.6, big_files=1)
    lowers_before = [snapshot(p, contents=False) for p in stack.layers]
    pair = Pair(tmp_path, stack.layers, mount_fsd, mount_kernel_overlay, fsd_opts=opts)
    gen = OpGenerator(seed)
    log = pair.run(gen, OPS, f"seed {seed}")
    done = {op[0] for _, op, r in log if r["fsd"][0] == "ok"}
    before = pair.assert_trees_equal(f"seed {seed} after {OPS} ops")
    assert len(done) >= 12, f"too few kinds of operation succeeded: {sorted(done)}"

    # what fsd shows survives a remount, inode numbers included
    pair.remount_fsd()
    after = snapshot(pair.fm.mnt)
    assert compare(before, after, "before remount", "after remount") == []
    moved = {p: (before.ino[p], after.ino[p]) for p in before.ino if after.ino.get(p) != before.ino[p]}
    assert not moved, f"inode numbers changed across a remount: {dict(list(moved.items())[:10])}"
    fsck.assert_clean(pair.lowers, pair.fup, pair.fwork)
    pair.fm.unmount()
    lowers_after = [snapshot(p, contents=False) for p in stack.layers]
    assert [compare(a, b) for a, b in zip(lowers_before, lowers_after)] == [[]] * len(lowers_before), \
        "fsd changed a lower layer"
    pair.finish()


# -- renaming directories with lower parts ------------------------------------------------------

def _subtree(view: dict, rel: str) -> list[str]:
    return [r for r in view if r == rel or r.startswith(rel + "/")]


def _movable_dirs(view: dict, layers: list[Path]) -> list[str]:
    """Dirs with lower parts, some content and no hard link leaving the subtree,
    those merged from several layers first."""
    out = []
    for rel, info in sorted(view.items()):
        if not rel or info.kind != "dir" or rel.count("/") > 3:
            continue
        sub = _subtree(view, rel)
        if len(sub) < 2:
            continue
        linked = [r for r in sub if view[r].kind == "file" and view[r].nlink > 1]
        if linked:
            continue
        layers_with = sum(1 for lay in layers if (lay / rel).is_dir() and not (lay / rel).is_symlink())
        out.append((-min(layers_with, 2), rel.count("/"), rel))
    return [rel for _, _, rel in sorted(out)]


def _emulate_move(kmnt: Path, src: str, dst: str):
    """What fsd does in one rename, done on the kernel overlay by copying."""
    convert_layer(kmnt / src, kmnt / dst)
    shutil.rmtree(kmnt / src)


@pytest.mark.fuse_deadline(90)
@pytest.mark.parametrize("seed", [201, 202], ids=["seed201", "seed202"])
def test_rename_of_merged_directories(tmp_path, seed, mount_fsd, mount_kernel_overlay):
    stack = layergen.generate_stack(tmp_path / "stack", seed, size=0.7, big_files=0)
    pair = Pair(tmp_path, stack.layers, mount_fsd, mount_kernel_overlay)
    k, f = pair.kmnt, pair.fm.mnt
    view = pair.view()
    candidates = _movable_dirs(view, stack.layers)
    assert len(candidates) >= 3, candidates
    gen = OpGenerator(seed)
    moves = []
    taken: list[str] = []
    for src in candidates:
        if any(src == t or src.startswith(t + "/") or t.startswith(src + "/") for t in taken):
            continue
        n = len(moves)
        if n == 0:
            dst = f"moved-{seed}"  # a new name in the root
        elif n == 1:  # into another directory that has lower parts
            others = [d for d in candidates if d not in taken and d != src and not d.startswith(src + "/")
                      and not src.startswith(d + "/")]
            dst = (others[0] if others else "") + f"/into-{seed}"
            dst = dst.lstrip("/")
        else:  # over a name just deleted (a whiteout)
            victim = next((r for r, i in sorted(pair.view().items()) if i.kind == "file" and i.nlink == 1
                           and not r.startswith(src + "/") and "/" not in r), None)
            assert victim is not None
            assert apply(k, ("unlink", victim))[0] == "ok" and apply(f, ("unlink", victim))[0] == "ok"
            dst = victim
        taken += [src, dst]
        before_ino = {r: os.lstat(f / r).st_ino for r in _subtree(pair.view(), src)}
        assert errno_of(os.rename, k / src, k / dst) == "EXDEV", "the kernel renamed a merged dir?"
        assert errno_of(os.rename, f / src, f / dst) == "ok", f"fsd: rename {src!r} -> {dst!r}"
        _emulate_move(k, src, dst)
        assert not os.path.lexists(f / src)
        pair.assert_trees_equal(f"after renaming {src!r} to {dst!r}")
        after_ino = {src + r[len(dst):]: os.lstat(f / r).st_ino for r in _subtree(pair.view(), dst)}
        changed = {r: (i, after_ino.get(r)) for r, i in before_ino.items() if after_ino.get(r) != i}
        assert not changed, f"inode numbers changed by the rename of {src!r}: {dict(list(changed.items())[:8])}"
        gen.pure_dirs.add(dst)  # both sides can move it again now
        moves.append((src, dst))
        if len(moves) == 3:
            break
    assert len(moves) == 3, moves

    # keep working in and around the moved trees; then everything again after a remount
    pair.run(gen, 80, f"seed {seed} after the moves {moves}")
    pair.assert_trees_equal(f"seed {seed} after the moves and 80 ops")
    pair.remount_fsd()
    pair.assert_trees_equal(f"seed {seed} after the remount")
    fsck.assert_clean(pair.lowers, pair.fup, pair.fwork)
    pair.finish()


def test_rename_of_merged_directory_keeps_open_files_and_hides_the_source(tmp_path, mount_fsd,
                                                                        mount_kernel_overlay):
    top, mid, bottom = make_layers(tmp_path / "l", 3)
    write(bottom, "app/lib/a.txt", "a from bottom")
    write(bottom, "app/lib/gone.txt", "whited out")
    write(bottom, "app/old/x", "x")
    write(mid, "app/lib/b.txt", "b from mid")
    whiteout(mid, "app/lib/gone.txt", "whfile")
    layergen.make_opaque(mid, "app/old", "whfile")
    write(mid, "app/old/y", "y")
    write(top, "app/top.txt", "top")
    os.symlink("lib/a.txt", top / "app" / "link")
    os.mkfifo(top / "app" / "fifo")
    os.setxattr(mid / "app" / "lib", "user.tag", b"mid")
    pair = Pair(tmp_path, [top, mid, bottom], mount_fsd, mount_kernel_overlay)
    k, f = pair.kmnt, pair.fm.mnt
    for m in (k, f):
        write(m, "app/lib/new.txt", "upper file")
    fd = os.open(f / "app/lib/new.txt", os.O_RDWR)
    try:
        assert errno_of(os.rename, k / "app", k / "app2") == "EXDEV"
        os.rename(f / "app", f / "app2")
        _emulate_move(k, "app", "app2")
        pair.assert_trees_equal("after rename app -> app2")
        assert errno_of(os.lstat, f / "app") == "ENOENT"
        assert "app" not in os.listdir(f)
        os.pwrite(fd, b"UPPER", 0)  # the descriptor still reaches the moved file
        assert (f / "app2/lib/new.txt").read_bytes() == b"UPPER file"
    finally:
        os.close(fd)
    # a new directory at the old name does not show the old content
    os.mkdir(f / "app")
    assert os.listdir(f / "app") == []
    os.rename(f / "app2", f / "app3")  # and the moved tree moves again
    assert sorted(os.listdir(f / "app3/lib")) == ["a.txt", "b.txt", "new.txt"]
    assert os.listdir(f / "app3/old") == ["y"]
    assert os.getxattr(f / "app3/lib", "user.tag") == b"mid"
    pair.remount_fsd()
    f = pair.fm.mnt
    assert os.listdir(f / "app") == []
    assert (f / "app3/lib/b.txt").read_text() == "b from mid"
    assert (f / "app3/link").read_text() == "a from bottom"
    pair.finish()


# -- lower hard links -----------------------------------------------------------------------------

def test_lower_hard_links_stay_linked_after_copy_up(tmp_path, mount_fsd, mount_kernel_overlay):
    top, bottom = make_layers(tmp_path / "l", 2)
    a = write(bottom, "a", "shared")
    os.link(a, bottom / "c")
    (bottom / "sub").mkdir()
    os.link(a, bottom / "sub" / "b")
    d = write(bottom, "d", "dd")
    os.link(d, bottom / "e")
    whiteout(top, "e", "chardev")
    upper, work = tmp_path / "up", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    fm = mount_fsd([top, bottom], upper, work)
    f = fm.mnt
    ino = os.lstat(f / "a").st_ino
    assert [os.lstat(f / n).st_ino for n in ("c", "sub/b")] == [ino, ino]

    with open(f / "sub" / "b", "a") as fh:  # copy-up through one name
        fh.write("+more")
    for n in ("a", "c", "sub/b"):
        st = os.lstat(f / n)
        assert (f / n).read_text() == "shared+more", n
        assert (st.st_ino, st.st_nlink) == (ino, 3), n
    os.chmod(f / "c", 0o600)  # a change through another name shows through all
    assert {stat.S_IMODE(os.lstat(f / n).st_mode) for n in ("a", "c", "sub/b")} == {0o600}
    on_disk = {os.lstat(upper / n).st_ino for n in ("a", "c", "sub/b")}
    assert len(on_disk) == 1 and os.lstat(upper / "a").st_nlink == 3, "not hard links in the upper"

    with open(f / "d", "a") as fh:  # its other name is whited out: stays so
        fh.write("!")
    assert (f / "d").read_text() == "dd!"
    assert errno_of(os.lstat, f / "e") == "ENOENT"

    fm.unmount()
    fm = mount_fsd([top, bottom], upper, work)
    f = fm.mnt
    for n in ("a", "c", "sub/b"):
        st = os.lstat(f / n)
        assert (f / n).read_text() == "shared+more", n
        assert (st.st_ino, st.st_nlink) == (ino, 3), n
    assert errno_of(os.lstat, f / "e") == "ENOENT"

    # the kernel overlay (index=off) breaks the link: the difference is deliberate
    kup, kwork = tmp_path / "kup", tmp_path / "kwork"
    kup.mkdir()
    kwork.mkdir()
    k = mount_kernel_overlay(convert_layers([top, bottom], tmp_path / "k"), kup, kwork, KERNEL_INDEX_OFF)
    with open(k / "sub" / "b", "a") as fh:
        fh.write("+more")
    assert (k / "a").read_text() == "shared"


@pytest.mark.parametrize("through", ["inside", "outside"])
def test_hard_links_leaving_a_renamed_merged_directory(tmp_path, mount_fsd, through):
    """A lower file linked from inside and outside a directory that is renamed
    (so copied up): both names still show one file, written through either
    (the outside name looked up last: found by the crash test, a write through
    it copied the file up again over its link)."""
    top, bottom = make_layers(tmp_path / "l", 2)
    x = write(bottom, "dir/x", "linked")
    (bottom / "other").mkdir()
    os.link(x, bottom / "other" / "y")
    write(top, "dir/t", "top")
    upper, work = tmp_path / "up", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    f = mount_fsd([top, bottom], upper, work).mnt
    ino = os.lstat(f / "dir/x").st_ino
    assert os.lstat(f / "other/y").st_ino == ino
    os.rename(f / "dir", f / "dir2")
    with open(f / ("dir2/x" if through == "inside" else "other/y"), "a") as fh:
        fh.write("+more")
    assert (f / "dir2/x").read_text() == "linked+more"
    assert (f / "other/y").read_text() == "linked+more", "the hard link to outside the moved tree broke"
    assert os.lstat(f / "other/y").st_ino == os.lstat(f / "dir2/x").st_ino == ino
    assert os.lstat(f / "dir2/x").st_nlink == 2


def test_lower_hard_link_names_removed_or_added_through_the_mount(tmp_path, mount_fsd):
    top, bottom = make_layers(tmp_path / "l", 2)
    a = write(bottom, "a", "data")
    for n in ("b", "c", "d/e"):
        (bottom / n).parent.mkdir(exist_ok=True)
        os.link(a, bottom / n)
    upper, work = tmp_path / "up", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    fm = mount_fsd([top, bottom], upper, work)
    f = fm.mnt
    ino = os.lstat(f / "a").st_ino
    os.unlink(f / "c")  # removed before the copy-up: must not come back with it
    os.link(f / "b", f / "new")  # a link to a lower hard link copies up the group, then links
    names = ("a", "b", "d/e", "new")
    for n in names:
        st = os.lstat(f / n)
        assert (st.st_ino, st.st_nlink) == (ino, 4), n
    assert errno_of(os.lstat, f / "c") == "ENOENT"
    with open(f / "d/e", "a") as fh:
        fh.write("!")
    assert {(f / n).read_text() for n in names} == {"data!"}
    os.unlink(f / "a")
    assert {os.lstat(f / n).st_nlink for n in ("b", "d/e", "new")} == {3}
    fm.unmount()
    f = mount_fsd([top, bottom], upper, work).mnt
    assert errno_of(os.lstat, f / "c") == "ENOENT"
    assert errno_of(os.lstat, f / "a") == "ENOENT"
    for n in ("b", "d/e", "new"):
        st = os.lstat(f / n)
        assert (st.st_ino, st.st_nlink, (f / n).read_text()) == (ino, 3, "data!"), n
