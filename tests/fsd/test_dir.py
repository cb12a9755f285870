"""Name operations (fsd/dir.py), in-process: create, mkdir, mknod, symlink,
link, unlink, rmdir and rename on the merged view, the whiteouts and opaque
directories they leave in the upper (in both whiteout formats), the errnos of
the kernel overlay, and the journal of a directory move."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct

import pyfuse3
import pytest
import trio
from harness import Fields, fails

from support.layergen import whiteout, write

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


@pytest.fixture(params=["chardev", "file"])
def wh(request):
    """The whiteout format fsd is told to write (`-o whiteout=`)."""
    return request.param


def whited_out(upper, rel: str, fmt: str) -> bool:
    """Whether the upper holds a whiteout of rel in format fmt."""
    parent, _, name = rel.rpartition("/")
    where = upper / parent
    if fmt == "chardev":
        st = os.lstat(where / name) if os.path.lexists(where / name) else None
        return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    return os.path.lexists(where / (".wh." + name)) and not os.path.lexists(where / name)


def is_opaque(path) -> bool:
    names = os.listxattr(path)
    return any(n.endswith("overlay.opaque") for n in names) or (path / ".wh..wh..opq").exists()


# --- creating ------------------------------------------------------------------------------

async def test_new_objects_land_in_the_upper_with_their_parents(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/old", "x")
    fs = await overlay.mount()
    await fs.create("d/file", b"data", mode=0o640)
    await fs.mkdir("d/dir", mode=0o750)
    await fs.symlink("d/file", "d/link")
    await fs.mknod("d/fifo", stat.S_IFIFO | 0o600)
    up = overlay.upper / "d"
    assert (up / "file").read_bytes() == b"data"
    assert stat.S_IMODE(os.lstat(up / "file").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(up / "dir").st_mode) == 0o750
    assert os.readlink(up / "link") == "d/file"
    assert stat.S_ISFIFO(os.lstat(up / "fifo").st_mode)
    assert sorted(await fs.listdir("d")) == [b"dir", b"fifo", b"file", b"link", b"old"]


async def test_the_umask_is_the_callers(overlay):
    overlay.lowers(1)
    fs = (await overlay.mount()).as_user(os.getuid(), os.getgid(), umask=0o077)
    await fs.create("f", mode=0o666)
    assert stat.S_IMODE(os.lstat(overlay.upper / "f").st_mode) == 0o600


def minimal_acl(user: int, group: int, other: int) -> bytes:
    """A system.posix_acl_* value of three entries (the kernel's xattr format)."""
    entries = ((0x01, user), (0x04, group), (0x20, other))  # USER_OBJ, GROUP_OBJ, OTHER
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in entries)


async def test_a_new_object_takes_the_group_its_directory_gives_now(overlay, needs_root):
    """What a directory gives new objects is read once, then kept: a chown or a
    chmod of the directory makes the next one take what it gives now."""
    overlay.lowers(1)
    fs = await overlay.mount()
    await fs.mkdir("d", mode=0o2775)
    await fs.chown("d", 0, 4321)
    await fs.create("d/a")
    assert (await fs.stat("d/a")).st_gid == 4321
    await fs.chown("d", 0, 4322)
    assert (await fs.stat("d")).st_mode & stat.S_ISGID  # a directory keeps it through a chown
    await fs.create("d/b")
    await fs.mkdir("d/sub")
    assert (await fs.stat("d/b")).st_gid == (await fs.stat("d/sub")).st_gid == 4322
    assert (await fs.stat("d/sub")).st_mode & stat.S_ISGID
    await fs.chmod("d", 0o775)  # g-s
    await fs.create("d/c")
    await fs.mkdir("d/sub2")
    assert (await fs.stat("d/c")).st_gid == (await fs.stat("d/sub2")).st_gid == fs.ctx.gid
    assert not (await fs.stat("d/sub2")).st_mode & stat.S_ISGID
    await fs.chmod("d", 0o2775)
    await fs.create("d/e")
    assert (await fs.stat("d/e")).st_gid == 4322


async def test_a_new_object_takes_the_default_acl_its_directory_has_now(overlay):
    """A default ACL set or removed after objects were made in the directory
    replaces the umask, or no longer does, for the next one."""
    overlay.lowers(1)
    fs = await overlay.mount()
    await fs.mkdir("d", mode=0o777)
    await fs.create("d/a", mode=0o666)
    assert stat.S_IMODE((await fs.stat("d/a")).st_mode) == 0o666 & ~fs.ctx.umask
    await fs.setxattr("d", "system.posix_acl_default", minimal_acl(7, 7, 7))
    await fs.create("d/b", mode=0o666)
    assert stat.S_IMODE((await fs.stat("d/b")).st_mode) == 0o666
    await fs.removexattr("d", "system.posix_acl_default")
    await fs.create("d/c", mode=0o666)
    assert stat.S_IMODE((await fs.stat("d/c")).st_mode) == 0o666 & ~fs.ctx.umask


async def test_a_name_that_exists_in_any_layer_is_taken(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "f", "x")
    (bottom / "d").mkdir()
    fs = await overlay.mount()
    await fs.create("mine")
    for name in ("f", "d", "mine"):
        with fails(errno.EEXIST):
            await fs.create(name)
        with fails(errno.EEXIST):
            await fs.mkdir(name)
        with fails(errno.EEXIST):
            await fs.symlink("x", name)


async def test_a_char_device_0_0_is_a_whiteout_and_cannot_be_made(overlay):
    overlay.lowers(1)
    fs = await overlay.mount()
    with fails(errno.EPERM):
        await fs.mknod("w", stat.S_IFCHR | 0o600, os.makedev(0, 0))


async def test_a_device_node(overlay, needs_root):
    overlay.lowers(1)
    fs = await overlay.mount()
    await fs.mknod("null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert os.lstat(overlay.upper / "null").st_rdev == os.makedev(1, 3)


async def test_a_file_made_where_a_whiteout_is_replaces_it(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "lower")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("f")
    assert whited_out(overlay.upper, "f", wh)
    await fs.create("f", b"new")
    assert await fs.read("f") == b"new"
    assert not os.path.lexists(overlay.upper / ".wh.f")


async def test_a_directory_made_where_a_whiteout_is_is_opaque(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/under", "lower")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("d/under")
    await fs.rmdir("d")
    assert whited_out(overlay.upper, "d", wh)
    await fs.mkdir("d")
    assert is_opaque(overlay.upper / "d")
    assert await fs.listdir("d") == []
    await fs.forget_all()
    fs = await overlay.remount(fs, f"whiteout={wh}")
    assert await fs.listdir("d") == []


# --- removing ------------------------------------------------------------------------------

async def test_removing_a_lower_name_leaves_a_whiteout(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    (bottom / "e").mkdir()
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("d/f")
    await fs.rmdir("e")
    assert whited_out(overlay.upper, "d/f", wh)
    assert whited_out(overlay.upper, "e", wh)
    assert await fs.listdir("d") == []
    fs = await overlay.remount(fs, f"whiteout={wh}")
    assert sorted(await fs.listdir("")) == [b"d"]


def _shared_whiteout(overlay):
    return os.lstat(overlay.work / "fsd" / "whiteout")


async def test_whiteouts_are_links_of_one_shared_whiteout(overlay):
    """As the kernel overlay's (ovl_whiteout): a link costs the upper's
    filesystem no inode, a mknod does."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/a", "x")
    write(bottom, "d/b", "x")
    write(bottom, "f", "x")
    (bottom / "e").mkdir()
    fs = await overlay.mount("whiteout=chardev")
    await fs.unlink("d/a")  # a whiteout made at the name
    await fs.unlink("d/b")
    await fs.rmdir("e")
    await fs.write("f", b"y")
    await fs.unlink("f")  # one renamed over the copied-up file
    shared = _shared_whiteout(overlay)
    assert stat.S_ISCHR(shared.st_mode) and shared.st_rdev == 0
    for rel in ("d/a", "d/b", "e", "f"):
        assert whited_out(overlay.upper, rel, "chardev")
        assert os.lstat(overlay.upper / rel).st_ino == shared.st_ino
    assert shared.st_nlink == 5
    assert await fs.listdir("d") == [] and await fs.listdir("") == [b"d"]


def _refuse_links_of_the_shared_whiteout(monkeypatch, errno_: int, times: int) -> list[bytes]:
    """Make the next `times` links of the shared whiteout fail with errno_;
    the destinations of every link of it tried."""
    from fsd.layer import Layer
    tried, link = [], Layer.link

    def refusing(self, src_rel, dst, dst_rel):
        if src_rel == b"whiteout":
            tried.append(dst_rel)
            if len(tried) <= times:
                raise OSError(errno_, os.strerror(errno_))
        return link(self, src_rel, dst, dst_rel)
    monkeypatch.setattr(Layer, "link", refusing)
    return tried


async def test_a_shared_whiteout_at_its_link_limit_is_made_anew(overlay, monkeypatch):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/a", "x")
    write(bottom, "d/b", "x")
    fs = await overlay.mount("whiteout=chardev")
    await fs.unlink("d/a")
    first = _shared_whiteout(overlay)
    _refuse_links_of_the_shared_whiteout(monkeypatch, errno.EMLINK, 1)
    await fs.unlink("d/b")
    second = _shared_whiteout(overlay)
    assert second.st_ino != first.st_ino
    assert os.lstat(overlay.upper / "d" / "a").st_ino == first.st_ino  # still a whiteout
    assert os.lstat(overlay.upper / "d" / "b").st_ino == second.st_ino
    assert await fs.listdir("d") == []


async def test_where_links_of_a_whiteout_are_refused_each_is_made_alone(overlay, monkeypatch):
    (bottom,) = overlay.lowers(1)
    for name in ("a", "b", "c"):
        write(bottom, "d/" + name, "x")
    fs = await overlay.mount("whiteout=chardev")
    tried = _refuse_links_of_the_shared_whiteout(monkeypatch, errno.EPERM, 1)
    for name in ("a", "b", "c"):
        await fs.unlink("d/" + name)
    assert tried == [b"d/a"]  # not tried again
    inos = {os.lstat(overlay.upper / "d" / name).st_ino for name in ("a", "b", "c")}
    assert len(inos) == 3
    assert all(whited_out(overlay.upper, "d/" + name, "chardev") for name in ("a", "b", "c"))
    assert await fs.listdir("d") == []


async def test_removing_a_lower_name_the_kernel_looked_up_reads_no_lower_object(overlay, monkeypatch):
    """The kernel looks a name up before it removes it: its node is found by
    name, not by an lstat of the lower object again."""
    from fsd.layer import UPPER, Layer
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    write(bottom, "d/g", "x")
    (bottom / "d" / "e").mkdir()
    fs = await overlay.mount()
    await fs.create("d/new")  # d copied up: what follows changes only the upper
    for name in ("f", "e"):
        await fs.stat("d/" + name)
    read, lstat = [], Layer.lstat

    def recording(self, rel):
        if self.index != UPPER:
            read.append(rel)
        return lstat(self, rel)
    monkeypatch.setattr(Layer, "lstat", recording)
    await fs.unlink("d/f")
    await fs.rmdir("d/e")
    assert read == []
    await fs.unlink("d/g")  # never looked up: found through the lowers
    assert await fs.listdir("d") == [b"new"]
    for rel in ("d/f", "d/e", "d/g"):
        assert whited_out(overlay.upper, rel, "chardev")


async def test_a_lower_name_replaced_since_its_lookup_is_removed_as_it_is_now(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "lower")
    write(bottom, "d/g", "renamed")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.stat("d/f")
    await fs.rename("d/g", "d/f")
    await fs.unlink("d/f")
    assert whited_out(overlay.upper, "d/f", wh) and whited_out(overlay.upper, "d/g", wh)
    assert await fs.listdir("d") == []
    with fails(errno.ENOENT):
        await fs.unlink("d/f")


async def test_removing_an_upper_only_name_leaves_nothing(overlay, wh):
    overlay.lowers(1)
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.mkdir("d")
    await fs.create("d/f")
    await fs.unlink("d/f")
    await fs.rmdir("d")
    assert os.listdir(overlay.upper) == []


async def test_removing_a_copied_up_name_leaves_a_whiteout(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.write("f", b"y")
    await fs.unlink("f")
    assert whited_out(overlay.upper, "f", wh)
    with fails(errno.ENOENT):
        await fs.lookup("f")


async def test_removal_errnos(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "full/f", "x")
    write(bottom, "file", "x")
    fs = await overlay.mount()
    with fails(errno.EISDIR):
        await fs.unlink("full")
    with fails(errno.ENOTDIR):
        await fs.rmdir("file")
    with fails(errno.ENOTEMPTY):
        await fs.rmdir("full")
    with fails(errno.ENOENT):
        await fs.unlink("nothing")


async def test_a_merged_directory_emptied_in_the_view_can_be_removed(overlay, wh):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/a", "x")
    write(top, "d/b", "y")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.create("d/c")
    with fails(errno.ENOTEMPTY):
        await fs.rmdir("d")
    for name in ("a", "b", "c"):
        await fs.unlink("d/" + name)
    await fs.rmdir("d")
    assert whited_out(overlay.upper, "d", wh)
    assert await fs.listdir("") == []


async def test_a_whiteout_file_whose_name_would_be_too_long_is_refused_first(overlay):
    (bottom,) = overlay.lowers(1)
    name, dirname = "n" * 252, "d" * 253
    write(bottom, name, "x")
    write(bottom, dirname + "/f", "x")
    fs = await overlay.mount("whiteout=file")
    with fails(errno.ENAMETOOLONG):
        await fs.unlink(name)
    await fs.unlink(dirname + "/f")
    with fails(errno.ENAMETOOLONG):
        await fs.rmdir(dirname)
    assert sorted(await fs.listdir("")) == sorted([name.encode(), dirname.encode()])


# --- links ---------------------------------------------------------------------------------

async def test_a_hard_link_to_a_lower_file(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    attr = await fs.link("f", "g")
    assert attr.st_ino == await fs.ino("f")
    assert attr.st_nlink == 2
    assert os.lstat(overlay.upper / "f").st_ino == os.lstat(overlay.upper / "g").st_ino
    with fails(errno.EEXIST):
        await fs.link("f", "g")
    await fs.mkdir("d")
    with fails(errno.EPERM):
        await fs.link("d", "d2")


async def test_a_hard_link_made_where_a_whiteout_is(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    write(bottom, "old", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("old")
    await fs.link("f", "old")
    assert await fs.read("old") == b"x"
    assert await fs.ino("old") == await fs.ino("f")


async def test_unlinking_one_name_of_a_file_keeps_the_others(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount()
    await fs.unlink("a")
    assert await fs.read("b") == b"linked"
    assert (await fs.stat("b")).st_nlink == 1, "copied up first, as the kernel with index=on"


# --- rename --------------------------------------------------------------------------------

async def test_renaming_a_lower_file_copies_it_and_whites_out_the_old_name(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    ino = await fs.ino("a")
    await fs.rename("a", "b")
    assert await fs.read("b") == b"x"
    assert await fs.ino("b") == ino
    assert whited_out(overlay.upper, "a", wh)
    with fails(errno.ENOENT):
        await fs.lookup("a")


async def test_rename_replaces_the_destination(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "a")
    write(bottom, "b", "b")
    (bottom / "d1").mkdir()
    write(bottom, "d2/gone", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.rename("a", "b")
    assert await fs.read("b") == b"a"
    assert sorted(await fs.listdir("")) == [b"b", b"d1", b"d2"]
    await fs.unlink("d2/gone")
    await fs.rename("d1", "d2")
    assert sorted(await fs.listdir("")) == [b"b", b"d2"]


async def test_renaming_onto_a_whited_out_name_replaces_the_whiteout(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "a")
    write(bottom, "b", "b")
    write(bottom, "d/x", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("b")
    await fs.rename("a", "b")
    await fs.unlink("d/x")
    await fs.rmdir("d")
    await fs.mkdir("new")
    await fs.create("new/y")
    await fs.rename("new", "d")
    for _ in range(2):
        assert sorted(await fs.listdir("")) == [b"b", b"d"]
        assert await fs.read("b") == b"a"
        assert await fs.listdir("d") == [b"y"]
        fs = await overlay.remount(fs, f"whiteout={wh}")


async def test_an_unlinked_open_file_lives_on_through_its_handle(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "lower")
    fs = await overlay.mount()
    ino = await fs.ino("f")
    fh = await fs.open("f", os.O_RDWR)
    await fs.unlink("f")
    await fs.ops.write(fh, 0, b"LOWER!")
    size = pyfuse3.EntryAttributes()
    size.st_size = 3
    await fs.ops.setattr(ino, size, Fields(update_size=True), fh, fs.ctx)
    attr = await fs.ops.getattr(ino, fs.ctx)
    assert (attr.st_nlink, attr.st_size) == (0, 3)
    assert await fs.read_fh(fh, 0, 10) == b"LOW"
    await fs.ops.release(fh)
    assert await fs.listdir("") == []


async def test_rename_errnos(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    write(bottom, "g", "y")
    write(bottom, "full/x", "x")
    (bottom / "empty").mkdir()
    fs = await overlay.mount()
    with fails(errno.EEXIST):
        await fs.rename("f", "g", RENAME_NOREPLACE)
    with fails(errno.EISDIR):
        await fs.rename("f", "empty")
    with fails(errno.ENOTDIR):
        await fs.rename("empty", "f")
    with fails(errno.ENOTEMPTY):
        await fs.rename("empty", "full")
    with fails(errno.EINVAL):
        await fs.rename("f", "h", RENAME_WHITEOUT)
    with fails(errno.EINVAL):
        await fs.rename("f", ".wh.h")
    with fails(errno.ENAMETOOLONG):
        await fs.rename("f", "n" * 256)
    with fails(errno.ENOENT):
        await fs.rename("nothing", "h")
    with fails(errno.ENOENT):
        await fs.rename("f", "h", RENAME_EXCHANGE)
    assert await fs.read("f") == b"x" and await fs.read("g") == b"y"


async def test_a_rename_that_cannot_white_out_the_old_name_changes_nothing(overlay):
    (bottom,) = overlay.lowers(1)
    name = "n" * 252
    write(bottom, name, "x")
    fs = await overlay.mount("whiteout=file")
    with fails(errno.ENAMETOOLONG):
        await fs.rename(name, "short")
    assert await fs.listdir("") == [name.encode()]
    assert not os.path.lexists(overlay.upper / "short")


async def test_rename_noreplace_to_a_free_name(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount()
    await fs.rename("f", "h", RENAME_NOREPLACE)
    assert await fs.read("h") == b"x"


async def test_rename_exchange_swaps_two_names(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "lower")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.create("b", b"upper")
    await fs.mkdir("d")
    ino_a, ino_b = await fs.ino("a"), await fs.ino("b")
    await fs.rename("a", "b", RENAME_EXCHANGE)
    assert (await fs.read("a"), await fs.read("b")) == (b"upper", b"lower")
    assert (await fs.ino("a"), await fs.ino("b")) == (ino_b, ino_a)
    await fs.rename("a", "d", RENAME_EXCHANGE)
    assert stat.S_ISDIR((await fs.stat("a")).st_mode)
    assert await fs.read("d") == b"upper"


async def test_rename_exchange_with_a_merged_directory_is_exdev(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "merged/f", "x")
    fs = await overlay.mount()
    await fs.mkdir("mine")
    with fails(errno.EXDEV):
        await fs.rename("merged", "mine", RENAME_EXCHANGE)


async def test_renaming_two_names_of_one_file_does_nothing(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount()
    await fs.rename("a", "b")
    assert sorted(await fs.listdir("")) == [b"a", b"b"]


async def test_an_upper_directory_renamed_over_a_lower_name_is_made_opaque(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/under", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("d/under")
    await fs.rmdir("d")
    await fs.mkdir("new")
    await fs.create("new/mine")
    await fs.rename("new", "d")
    assert await fs.listdir("d") == [b"mine"]
    assert is_opaque(overlay.upper / "d")


async def test_renaming_a_merged_directory_moves_its_whole_tree(overlay, wh):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/low", "low")
    write(bottom, "d/sub/deep", "deep")
    write(top, "d/top", "top")
    write(bottom, "d/gone", "gone")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("d/gone")
    await fs.create("d/new", b"new")
    inos = {n: await fs.ino("d/" + n) for n in ("low", "sub", "sub/deep", "top", "new")}
    dir_ino = await fs.ino("d")
    await fs.rename("d", "e")
    with fails(errno.ENOENT):
        await fs.lookup("d")
    assert whited_out(overlay.upper, "d", wh)
    assert sorted(await fs.listdir("e")) == [b"low", b"new", b"sub", b"top"]
    assert await fs.read("e/sub/deep") == b"deep"
    assert is_opaque(overlay.upper / "e")
    assert await fs.ino("e") == dir_ino
    assert {n: await fs.ino("e/" + n) for n in inos} == inos
    await fs.forget_all()
    fs = await overlay.remount(fs, f"whiteout={wh}")
    assert await fs.ino("e") == dir_ino
    assert {n: await fs.ino("e/" + n) for n in inos} == inos


async def test_a_merged_directory_moved_with_hard_links_inside_and_out(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/a", "linked")
    os.link(bottom / "d" / "a", bottom / "outside")
    fs = await overlay.mount()
    await fs.rename("d", "e")
    await fs.write("e/a", b"L")
    assert await fs.read("outside") == b"Linked"
    assert await fs.ino("outside") == await fs.ino("e/a")


async def test_a_merged_directory_renamed_over_an_empty_directory(overlay, wh):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    write(bottom, "target/gone", "x")
    fs = await overlay.mount(f"whiteout={wh}")
    await fs.unlink("target/gone")
    await fs.rename("d", "target")
    assert await fs.listdir("target") == [b"f"]
    assert sorted(await fs.listdir("")) == [b"target"]


async def test_a_merged_directory_moved_into_a_removed_directory_leaves_no_copy(overlay):
    """The kernel sends no rename into a removed directory (its locks order
    them, and it checks), but concurrent requests in-process do, and a daemon
    should not depend on it: the move of a merged directory into one just
    removed failed ENOENT only once its tree was copied, and left the copy in
    the work area."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    fs = await overlay.mount()
    await fs.mkdir("new")
    new = await fs.ino("new")
    assert await fs.listdir("new") == []
    await fs.rmdir("new")
    with fails(errno.ENOENT):
        await fs.ops.rename(pyfuse3.ROOT_INODE, b"d", new, b"x", 0, fs.ctx)
    assert await fs.listdir("") == [b"d"]
    assert os.listdir(overlay.work / "fsd" / "tmp") == []


async def test_a_merged_directory_moved_below_itself_is_einval(overlay):
    """The kernel refuses this itself, but concurrent requests in-process can
    send it (each rename checked on names another one then moved): the tree
    was copied below itself, then removed with the old name, and the node of
    the directory became its own ancestor (every path of it, a loop)."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "a/b/f", "x")
    fs = await overlay.mount()
    b = await fs.ino("a/b")
    with fails(errno.EINVAL):
        await fs.ops.rename(pyfuse3.ROOT_INODE, b"a", b, b"x", 0, fs.ctx)
    assert await fs.read("a/b/f") == b"x"


async def test_a_merged_directory_whose_old_name_cannot_be_whited_out_is_not_moved(overlay):
    (bottom,) = overlay.lowers(1)
    name = "d" * 252
    write(bottom, name + "/f", "x")
    fs = await overlay.mount("whiteout=file")
    try:
        with fails(errno.ENAMETOOLONG):
            await fs.rename(name, "short")
        assert await fs.listdir("") == [name.encode()]
        overlay.unmount(fs)
        fs = await overlay.mount("whiteout=file")
        assert await fs.listdir("") == [name.encode()]
    finally:
        (overlay.work / "fsd" / "moving").unlink(missing_ok=True)  # so that the fsck judges the rest


def origin_of(path) -> bytes:
    """The inode number fsd keeps in an upper object's xattr."""
    names = [n for n in os.listxattr(path) if n.endswith("overlay.fsd.ino")]
    assert len(names) == 1, names
    return os.getxattr(path, names[0])


async def test_a_move_cut_short_after_the_new_tree_was_placed_is_finished_at_mount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    fs = await overlay.mount("whiteout=file")
    await fs.rename("d", "e")
    overlay.unmount(fs)
    # Back to the moment between placing e and removing d: d visible again, journal there.
    os.unlink(overlay.upper / ".wh.d")
    key = int(origin_of(overlay.upper / "e"))
    journal = {"src": b"d".hex(), "dst": b"e".hex(), "key": key}
    (overlay.work / "fsd" / "moving").write_text(json.dumps(journal))
    fs = await overlay.mount("whiteout=file")
    assert not (overlay.work / "fsd" / "moving").exists()
    assert await fs.listdir("") == [b"e"]
    assert await fs.read("e/f") == b"x"


async def test_a_journal_cut_short_while_written_is_removed_at_mount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    overlay.unmount(await overlay.mount())
    # what a crash while the journal was written leaves: a part of it in tmp/
    half = overlay.work / "fsd" / "tmp" / "0"
    half.write_text('{"src": "64", "d')
    fs = await overlay.mount()
    assert await fs.listdir("") == [b"d"]
    assert not half.exists()
    assert not (overlay.work / "fsd" / "moving").exists()


async def test_a_move_cut_short_before_the_new_tree_was_placed_leaves_the_old_one(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "x")
    overlay.unmount(await overlay.mount())
    journal = {"src": b"d".hex(), "dst": b"e".hex(), "key": 12345}
    (overlay.work / "fsd" / "moving").write_text(json.dumps(journal))
    write(overlay.work / "fsd" / "tmp", "0/f", "the half-built tree")
    fs = await overlay.mount()
    assert not (overlay.work / "fsd" / "moving").exists()
    assert await fs.listdir("") == [b"d"]
    assert await fs.read("d/f") == b"x"


async def test_a_directory_move_tells_the_kernel_the_attributes_inside_changed(overlay, monkeypatch):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/sub/f", "lower")
    fs = await overlay.mount()
    await fs.create("d/sub/new", b"upper")  # moved as a hard link of itself, then unlinked
    # The order of events, made certain without timing: once the move's tree
    # copy is done, a stat (the kernel keeps its answer) sees the file with the
    # copy's link too; then the move goes on.
    real_run_sync = trio.to_thread.run_sync
    tree_copied, mover_may_go = trio.Event(), trio.Event()
    tasks = {}

    async def run_sync_in_order(fn, *args, **kw):
        result = await real_run_sync(fn, *args, **kw)
        if trio.lowlevel.current_task() is tasks.get("mover"):
            tree_copied.set()
            await mover_may_go.wait()
        return result

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_in_order)

    async def mover():
        tasks["mover"] = trio.lowlevel.current_task()
        await fs.rename("d", "e")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mover)
        await tree_copied.wait()
        during = await fs.stat("d/sub/new")
        inodes = {await fs.ino(p) for p in ("d", "d/sub", "d/sub/f")} | {during.st_ino}
        overlay.session.invalidated_inodes.clear()
        mover_may_go.set()
    assert during.st_nlink == 2
    assert (await fs.stat("e/sub/new")).st_nlink == 1
    told = {ino for ino, attr_only in overlay.session.invalidated_inodes if attr_only}
    assert inodes <= told, f"the kernel keeps the attributes of {sorted(inodes - told)} from before the move"


async def test_an_inode_held_by_the_kernel_reaches_its_object_after_a_rename_above_it(overlay):
    """Requests on an inode find its object where it is now: after its
    directory, a directory above it, or the object itself moved, and through
    the name a hard link was last looked up by (paths are kept between
    requests, so each of these must drop them)."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "a/b/f", "lower")
    fs = await overlay.mount()
    ino = await fs.ino("a/b/f")
    assert (await fs.ops.getattr(ino, fs.ctx)).st_size == 5
    await fs.mkdir("top")
    await fs.mkdir("top/sub")
    await fs.create("top/sub/g", b"upper")
    g = await fs.ino("top/sub/g")
    assert (await fs.ops.getattr(g, fs.ctx)).st_size == 5
    await fs.rename("top", "moved")  # a directory above g
    fh = (await fs.ops.open(g, os.O_RDWR, fs.ctx)).fh
    await fs.ops.write(fh, 5, b"+", fs.ctx)
    await fs.ops.release(fh)
    assert (await fs.ops.getattr(g, fs.ctx)).st_size == 6
    assert await fs.read("moved/sub/g") == b"upper+"
    await fs.rename("moved/sub/g", "h")  # the object itself
    assert (await fs.ops.getattr(g, fs.ctx)).st_size == 6
    await fs.link("h", "moved/h2")
    await fs.lookup("moved/h2")  # its path is now that of this name
    await fs.unlink("h")
    assert (await fs.ops.getattr(g, fs.ctx)).st_size == 6
    await fs.rename("a", "c")  # a merged directory above a lower file
    fh = (await fs.ops.open(ino, os.O_RDONLY, fs.ctx)).fh
    assert await fs.read_fh(fh, 0, 10) == b"lower"
    await fs.ops.release(fh)


# --- the entry a new object's reply carries --------------------------------------------------------

@pytest.mark.parametrize("options", ["", "xattr_permissions=2"])
async def test_the_entry_of_a_new_object_is_what_a_lookup_then_finds(overlay, options):
    """create, mkdir, mknod and symlink reply with the stat they took while making
    the object (after its owner and mode were set), not a fresh one: it must be
    what a later lookup finds, also when the owner went through chown, the
    override xattr or a chmod, and for a name made over a whiteout."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "gone", "x")
    fs = await overlay.mount(options)
    await fs.unlink("gone")
    user = fs.as_user(1234, 5678, umask=0)
    made = {
        "f": await user.create("f", mode=0o4755),
        "d": await user.mkdir("d", 0o2700),
        "p": await user.mknod("p", stat.S_IFIFO | 0o640),
        "l": await user.symlink("f", "l"),
        "gone": await user.create("gone", mode=0o600),
    }
    await fs.forget_all()
    for name, attr in made.items():
        found = await fs.stat(name)
        fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns")
        assert [getattr(attr, f) for f in fields] == [getattr(found, f) for f in fields], name
