"""The upper fsd leaves behind is a format other tools read: mounted afterwards
by the kernel overlay on the same lowers (with a fresh workdir), it shows
exactly the tree fsd showed.

The stacks here use only the kernel's marker forms (a converted copy of a
random stack), as an image unpacked for the kernel would. fsd runs a seeded
random sequence with nothing held back: renames of merged directories, copy-up
of lower hard links, whiteouts over every kind, opaque directories. Then it is
unmounted and the kernel overlay mounts the lowers and fsd's upper.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import layergen
from support.convert import convert_layers
from support.layergen import make_layers, write
from support.snapshot import compare, invariant_problems, snapshot
from support.upper_ops import OpGenerator, apply, show_op, walk

SEEDS = [301, 302, 303]
OPS = 150


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def _top_dirs_with_content(view) -> list[str]:
    return [r for r, i in sorted(view.items())
            if r and "/" not in r and i.kind == "dir" and any(k.startswith(r + "/") for k in view)]


@pytest.mark.fuse_deadline(90)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_kernel_overlay_reads_fsds_upper(tmp_path, seed, mount_fsd, mount_kernel_overlay):
    stack = layergen.generate_stack(tmp_path / "stack", seed, size=0.6, big_files=1)
    lowers = convert_layers(stack.layers, tmp_path / "kernel-format")
    upper, work = _dirs(tmp_path)
    fm = mount_fsd(lowers, upper, work)
    m = fm.mnt

    # what the kernel itself cannot do, done first so that the sequence builds on it
    view = walk(m, upper)
    moved = _top_dirs_with_content(view)[:2]
    for i, d in enumerate(moved):
        os.rename(m / d, m / f"moved{i}")
    linked = [r for r, info in sorted(view.items()) if info.kind == "file" and info.nlink > 1
              and not any(r.startswith(d + "/") for d in moved)]
    if linked:
        with open(m / linked[0], "ab") as f:  # copy-up of a lower hard link
            f.write(b"+")
    os.setxattr(m, "trusted.overlay.nested", b"y")  # stored escaped, as the kernel does

    gen = OpGenerator(seed, kernel_safe=False)
    gen.pure_dirs.update(f"moved{i}" for i in range(len(moved)))
    log = []
    for i in range(OPS):
        if i % 3 == 0:  # walking through FUSE is the slow part; a slightly old view is fine here
            view = walk(m, upper)
        op = gen.next(view)
        r = apply(m, op)
        log.append((i, op, r[:2]))
        gen.observe(op, r)
    assert sum(1 for _, _, r in log if r[0] == "ok") > OPS // 2

    got = snapshot(m)
    assert invariant_problems(got) == []
    fm.unmount()
    kwork = tmp_path / "kwork"
    kwork.mkdir()
    k = mount_kernel_overlay(lowers, upper, kwork)
    expected = snapshot(k)
    diffs = compare(expected, got, "kernel on fsd's upper", "fsd")
    assert not diffs, "the kernel overlay reads fsd's upper differently:\n" + "\n".join(diffs) + \
        "\nlast ops:\n" + "\n".join(f"  #{i} {show_op(op)} -> {r}" for i, op, r in log[-10:])


def test_kernel_reads_whiteouts_opaque_dirs_and_moved_trees(tmp_path, mount_fsd, mount_kernel_overlay):
    """The same in a small hand-made case, where a failure is easy to read."""
    top, bottom = make_layers(tmp_path / "layers", 2)
    write(bottom, "etc/passwd", "root")
    write(bottom, "etc/gone", "x")
    write(bottom, "var/lib/dpkg/status", "installed")
    write(bottom, "var/lib/dpkg/info/a.list", "a")
    write(top, "var/lib/dpkg/info/b.list", "b")
    write(bottom, "opt/old/file", "old")
    lowers = convert_layers([top, bottom], tmp_path / "k")
    upper, work = _dirs(tmp_path)
    fm = mount_fsd(lowers, upper, work)
    m = fm.mnt
    os.unlink(m / "etc/gone")
    os.rename(m / "var/lib/dpkg", m / "var/lib/dpkg.old")  # what apt does
    os.mkdir(m / "var/lib/dpkg")
    write(m, "var/lib/dpkg/status", "new")
    os.unlink(m / "opt/old/file")
    os.rmdir(m / "opt/old")
    os.mkdir(m / "opt/old")  # over a whiteout: opaque
    write(m, "opt/old/new", "new")
    got = snapshot(m)
    fm.unmount()
    kwork = tmp_path / "kwork"
    kwork.mkdir()
    k = mount_kernel_overlay(lowers, upper, kwork)
    assert compare(snapshot(k), got, "kernel on fsd's upper", "fsd") == []
    assert sorted(os.listdir(k / "var/lib/dpkg.old/info")) == ["a.list", "b.list"]
    assert os.listdir(k / "opt/old") == ["new"]
    assert os.listdir(k / "etc") == ["passwd"]
