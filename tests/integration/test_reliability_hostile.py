"""Crafted layer directories given straight to fsd: markers in odd places,
symlinks that point out of the layer, odd names, a 1000-level tree, a
100k-entry directory. fsd answers as the kernel overlay does (where the kernel
can mount the same stack, converted to its marker forms) or with the kernel's
errno; it never follows a link out of a layer, never answers EIO, never dies,
and logs no ERROR (the fsd_log fixture checks the log of every test).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from support import mounts
from support.convert import convert_layers
from support.faults import daemon_pids, fchmodat2, remove_tree
from support.layergen import OPQ_NAME, make_layers, make_opaque, whiteout, write
from support.snapshot import compare, invariant_problems, snapshot
from support.upper_ops import (RENAME_EXCHANGE, apply, dir_times_dropped, errno_of, renameat2, show_op,
                               times_settled)

KERNEL_OPTS = ("redirect_dir=off", "index=off", "metacopy=off")


def _alive(m):
    pids = daemon_pids(m)
    assert pids and all(mounts.alive(p) for p in pids), "the daemon died"


def _upper(tmp_path: Path, name: str = "") -> tuple[Path, Path]:
    upper, work = tmp_path / f"upper{name}", tmp_path / f"work{name}"
    upper.mkdir()
    work.mkdir()
    return upper, work


# -- markers in odd places, odd names: the kernel decides ---------------------------------------

LONG = "L" * 255
NOT_UTF8 = os.fsdecode(b"bad-\xff\xfe-\x80")


def _odd_stack(root: Path) -> list[Path]:
    top, mid, bottom = make_layers(root, 3)
    for d in (bottom, mid):
        write(d, "opq/below", "hidden by the top's opaque dir")
        write(d, "deep/a/b/c/d", "deep")
    write(bottom, "keep/file", "bottom")
    # opaque markers: on a top-layer dir with content below, on a regular file, with values
    # that are not "y" (on a layer's root: see test_opaque_marker_on_a_layer_root)
    make_opaque(top, "opq", "trusted")
    write(top, "opq/own", "top's own")
    write(top, "file-with-opaque", "f")
    os.setxattr(top / "file-with-opaque", "trusted.overlay.opaque", b"y")
    for value, name in ((b"n", "opq-n"), (b"", "opq-empty"), (b"yes", "opq-yes"), (b"Y", "opq-Y")):
        write(bottom, f"{name}/below", "still visible")
        (top / name).mkdir()
        os.setxattr(top / name, "trusted.overlay.opaque", value)
    # .wh..wh..opq as a directory (with content) in a middle layer, and as a file in the bottom
    write(bottom, "opqdir/below", "below")
    write(mid, f"opqdir/{OPQ_NAME}/inside", "inside a marker dir")
    write(mid, "opqdir/mine", "mid")
    write(bottom, f"bottomopq/{OPQ_NAME}", "")
    write(bottom, "bottomopq/x", "x")
    # whiteouts: in the bottom layer, of names that exist nowhere, of a deep tree,
    # inside an opaque dir, with mode bits, both forms
    whiteout(bottom, "nothing-below", "chardev")
    whiteout(mid, "no-such-name", "whfile")
    whiteout(top, "deep", "chardev")
    whiteout(top, "opq/below", "chardev")
    os.mknod(top / "wh-0644", stat.S_IFCHR | 0o644, os.makedev(0, 0))
    write(bottom, "wh-0644", "hidden by a 0644 whiteout")
    write(mid, "keep/file2", "mid")
    whiteout(top, "keep/file", "whfile")
    os.mknod(top / "not-a-whiteout", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    # a dir over a file and a file over a dir, without opaque markers
    write(bottom, "was-file", "file")
    write(mid, "was-file/now-dir", "dir")
    write(bottom, "was-dir/x", "x")
    write(mid, "was-dir", "now a file")
    # names: 255 bytes, newlines, not UTF-8, marker look-alikes, in dirs and files and link targets
    write(mid, f"names/{LONG}", "255")
    write(mid, "names/new\nline", "nl")
    write(mid, f"names/{NOT_UTF8}", "bytes")
    write(mid, f"names/{NOT_UTF8}-dir/{LONG}", "deep 255")
    write(bottom, "names/.wh", "not a marker")
    write(bottom, "names/..wh..x", "not a marker")
    write(bottom, "names/.whx", "not a marker")
    write(bottom, "names/\\back\\slash", "bs")
    os.symlink("target\nwith newline", mid / "names" / "link-nl")
    os.symlink(os.fsdecode(b"\xff\xfe"), mid / "names" / "link-bytes")
    os.symlink("t" * 4095, mid / "names" / "link-4095")
    whiteout(top, "names/new\nline", "chardev")
    write(bottom, "names/" + "W" * 251, "hidden by a 255-byte .wh. name")
    whiteout(top, "names/" + "W" * 251, "whfile")
    return [top, mid, bottom]


def test_odd_markers_and_names_match_the_kernel(tmp_path, mount_fsd, mount_kernel_overlay):
    layers = _odd_stack(tmp_path / "layers")
    k = mount_kernel_overlay(convert_layers(layers, tmp_path / "k"))
    m = mount_fsd(layers)
    expected, got = snapshot(k), snapshot(m.mnt)
    diffs = compare(expected, got, "kernel", "fsd")
    assert not diffs, "odd markers and names: fsd differs from the kernel overlay:\n" + "\n".join(diffs)
    assert invariant_problems(got) == []
    _alive(m)


@pytest.mark.parametrize("where,form", [("top", "trusted"), ("top", "whfile"), ("top", "user"), ("mid", "trusted")])
def test_opaque_marker_on_a_layer_root(tmp_path, mount_fsd, mount_kernel_overlay, where, form):
    """The kernel never treats a layer's root as opaque: everything below stays visible."""
    top, mid, bottom = make_layers(tmp_path / "layers", 3)
    write(bottom, "from-bottom", "b")
    write(bottom, "d/x", "bottom x")
    write(mid, "from-mid", "m")
    write(mid, "d/y", "mid y")
    write(top, "from-top", "t")
    layer = {"top": top, "mid": mid}[where]
    if form == "whfile":
        write(layer, OPQ_NAME, "")
    else:
        os.setxattr(layer, {"trusted": "trusted.overlay.opaque", "user": "user.overlay.opaque"}[form], b"y")
    k = mount_kernel_overlay(convert_layers([top, mid, bottom], tmp_path / "k"))
    m = mount_fsd([top, mid, bottom])
    diffs = compare(snapshot(k), snapshot(m.mnt), "kernel", "fsd")
    assert not diffs, f"opaque marker ({form}) on the {where} layer's root:\n" + "\n".join(diffs)
    _alive(m)


def test_odd_names_through_a_writable_mount(tmp_path, mount_fsd, mount_kernel_overlay):
    """The same operations with odd names on fsd and on the kernel overlay: same results."""
    layers = _odd_stack(tmp_path / "layers")
    kup, kwork = _upper(tmp_path, "-k")
    fup, fwork = _upper(tmp_path, "-f")
    k = mount_kernel_overlay(convert_layers(layers, tmp_path / "k"), kup, kwork, KERNEL_OPTS)
    m = mount_fsd(layers, fup, fwork)
    long_dir = f"names/{NOT_UTF8}-dir"
    ops = [
        ("create", "names/" + "N" * 255, 0o644, b"255 bytes"),
        ("create", "names/" + "N" * 256, 0o644, b"too long"),
        ("mkdir", "names/" + "D" * 256, 0o755),
        ("symlink", "names/" + "S" * 256, "t"),
        ("create", "names/new\nline", 0o644, b"over a whiteout"),
        ("create", f"names/{NOT_UTF8}-2", 0o644, b"bytes"),
        ("rename", f"names/{NOT_UTF8}", "names/" + "R" * 255, 0),
        ("rename", f"{long_dir}/{LONG}", f"{long_dir}/" + "Q" * 256, 0),
        ("unlink", f"{long_dir}/{LONG}"),
        ("rmdir", long_dir),
        ("mkdir", long_dir, 0o755),
        ("write", "names/link-nl", 0, b"through a symlink"),
        ("append", f"names/{LONG}", b"+"),
        ("link", f"names/{LONG}", "names/" + "K" * 255),
        ("unlink", "opq/own"),
        ("rmdir", "opq"),
        ("mkdir", "opq", 0o755),
        ("listdir", "opq"),
        ("unlink", "opqdir/mine"),
        ("rmdir", "opqdir"),
        ("rmdir", "was-file"),
        ("unlink", "was-dir"),
        ("mkdir", "was-dir", 0o700),
        ("listdir", "was-dir"),
        ("create", "wh-0644", 0o600, b"over a 0644 whiteout"),
        ("mkdir", "deep", 0o755),
        ("listdir", "deep"),
        ("listdir", "names"),
    ]
    t0 = time.time_ns() - 10**9
    bad = []
    for op in ops:
        a, b = apply(k, op), apply(m.mnt, op)
        if a != b:
            bad.append(f"{show_op(op)}:\n  kernel {a!r}\n  fsd    {b!r}")
    assert not bad, "odd names on a writable mount:\n" + "\n".join(bad)
    diffs = compare(dir_times_dropped(times_settled(snapshot(k), t0)),
                    dir_times_dropped(times_settled(snapshot(m.mnt), t0)), "kernel", "fsd")
    assert not diffs, "\n".join(diffs)
    _alive(m)


# -- markers the kernel cannot express -----------------------------------------------------------

def test_markers_only_fsd_reads(tmp_path, mount_fsd):
    """`.wh.X` next to X in the same layer, a bare `.wh.`, `.wh..wh..opq` as a
    directory next to content: consistent answers, markers never shown."""
    top, bottom = make_layers(tmp_path / "layers", 2)
    write(bottom, "x/lower-only", "lower")
    write(bottom, "x/both", "lower")
    write(top, "x/both", "top")
    write(top, "x/top-only", "top")
    (top / ".wh.x").write_bytes(b"")  # OCI: the whiteout hides x below; the same layer's x stays
    write(top, ".wh.", "a bare prefix")
    write(top, ".wh.nothing", "a whiteout with content")
    write(bottom, "nothing", "hidden")
    write(top, f"d/{OPQ_NAME}/child", "a marker dir")
    write(top, "d/mine", "mine")
    write(bottom, "d/below", "below")
    m = mount_fsd([top, bottom])
    mnt = m.mnt
    snap = snapshot(mnt)
    assert invariant_problems(snap) == []
    names = set(snap.entries)
    assert {"x", "x/both", "x/top-only", "d", "d/mine"} <= names, sorted(names)
    assert (mnt / "x/both").read_text() == "top"
    shown_markers = [p for p in names if os.path.basename(p).startswith(".wh.")]
    assert not shown_markers, f"markers shown: {shown_markers}"
    assert "nothing" not in names, "a `.wh.` file with content did not hide its target"
    for path in (".wh.", ".wh.x", f"d/{OPQ_NAME}", f"d/{OPQ_NAME}/child", ".wh.nothing"):
        assert errno_of(os.lstat, mnt / path) == "ENOENT", path
    # x/lower-only: OCI says the same layer's whiteout hid it; fuse-overlayfs merges it. Either,
    # but the listing and lookups must agree (checked by invariant_problems above).
    _alive(m)


# -- symlinks that point out of the layer ---------------------------------------------------------

def _outside(root: Path) -> Path:
    out = root / "outside"
    write(out, "dir/file", "outside: must never change")
    write(out, "dir/victim", "outside: must never change")
    os.chmod(out / "dir/file", 0o644)
    os.utime(out / "dir/file", ns=(10**18, 10**18))
    return out


def _outside_state(out: Path):
    return snapshot(out)


@pytest.mark.fuse_deadline(90)
def test_symlinks_out_of_the_layer_are_never_followed(tmp_path, mount_fsd, mount_kernel_overlay):
    out = _outside(tmp_path)
    before = _outside_state(out)
    top, bottom = make_layers(tmp_path / "layers", 2)
    os.symlink(str(out / "dir"), bottom / "abs-dir")
    os.symlink(str(out / "dir/file"), bottom / "abs-file")
    # relative, climbing out: from the layer dir it reaches tmp/outside, from the mount another place
    os.symlink("../../outside/dir", bottom / "rel-dir")
    os.symlink("loop", bottom / "loop")
    write(top, "top-file", "top")
    kup, kwork = _upper(tmp_path, "-k")
    fup, fwork = _upper(tmp_path, "-f")
    k = mount_kernel_overlay(convert_layers([top, bottom], tmp_path / "k"), kup, kwork, KERNEL_OPTS)
    m = mount_fsd([top, bottom], fup, fwork)
    mnt = m.mnt

    for name, target in (("abs-dir", str(out / "dir")), ("rel-dir", "../../outside/dir"), ("loop", "loop")):
        assert stat.S_ISLNK(os.lstat(mnt / name).st_mode)
        assert os.readlink(mnt / name) == target
    assert errno_of(os.open, mnt / "abs-file", os.O_RDONLY | os.O_NOFOLLOW) == "ELOOP"
    assert errno_of(os.stat, mnt / "loop") == "ELOOP"

    # changes to the links themselves (each copies the link up): the same errno as the kernel,
    # and nothing outside changes
    def both(name, fn, *args):
        a, b = errno_of(fn, k / args[0], *args[1:]), errno_of(fn, mnt / args[0], *args[1:])
        return (name, a, b)
    results = [
        both("lchown", lambda p, u, g: os.chown(p, u, g, follow_symlinks=False), "abs-file", 1234, 4321),
        both("lutimes", lambda p, t: os.utime(p, ns=(t, t), follow_symlinks=False), "abs-dir", 2 * 10**18),
        both("fchmodat2 nofollow", fchmodat2, "abs-file", 0o600),
        both("lsetxattr trusted", lambda p: os.setxattr(p, "trusted.x", b"1", follow_symlinks=False), "rel-dir"),
        both("lsetxattr user", lambda p: os.setxattr(p, "user.x", b"1", follow_symlinks=False), "abs-file"),
        both("truncate via an O_NOFOLLOW open", lambda p: os.open(p, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW),
             "abs-file"),
        both("rename a link", os.rename, "abs-dir", "abs-dir2"),
        both("link a link", lambda p: os.link(p, Path(p).parent / "hard", follow_symlinks=False), "abs-file"),
        both("unlink a link", os.unlink, "abs-file"),
        both("rmdir a link to a dir", os.rmdir, "rel-dir"),
    ]
    differ = [r for r in results if r[1] != r[2]]
    assert not differ, f"(call, kernel, fsd): {differ}"

    # exchange a dir and a link to the outside dir, then use handles taken before: fsd must
    # reach the files by their new path, never through the link that now has the dir's name
    write(mnt, "d/file", "inside")
    write(mnt, "d/victim", "inside")
    os.symlink(str(out / "dir"), mnt / "d2")
    dfd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    ffd = os.open(mnt / "d/victim", os.O_RDWR)
    try:
        assert errno_of(renameat2, mnt / "d", mnt / "d2", RENAME_EXCHANGE) == "ok"
        os.pwrite(ffd, b"WRITTEN", 0)
        fd = os.open("file", os.O_WRONLY | os.O_APPEND, dir_fd=dfd)
        os.write(fd, b"+appended through a dir fd taken before the exchange")
        os.close(fd)
        fd = os.open("new-file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
        os.close(fd)
        os.chmod("file", 0o600, dir_fd=dfd)
        os.setxattr(f"/proc/self/fd/{dfd}/file", "user.t", b"1")
    finally:
        os.close(ffd)
        os.close(dfd)
    after = _outside_state(out)
    assert compare(before, after, "before", "after") == [], "fsd changed files outside its layers"
    assert (mnt / "d2/victim").read_bytes().startswith(b"WRITTEN")
    assert (mnt / "d2/file").read_text().endswith("before the exchange")
    assert os.path.lexists(mnt / "d2/new-file") and os.path.lexists(fup / "d2/new-file")
    assert os.readlink(mnt / "d") == str(out / "dir")
    assert invariant_problems(snapshot(mnt)) == []
    _alive(m)


# -- a 1000-level tree ---------------------------------------------------------------------------

DEPTH = 1000
LEVEL = "level"  # 6 bytes a level with the slash: 6000 bytes, more than PATH_MAX


def _deep(layer: Path, leaf: str = "leaf") -> None:
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEPTH):
        os.mkdir(LEVEL, 0o755, dir_fd=fd)
        nfd = os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    wfd = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(wfd, b"at the bottom")
    os.close(wfd)
    os.close(fd)


def _descend(root: Path) -> int:
    """A dirfd on the deepest level, walked one level at a time."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEPTH):
        nfd = os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _at_bottom(root: Path) -> list:
    """Reads and changes at the bottom of the deep tree; comparable results."""
    out = []
    fd = _descend(root)
    try:
        def call(name, fn):
            try:
                out.append((name, fn()))
            except OSError as e:
                out.append((name, errno.errorcode[e.errno]))

        def read(name):
            f = os.open(name, os.O_RDONLY, dir_fd=fd)
            try:
                return os.read(f, 100)
            finally:
                os.close(f)

        def append():
            f = os.open("leaf", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
            os.write(f, b" +appended")
            os.close(f)
            return read("leaf")
        call("listdir", lambda: sorted(os.listdir(fd)))
        call("read", lambda: read("leaf"))
        call("stat", lambda: os.stat("leaf", dir_fd=fd).st_size)
        call("append (copies up 1000 dirs)", append)
        call("create", lambda: os.close(os.open("new", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)))
        call("rename", lambda: os.rename("new", "renamed", src_dir_fd=fd, dst_dir_fd=fd))
        call("mkdir", lambda: os.mkdir("sub", dir_fd=fd))
        call("listdir again", lambda: sorted(os.listdir(fd)))
    finally:
        os.close(fd)
    return out


@pytest.fixture
def deep_dirs():
    """Dirs to remove at the end, after the mounts (pytest's rmtree cannot: too deep)."""
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        remove_tree(d)


@pytest.mark.fuse_deadline(120)
def test_a_1000_level_tree(deep_dirs, tmp_path, mount_fsd, mount_kernel_overlay):
    top, bottom = make_layers(tmp_path / "layers", 2)
    kup, kwork = _upper(tmp_path, "-k")
    fup, fwork = _upper(tmp_path, "-f")
    deep_dirs += [bottom, kup, fup, kwork, fwork]
    _deep(bottom)
    write(top, "other", "x")
    k = mount_kernel_overlay([top, bottom], kup, kwork, KERNEL_OPTS)
    m = mount_fsd([top, bottom], fup, fwork)
    t = time.monotonic()
    got = _at_bottom(m.mnt)
    took = time.monotonic() - t
    expected = _at_bottom(k)
    assert got == expected, f"at the bottom of a {DEPTH}-level tree:\n  kernel {expected}\n  fsd    {got}"
    assert took < 60, f"{took:.0f}s for a few operations at depth {DEPTH}"
    m.unmount()
    m = mount_fsd([top, bottom], fup, fwork)
    fd = _descend(m.mnt)
    try:
        assert sorted(os.listdir(fd)) == ["leaf", "renamed", "sub"]
        f = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(f, 100) == b"at the bottom +appended"
        os.close(f)
    finally:
        os.close(fd)
    _alive(m)


# -- a 100k-entry directory ------------------------------------------------------------------------

HUGE = 100_000


@pytest.fixture(scope="module")
def huge_layer(tmp_path_factory) -> Path:
    layer = tmp_path_factory.mktemp("huge-layer")
    d = layer / "huge"
    d.mkdir()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(HUGE):
            os.close(os.open(f"f{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))
    finally:
        os.close(dfd)
    return layer


@pytest.mark.fuse_deadline(120)
def test_a_100k_entry_directory(tmp_path, huge_layer, mount_fsd):
    top = tmp_path / "top"
    write(top, "huge/from-top", "top")
    whiteout(top, "huge/f000007", "chardev")
    upper, work = _upper(tmp_path)
    m = mount_fsd([top, huge_layer], upper, work)
    huge = m.mnt / "huge"
    t = time.monotonic()
    names = os.listdir(huge)
    took = time.monotonic() - t
    assert len(names) == HUGE and len(set(names)) == HUGE, len(names)
    assert "from-top" in names and "f000007" not in names
    assert took < 30, f"listing {HUGE} entries took {took:.1f}s"
    assert os.lstat(huge / "f099999").st_size == 0
    assert errno_of(os.lstat, huge / "f000007") == "ENOENT"
    # change it: the listing follows
    write(m.mnt, "huge/new", "new")
    os.unlink(huge / "f050000")
    t = time.monotonic()
    with os.scandir(huge) as it:
        again = {e.name for e in it}
    took2 = time.monotonic() - t
    assert len(again) == HUGE and "new" in again and "f050000" not in again
    assert took2 < 30, f"listing {HUGE} entries again took {took2:.1f}s"
    print(f"listing {HUGE} entries: {took:.1f}s, after a change {took2:.1f}s")
    _alive(m)
