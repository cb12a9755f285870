"""Lookup through the stack (fsd/namei.py), in-process: which layer a name comes
from, what hides it, and which inode number it has."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from harness import ROOT, fails

from support.layergen import make_opaque, whiteout, write


async def test_a_name_comes_from_the_topmost_layer_that_has_it(overlay):
    top, middle, bottom = overlay.lowers(3)
    write(bottom, "f", "bottom")
    write(middle, "f", "middle")
    write(bottom, "only-bottom", "b")
    fs = await overlay.mount()
    assert await fs.read("f") == b"middle"
    assert await fs.read("only-bottom") == b"b"
    with fails(errno.ENOENT):
        await fs.lookup("nowhere")


async def test_directories_merge_and_a_non_directory_stops_the_search(overlay):
    top, middle, bottom = overlay.lowers(3)
    write(top, "d/a", "top")
    write(bottom, "d/b", "bottom")
    write(top, "x", "a file over a directory")
    write(bottom, "x/under", "hidden")
    (middle / "y").mkdir()
    write(bottom, "y", "a file under a directory")
    fs = await overlay.mount()
    assert await fs.read("d/a") == b"top"
    assert await fs.read("d/b") == b"bottom"
    assert stat.S_ISREG((await fs.stat("x")).st_mode)
    with fails(errno.ENOTDIR):
        await fs.lookup("x/under")
    assert stat.S_ISDIR((await fs.stat("y")).st_mode)


@pytest.mark.parametrize("fmt", ["chardev", "whfile"])
async def test_a_whiteout_hides_the_name_in_every_layer_below(overlay, fmt):
    top, middle, bottom = overlay.lowers(3)
    write(bottom, "f", "bottom")
    write(middle, "f", "middle")
    write(bottom, "d/g", "g")
    whiteout(top, "f", fmt)
    whiteout(top, "d", fmt)
    fs = await overlay.mount()
    for name in ("f", "d", "d/g"):
        with fails(errno.ENOENT):
            await fs.lookup(name)
    assert await fs.listdir("") == []


async def test_a_real_entry_beside_its_own_whiteout_file_wins(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "f", "bottom")
    whiteout(top, "f", "whfile")
    write(top, "f", "top")
    fs = await overlay.mount()
    assert await fs.read("f") == b"top"


@pytest.mark.parametrize("fmt", [
    pytest.param("trusted", marks=pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")),
    "user", "fuseoverlayfs", "whfile"])
async def test_an_opaque_directory_hides_what_lies_below_it(overlay, fmt):
    top, middle, bottom = overlay.lowers(3)
    write(bottom, "d/below", "hidden")
    write(bottom, "d/sub/deep", "hidden")
    make_opaque(middle, "d", fmt)
    write(middle, "d/own", "shown")
    write(top, "d/above", "shown")
    fs = await overlay.mount()
    assert sorted(await fs.listdir("d")) == [b"above", b"own"]
    for name in ("d/below", "d/sub", "d/.wh..wh..opq"):
        with fails(errno.ENOENT):
            await fs.lookup(name)


async def test_an_opaque_marker_on_a_layer_root_means_nothing(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "f", "bottom")
    make_opaque(top, "", "user")
    fs = await overlay.mount()
    assert await fs.read("f") == b"bottom"


async def test_names_over_255_bytes_are_too_long(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "n" * 255, "longest")
    fs = await overlay.mount()
    assert await fs.read("n" * 255) == b"longest"
    with fails(errno.ENAMETOOLONG):
        await fs.lookup("n" * 256)
    with fails(errno.ENAMETOOLONG):
        await fs.create("m" * 256)


async def test_marker_names_can_neither_be_seen_nor_made(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "f", "x")
    whiteout(top, "f", "whfile")
    write(top, ".wh.nothing-below", "")
    write(top, "d/.wh..wh..opq", "")
    fs = await overlay.mount()
    for name in (".wh.f", ".wh.nothing-below", "d/.wh..wh..opq"):
        with fails(errno.ENOENT):
            await fs.lookup(name)
    assert await fs.listdir("") == [b"d"]
    with fails(errno.EINVAL):
        await fs.create(".wh.f")
    with fails(errno.EINVAL):
        await fs.mkdir(".wh.new")


async def test_the_inode_number_of_a_file_stays_through_copy_up_and_remount(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/f", "lower")
    fs = await overlay.mount()
    ino_f, ino_d = await fs.ino("d/f"), await fs.ino("d")
    await fs.write("d/f", b"upper")  # copies d and d/f up
    assert (overlay.upper / "d" / "f").read_bytes() == b"upper"
    assert (await fs.ino("d/f"), await fs.ino("d")) == (ino_f, ino_d)
    await fs.forget_all()
    assert (await fs.ino("d/f"), await fs.ino("d")) == (ino_f, ino_d)
    fs = await overlay.remount(fs)
    assert (await fs.ino("d/f"), await fs.ino("d")) == (ino_f, ino_d)
    assert await fs.read("d/f") == b"upper"


async def test_a_number_the_kernel_still_holds_is_not_given_to_a_new_object(overlay):
    overlay.lowers(1)
    fs = await overlay.mount()
    old = (await fs.create("x", b"1")).st_ino  # the kernel keeps its lookup of x
    await fs.unlink("x")
    new = (await fs.create("y", b"2")).st_ino  # ext4 gives y the inode x had
    assert new != old
    await fs.forget_all()
    fs = await overlay.remount(fs)
    assert await fs.ino("y") == new, "and y keeps its number"


async def test_a_known_upper_name_is_the_object_there_now(overlay):
    """A name in the upper that the mount knows is found without its xattrs
    read again: as the object now there, whatever stood there before (a file
    replaced by a rename, one removed whose inode the upper gave again, a copy
    that keeps its lower number)."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "low", "lower")
    fs = await overlay.mount()
    await fs.create("a", b"A")
    b = (await fs.create("b", b"B")).st_ino
    await fs.rename("b", "a")
    assert await fs.ino("a") == b and await fs.read("a") == b"B"
    x = (await fs.create("x", b"1")).st_ino  # the kernel keeps its lookup of x
    await fs.unlink("x")
    again = (await fs.create("x", b"2")).st_ino  # ext4 gives it the inode x had
    assert again != x and await fs.ino("x") == again and await fs.read("x") == b"2"
    low = await fs.ino("low")
    await fs.write("low", b"upper")
    assert await fs.ino("low") == low
    await fs.unlink("low")
    await fs.unlink("x")
    assert (await fs.stat("a")).st_nlink == 1
    assert sorted(await fs.listdir("")) == [b"a"]


async def test_hard_links_in_a_layer_share_one_inode(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    fs = await overlay.mount()
    assert await fs.ino("a") == await fs.ino("b")
    assert (await fs.stat("a")).st_nlink == 2


async def test_distinct_objects_of_distinct_layers_get_distinct_numbers(overlay):
    layers = overlay.lowers(3)
    for i, layer in enumerate(layers):
        write(layer, f"f{i}", str(i))
    fs = await overlay.mount()
    await fs.create("new", b"upper")
    inos = {await fs.ino(n) for n in ("f0", "f1", "f2", "new", "")}
    assert len(inos) == 5


async def test_a_mount_without_upper_is_read_only(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "f", "x")
    fs = await overlay.mount(upper=False)
    assert await fs.read("f") == b"x"
    with fails(errno.EROFS):
        await fs.write("f", b"y")
    with fails(errno.EROFS):
        await fs.create("g")


async def test_a_lookup_of_an_upper_object_reads_its_attributes_once(overlay):
    """The lookup's lstat of the upper object is what the reply carries: no
    second lstat of it for the attributes."""
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/lower", "l")
    fs = await overlay.mount()
    await fs.write("d/lower", b"copied up")
    await fs.create("d/new")
    await fs.mkdir("d/newdir")
    await fs.forget_all()
    upper = fs.ops.ovl.upper
    read = []
    real_lstat = upper.lstat
    upper.lstat = lambda rel: read.append(rel) or real_lstat(rel)
    try:
        parent = (await fs.ops.lookup(ROOT, b"d", fs.ctx)).st_ino
        fs.held[parent] += 1
        for name in (b"lower", b"new", b"newdir"):
            read.clear()
            attr = await fs.ops.lookup(parent, name, fs.ctx)
            fs.held[attr.st_ino] += 1
            assert read.count(b"d/" + name) == 1, (name, read)
            assert attr.st_size == os.lstat(overlay.upper / "d" / os.fsdecode(name)).st_size
    finally:
        del upper.lstat
