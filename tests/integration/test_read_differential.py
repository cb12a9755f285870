"""fsd's read-only merged view against the kernel overlay, and targeted read checks.

The differential tests generate seeded random stacks (tests/support/layergen.py),
mount the kernel overlay on a copy converted to its marker forms and fsd on the
original, and compare the whole merged trees. The kernel is the oracle; the one
thing it does that fsd must not is list whiteouts of a directory that exists
in a single layer (see support/snapshot.py), so fsd is held to "no phantom".

Rerun one seed: pytest tests/integration/test_read_differential.py -k 'seed3'
"""

from __future__ import annotations

import concurrent.futures
import errno
import mmap
import os
import resource
import stat
import subprocess
from pathlib import Path

import pytest

from support import layergen
from support.convert import convert_layers
from support.dirent import Dir
from support.layergen import make_layers, make_opaque, whiteout, write
from support.snapshot import access_as, compare, invariant_problems, snapshot

# (seed, number of layers; None: the generator picks 3..6)
STACKS = [(1, None), (2, None), (3, None), (4, None), (5, None), (6, 1), (7, 2)]
PRIVATE_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")


def _errno(fn, *args, **kw) -> str:
    """The errno name fn raises, or 'ok'."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


def _describe(stack) -> str:
    lines = [f"seed {stack.seed}, layers (top first): {[str(p) for p in stack.layers]}"]
    for kind, items in sorted(stack.features.items()):
        lines.append(f"  {kind}: {items[:4]}")
    return "\n".join(lines)


# -- the generator itself ------------------------------------------------------

def test_generator_is_deterministic_and_covers_every_form(tmp_path, needs_root):
    a = layergen.generate_stack(tmp_path / "a", 11, big_files=0)
    b = layergen.generate_stack(tmp_path / "b", 11, big_files=0)
    assert layergen.missing_features(a) == []
    sa = [snapshot(p) for p in a.layers]
    sb = [snapshot(p) for p in b.layers]
    assert [compare(x, y) for x, y in zip(sa, sb)] == [[]] * len(sa)


def test_converted_copy_means_the_same_to_the_kernel(tmp_path, mount_kernel_overlay):
    """Converting an already converted stack changes nothing the kernel shows."""
    stack = layergen.generate_stack(tmp_path / "stack", 21, big_files=0)
    once = convert_layers(stack.layers, tmp_path / "once")
    twice = convert_layers(once, tmp_path / "twice")
    a = snapshot(mount_kernel_overlay(once))
    b = snapshot(mount_kernel_overlay(twice))
    assert compare(a, b, "once", "twice") == []
    assert len(a.entries) > 100


# -- the differential test -------------------------------------------------------

SOAK = [(seed, None) for seed in range(100, 160)]


@pytest.mark.long
@pytest.mark.parametrize("seed,nlayers", SOAK, ids=[f"seed{s}" for s, _ in SOAK])
def test_merged_tree_matches_kernel_soak(tmp_path, seed, nlayers, mount_fsd, mount_kernel_overlay):
    test_merged_tree_matches_kernel(tmp_path, seed, nlayers, mount_fsd, mount_kernel_overlay)


@pytest.mark.parametrize("seed,nlayers", STACKS, ids=[f"seed{s}" for s, _ in STACKS])
def test_merged_tree_matches_kernel(tmp_path, seed, nlayers, mount_fsd, mount_kernel_overlay):
    stack = layergen.generate_stack(tmp_path / "stack", seed, nlayers)
    before = [snapshot(p, contents=False) for p in stack.layers]
    kmnt = mount_kernel_overlay(convert_layers(stack.layers, tmp_path / "kernel"))
    fm = mount_fsd(stack.layers)

    expected = snapshot(kmnt)
    got = snapshot(fm.mnt)
    diffs = compare(expected, got, "kernel", "fsd")
    assert not diffs, "fsd's merged view differs from the kernel overlay's:\n" + \
        "\n".join(diffs) + "\n" + _describe(stack)
    problems = invariant_problems(got)
    assert not problems, "fsd mount invariants broken:\n" + "\n".join(problems[:40]) + "\n" + _describe(stack)

    for uid, gid in ((1000, 1000), (65534, 65534)):  # permissions as the kernel checks them
        k_access = access_as(kmnt, uid, gid, expected.entries)
        f_access = access_as(fm.mnt, uid, gid, got.entries)
        adiff = [f"{p!r}: kernel {k_access[p]} fsd {f_access[p]}" for p in sorted(k_access)
                 if k_access[p] != f_access[p]]
        assert not adiff, f"uid {uid} (lstat, readdir/read, R_OK, W_OK, X_OK):\n" + "\n".join(adiff[:40])

    warm = snapshot(fm.mnt)  # served largely from the kernel's caches now
    assert compare(got, warm, "cold", "warm") == []
    assert warm.ino == got.ino, "inode numbers changed between two walks"

    fm.unmount()
    after = [snapshot(p, contents=False) for p in stack.layers]
    assert [compare(x, y, "before", "after") for x, y in zip(before, after)] == [[]] * len(before), \
        "mounting fsd read-only changed a lower layer"


def test_read_paths(tmp_path, mount_fsd, mount_kernel_overlay):
    """pread at odd offsets (and past the end), mmap, sendfile out of the mount;
    a sparse file keeps its holes (st_blocks, SEEK_DATA/SEEK_HOLE as the kernel)
    and reads as zeros there."""
    top, bottom = make_layers(tmp_path, 2)
    data = os.urandom(3 * 1024 * 1024 + 123)
    write(bottom, "big", data)
    write(top, "small", b"0123456789")
    with open(top / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(2 * 1024 * 1024)
        f.write(b"data in the middle")
        f.seek(6 * 1024 * 1024)
        f.write(b"and later")
    m = mount_fsd([top, bottom]).mnt
    k = mount_kernel_overlay(convert_layers([top, bottom], tmp_path / "k"))
    assert os.stat(m / "sparse").st_blocks == os.stat(top / "sparse").st_blocks
    seeks = {}
    for root in (m, k):
        sfd = os.open(root / "sparse", os.O_RDONLY)
        try:
            seeks[root] = [_errno(os.lseek, sfd, off, how) if off >= 8 * 1024 * 1024 else
                           os.lseek(sfd, off, how)
                           for off in (0, 4096, 2 * 1024 * 1024 + 5, 3 * 1024 * 1024, 8 * 1024 * 1024)
                           for how in (os.SEEK_DATA, os.SEEK_HOLE)]
        finally:
            os.close(sfd)
    assert seeks[m] == seeks[k], "SEEK_DATA/SEEK_HOLE answers differ from the kernel's"
    fd = os.open(m / "big", os.O_RDONLY)
    try:
        for off, n in ((0, 1), (4095, 2), (131071, 65538), (len(data) - 5, 100), (len(data), 10),
                       (len(data) + 4096, 1)):
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == data
        out = tmp_path / "copy"
        with open(out, "wb") as f:
            assert os.sendfile(f.fileno(), fd, 0, len(data)) == len(data)
        assert out.read_bytes() == data
    finally:
        os.close(fd)
    assert (m / "small").read_bytes() == b"0123456789"
    assert (m / "sparse").read_bytes() == (top / "sparse").read_bytes()  # zeros in the holes


# -- names -----------------------------------------------------------------------

def test_names_longer_than_255_bytes(tmp_path, mount_fsd):
    (lower,) = make_layers(tmp_path, 1)
    name255 = "n" * 255
    write(lower, name255, "max")
    write(lower, f"d/{name255}", "max in d")
    m = mount_fsd([lower]).mnt
    assert (m / name255).read_text() == "max"
    assert (m / "d" / name255).read_text() == "max in d"
    for n in (256, 300, 1024, 1025):
        for parent in (m, m / "d"):
            p = parent / ("n" * n)
            assert _errno(os.lstat, p) == "ENAMETOOLONG", (n, parent)
            assert _errno(os.open, p, os.O_RDONLY) == "ENAMETOOLONG", (n, parent)
    assert _errno(os.lstat, m / ("é" * 128)) == "ENAMETOOLONG"  # 256 bytes, 128 characters


def test_marker_names_cannot_be_looked_up(tmp_path, mount_fsd, mount_kernel_overlay):
    top, mid, bottom = make_layers(tmp_path, 3)
    for name in ("gone", "cgone", "d/x", "e/y", ".whatever", ".wh"):
        write(bottom, name, name)
    write(bottom, ".wh.bottom-marker")  # a whiteout in the bottom layer hides nothing
    whiteout(mid, "gone", "whfile")
    whiteout(mid, "cgone", "chardev")
    whiteout(mid, "never-existed", "whfile")
    make_opaque(top, "d", "whfile")
    write(top, "d/new", "new")
    make_opaque(top, "e", "trusted")
    m = mount_fsd([top, mid, bottom]).mnt
    for rel in (".wh.gone", "gone", "cgone", ".wh.cgone", ".wh.never-existed", "never-existed",
                ".wh.bottom-marker", "bottom-marker", "d/.wh..wh..opq", ".wh..wh..opq",
                "d/x", "e/y", ".wh.", ".wh.d", ".wh..wh.", "d/.wh.new"):
        assert _errno(os.lstat, m / rel) == "ENOENT", rel
        assert _errno(os.open, m / rel, os.O_RDONLY) == "ENOENT", rel
    assert (m / ".whatever").read_text() == ".whatever"
    assert (m / ".wh").read_text() == ".wh"
    assert sorted(os.listdir(m)) == [".wh", ".whatever", "d", "e"]
    assert os.listdir(m / "d") == ["new"]
    assert os.listdir(m / "e") == []
    # and the kernel agrees on the converted copy
    k = mount_kernel_overlay(convert_layers([top, mid, bottom], tmp_path / "k"))
    assert compare(snapshot(k), snapshot(m), "kernel", "fsd") == []


@pytest.mark.parametrize("fmt", layergen.OPAQUE_FORMATS)
def test_no_marker_visible_by_readdir_lookup_or_xattr(tmp_path, mount_fsd, fmt):
    top, bottom = make_layers(tmp_path, 2)
    write(bottom, "o/below", "hidden")
    write(bottom, "w/a", "a")
    write(bottom, "w/b", "b")
    make_opaque(top, "o", fmt)
    write(top, "o/above", "shown")
    os.setxattr(top / "o", "user.visible", b"v")
    for name in layergen.NOISE_XATTRS:
        os.setxattr(top / "o", name, b"y")
        os.setxattr(bottom / "w" / "a", name, b"y")
    whiteout(top, "w/a", "chardev")
    whiteout(top, "w/b", "whfile")
    write(top, "w/c", "c")
    m = mount_fsd([top, bottom]).mnt

    assert os.listdir(m / "o") == ["above"]
    assert os.listdir(m / "w") == ["c"]
    assert os.listxattr(m / "o") == ["user.visible"]
    assert os.getxattr(m / "o", "user.visible") == b"v"
    for name in (*layergen.OPAQUE_XATTRS.values(), *layergen.NOISE_XATTRS):
        assert _errno(os.getxattr, m / "o", name) in ("ENODATA", "EOPNOTSUPP"), name
    for dirpath, dirnames, filenames in os.walk(m):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            assert not n.startswith(".wh."), p
            st = os.lstat(p)
            assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), f"whiteout visible: {p}"
            assert not [x for x in os.listxattr(p, follow_symlinks=False) if x.startswith(PRIVATE_PREFIXES)], p
    assert not [x for x in os.listxattr(m) if x.startswith(PRIVATE_PREFIXES)]


# -- readdir -------------------------------------------------------------------------

def _big_dir_stack(root: Path):
    """A dir 'big' merged from 4 layers, ~3000 visible names; returns (layers, expected names)."""
    layers = make_layers(root, 4)
    expected = set()
    for i, layer in enumerate(layers):
        (layer / "big").mkdir()
        for j in range(700):
            name = f"L{i}-{j:04d}-" + "x" * (j % 40)
            (layer / "big" / name).write_bytes(b"")
            expected.add(name)
        for j in range(100):
            (layer / "big" / f"shared-{j:03d}").write_text(str(i))
    expected |= {f"shared-{j:03d}" for j in range(100)}
    for i, layer in enumerate(layers[:2]):  # the two top layers white out names below them
        for j in range(0, 700, 7):
            name = f"L{i + 2}-{j:04d}-" + "x" * (j % 40)
            whiteout(layer, f"big/{name}", "chardev" if i == 0 else "whfile")
            expected.discard(name)
    return layers, expected


def test_readdir_in_many_calls_keeps_offsets(tmp_path, mount_fsd, mount_kernel_overlay):
    layers, expected = _big_dir_stack(tmp_path / "layers")
    m = mount_fsd(layers).mnt
    big = m / "big"
    assert len(expected) > 2500

    with Dir(big) as d:
        seq = d.read_all()
        names = [n for n, _ in seq]
        assert len(names) == len(set(names)), "readdir returned a name twice"
        assert set(names) == expected | {".", ".."}
        # remember positions along the way, then seek back to each
        d.rewind()
        marks = []
        for i in range(len(seq)):
            if i % 397 == 0:
                marks.append((i, d.tell()))
            assert d.read() == seq[i], f"entry {i} differs after rewinddir"
        assert d.read() is None
        for i, pos in reversed(marks):
            d.seek(pos)
            assert d.read_all() == seq[i:], f"listing after seekdir to entry {i} differs"

    # two streams interleaved on the same directory
    with Dir(big) as d1, Dir(big) as d2:
        a, b = [], []
        while True:
            x, y = d1.read(), d2.read()
            if x is None and y is None:
                break
            a += [x] if x else []
            b += [y] if y else []
        assert a == seq and b == seq

    # scandir's d_ino against lstat, and the kernel's listing of the same dir
    with os.scandir(big) as it:
        for e in it:
            assert e.inode() == os.lstat(e.path).st_ino, e.name
    k = mount_kernel_overlay(convert_layers(layers, tmp_path / "k"))
    assert set(os.listdir(k / "big")) == set(os.listdir(big)) == expected


# -- inodes ------------------------------------------------------------------------

def test_inode_numbers_unique_and_stable(tmp_path, mount_fsd):
    stack = layergen.generate_stack(tmp_path / "stack", 31, big_files=0)
    m = mount_fsd(stack.layers).mnt
    first = snapshot(m, contents=False)
    assert invariant_problems(first) == []
    again = snapshot(m, contents=False)
    assert again.ino == first.ino
    # forget everything the kernel cached: fsd sees FORGETs and fresh LOOKUPs
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2")
    cold = snapshot(m, contents=False)
    changed = {p: (first.ino[p], cold.ino.get(p)) for p in first.ino if cold.ino.get(p) != first.ino[p]}
    assert not changed, f"inode numbers changed after the kernel forgot them: {dict(list(changed.items())[:10])}"
    assert os.lstat(m).st_ino == first.ino["."]


def test_hard_links_in_a_layer_share_an_inode(tmp_path, mount_fsd, mount_kernel_overlay):
    top, bottom = make_layers(tmp_path, 2)
    a = write(bottom, "a", "shared data")
    (bottom / "sub").mkdir()
    os.link(a, bottom / "sub" / "b")
    os.link(a, bottom / "c")
    os.link(a, bottom / "hidden")
    whiteout(top, "hidden", "whfile")
    x = write(top, "x", "top data")
    os.link(x, top / "y")
    write(top, "z", "top data")  # same content, not a link
    m = mount_fsd([top, bottom]).mnt
    ino = {n: os.lstat(m / n).st_ino for n in ("a", "sub/b", "c", "x", "y", "z")}
    assert ino["a"] == ino["sub/b"] == ino["c"]
    assert ino["x"] == ino["y"]
    assert len({ino["a"], ino["x"], ino["z"]}) == 3
    k = mount_kernel_overlay(convert_layers([top, bottom], tmp_path / "k"))
    for n in ("a", "x", "z"):
        assert os.lstat(m / n).st_nlink == os.lstat(k / n).st_nlink, n


# -- deep stacks and long paths ------------------------------------------------------

@pytest.mark.fuse_deadline(90)
def test_200_layers(tmp_path, mount_fsd):
    layers = make_layers(tmp_path / "s", 200)
    for i, layer in enumerate(layers):
        write(layer, f"only{i}", f"only {i}")
        write(layer, f"d/f{i}", f"d {i}")
        write(layer, "shared", f"layer {i}")
    write(layers[199], "bottom.txt", "from the bottom")
    write(layers[100], "mid/deep/file.txt", "from the middle")
    write(layers[150], "mid/deep/below-mid.txt", "also visible")
    whiteout(layers[50], "only150", "whfile")
    whiteout(layers[60], "d/f170", "chardev")
    m = mount_fsd(layers).mnt
    assert (m / "bottom.txt").read_text() == "from the bottom"
    assert (m / "mid/deep/file.txt").read_text() == "from the middle"
    assert sorted(os.listdir(m / "mid/deep")) == ["below-mid.txt", "file.txt"]
    assert (m / "shared").read_text() == "layer 0"
    assert (m / "only199").read_text() == "only 199"
    assert _errno(os.lstat, m / "only150") == "ENOENT"
    assert _errno(os.lstat, m / "d/f170") == "ENOENT"
    assert len(os.listdir(m / "d")) == 199
    assert len([n for n in os.listdir(m) if n.startswith("only")]) == 199


def _mkchain(layer: Path, names: list[str], files: dict[int, tuple[str, bytes]]):
    """Make layer/names[0]/names[1]/... with dirfds only (paths beyond PATH_MAX);
    files maps a depth to (name, data) written in the dir at that depth."""
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for depth, name in enumerate(names, 1):
            try:
                os.mkdir(name, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if depth in files:
                fname, data = files[depth]
                ffd = os.open(fname, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(ffd, data)
                os.close(ffd)
    finally:
        os.close(fd)


def test_paths_near_and_beyond_path_max(tmp_path, mount_fsd, monkeypatch):
    top, bottom = make_layers(tmp_path, 2)
    names = [f"{i:03d}" + "x" * 197 for i in range(30)]  # 200 bytes each; 30 deep is ~6000 bytes
    mnt = mount_fsd.new_mountpoint()
    # the deepest dir that still fits in PATH_MAX as an absolute path, and a file
    # name that makes the path exactly PATH_MAX - 1 bytes (the most open(2) takes)
    near = max(d for d in range(1, 31) if len(str(mnt)) + d * 201 + 10 < 4096)
    near_name = "near-" + "n" * (4095 - len(str(mnt)) - near * 201 - 1 - 5)
    _mkchain(bottom, names, {near: (near_name, b"near PATH_MAX"), 30: ("deep.txt", b"beyond PATH_MAX")})
    _mkchain(top, names[:12], {12: ("top.txt", b"from the top layer")})  # merged dirs along the way
    mount_fsd([top, bottom], mountpoint=mnt)

    near_path = os.path.join(mnt, *names[:near], near_name)
    assert len(near_path) == 4095
    with open(near_path, "rb") as f:
        assert f.read() == b"near PATH_MAX"
    assert os.stat(near_path).st_size == len(b"near PATH_MAX")

    monkeypatch.chdir(mnt)
    for depth, name in enumerate(names, 1):
        os.chdir(name)
        if depth == 12:
            assert sorted(os.listdir(".")) == sorted([names[12], "top.txt"])
    assert os.listdir(".") == ["deep.txt"]
    with open("deep.txt", "rb") as f:
        assert f.read() == b"beyond PATH_MAX"
    os.chdir("../..")
    assert names[29] in os.listdir(names[28])


# -- many at once ------------------------------------------------------------------------

def test_concurrent_walks_agree(tmp_path, mount_fsd):
    """Eight threads walk and read the whole tree at once; each sees the same tree."""
    stack = layergen.generate_stack(tmp_path / "stack", 41, big_files=1)
    m = mount_fsd(stack.layers).mnt
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        snaps = list(pool.map(lambda _: snapshot(m), range(8)))
    for s in snaps[1:]:
        assert compare(snaps[0], s, "first", "other") == []
    assert invariant_problems(snaps[0]) == []


def test_many_files_open_at_once(tmp_path, mount_fsd):
    top, bottom = make_layers(tmp_path, 2)
    for i in range(3000):
        write(bottom if i % 2 else top, f"d{i % 10}/f{i}", f"content {i}")
    m = mount_fsd([top, bottom]).mnt
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 3100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds = []
    try:
        for i in range(3000):
            fds.append(os.open(m / f"d{i % 10}" / f"f{i}", os.O_RDONLY))
        for i, fd in enumerate(fds):
            assert os.pread(fd, 100, 0) == f"content {i}".encode()
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- read-only -----------------------------------------------------------------------

def _write_attempts(m: Path) -> dict[str, str]:
    """Every kind of change, tried on a read-only merged tree; op -> errno name."""
    f, d = m / "file", m / "dir"

    def opn(path, flags):
        os.close(os.open(path, flags, 0o644))

    return {
        "open O_WRONLY": _errno(opn, f, os.O_WRONLY),
        "open O_RDWR": _errno(opn, f, os.O_RDWR),
        "open O_RDONLY|O_TRUNC": _errno(opn, f, os.O_RDONLY | os.O_TRUNC),
        "open O_WRONLY|O_APPEND": _errno(opn, f, os.O_WRONLY | os.O_APPEND),
        "create": _errno(opn, m / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
        "create in lower dir": _errno(opn, d / "new", os.O_WRONLY | os.O_CREAT),
        "mkdir": _errno(os.mkdir, m / "newdir"),
        "rmdir": _errno(os.rmdir, d / "empty"),
        "unlink": _errno(os.unlink, f),
        "rename": _errno(os.rename, f, m / "renamed"),
        "rename dir": _errno(os.rename, d, m / "renamed-dir"),
        "symlink": _errno(os.symlink, "x", m / "newlink"),
        "link": _errno(os.link, f, m / "newhard"),
        "mkfifo": _errno(os.mkfifo, m / "newfifo"),
        "chmod": _errno(os.chmod, f, 0o600),
        "chown": _errno(os.chown, f, 1, 1),
        "utime": _errno(os.utime, f, (1, 1)),
        "truncate": _errno(os.truncate, f, 0),
        "setxattr": _errno(os.setxattr, f, "user.new", b"1"),
        "removexattr": _errno(os.removexattr, f, "user.old"),
    }


def test_writes_without_upperdir_are_erofs(tmp_path, mount_fsd, mount_kernel_overlay):
    top, bottom = make_layers(tmp_path, 2)
    f = write(bottom, "file", "content", 0o644)
    os.setxattr(f, "user.old", b"1")
    (bottom / "dir" / "empty").mkdir(parents=True)
    write(top, "dir/other", "x")
    before = [snapshot(p) for p in (top, bottom)]
    m = mount_fsd([top, bottom]).mnt
    k = mount_kernel_overlay(convert_layers([top, bottom], tmp_path / "k"))
    got, expected = _write_attempts(m), _write_attempts(k)
    assert got == expected
    assert set(got.values()) == {"EROFS"}
    assert (m / "file").read_text() == "content"
    assert [compare(a, snapshot(p)) for a, p in zip(before, (top, bottom))] == [[], []]


def test_statfs(tmp_path, mount_fsd):
    top, bottom = make_layers(tmp_path, 2)
    write(bottom, "f", "x")
    m = mount_fsd([top, bottom]).mnt
    got, real = os.statvfs(m), os.statvfs(top)
    assert got.f_namemax == 255
    assert got.f_bsize > 0 and got.f_frsize > 0
    assert got.f_blocks * got.f_frsize == real.f_blocks * real.f_frsize
    assert got.f_files == real.f_files
    assert got.f_flag & os.ST_RDONLY
