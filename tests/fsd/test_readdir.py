"""Directory listings (fsd/readdir.py), in-process: the merged listing, with
markers and hidden names left out, and offsets that stay valid while a
directory is read in several requests and changed in between."""

from __future__ import annotations

import os

from harness import Token
from support.layergen import make_opaque, whiteout, write


async def test_a_listing_is_the_union_of_the_layers_each_name_once(overlay):
    top, middle, bottom = overlay.lowers(3)
    for layer, names in ((top, "a b"), (middle, "b c"), (bottom, "a c d")):
        for name in names.split():
            write(layer, f"dir/{name}", layer.name)
    fs = await overlay.mount()
    await fs.create("dir/e")
    await fs.write("dir/a", b"changed")
    names = await fs.listdir("dir")
    assert sorted(names) == [b"a", b"b", b"c", b"d", b"e"]
    assert len(names) == len(set(names))


async def test_whiteouts_markers_and_what_they_hide_are_not_listed(overlay):
    top, middle, bottom = overlay.lowers(3)
    for name in ("gone-chardev", "gone-file", "kept", "opq/hidden"):
        write(bottom, f"d/{name}", "x")
    whiteout(middle, "d/gone-chardev", "chardev")
    whiteout(middle, "d/gone-file", "whfile")
    whiteout(middle, "d/never-was", "whfile")
    make_opaque(top, "d/opq", "whfile")
    write(top, "d/opq/own", "y")
    fs = await overlay.mount()
    assert sorted(await fs.listdir("d")) == [b"kept", b"opq"]
    assert await fs.listdir("d/opq") == [b"own"]
    await fs.unlink("d/kept")
    await fs.mkdir("d/new")
    assert sorted(await fs.listdir("d")) == [b"new", b"opq"]
    fs = await overlay.remount(fs)
    assert sorted(await fs.listdir("d")) == [b"new", b"opq"]


async def test_a_directory_merges_only_the_layers_of_its_own_path(overlay):
    """Listings made one after the other, each from its own layers: what the merge
    of y/sub adds to its own entry (y/sub is in the middle and bottom layers)
    is not in x/sub's (the middle layer only; the bottom one has a file x)."""
    top, middle, bottom = overlay.lowers(3)
    write(top, "x/t", "t")
    write(middle, "x/sub/m", "m")
    write(bottom, "x", "a file under the directories")
    write(middle, "y/sub/m", "m")
    write(bottom, "y/sub/b", "b")
    fs = await overlay.mount()
    assert sorted(await fs.listdir("x")) == [b"sub", b"t"]
    assert sorted(await fs.listdir("y/sub")) == [b"b", b"m"]
    assert await fs.listdir("x/sub") == [b"m"]
    assert await fs.read("x/sub/m") == b"m"


async def test_each_entry_comes_with_the_attributes_a_stat_of_it_gives(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/lower", "l")
    write(bottom, "d/copied", "c")
    write(top, "d/sub/f", "s")
    write(bottom, "d/sub/g", "g")
    os.symlink("lower", top / "d" / "link")
    fs = await overlay.mount()
    await fs.create("d/new")
    await fs.write("d/copied", b"copied up, longer")
    await fs.mkdir("d/newdir")
    fh = await fs.opendir("d")
    token = Token()
    await fs.ops.readdir(fh, 0, token)
    await fs.ops.releasedir(fh)
    fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns")
    listed = {name: [getattr(attr, f) for f in fields] for name, attr, _ in token.entries}
    assert sorted(listed) == [b".", b"..", b"copied", b"link", b"lower", b"new", b"newdir", b"sub"]
    for name, attrs in listed.items():
        if name not in (b".", b".."):
            fs.held[attrs[0]] += 1
            stat = await fs.stat(b"d/" + name)
            assert attrs == [getattr(stat, f) for f in fields], name


async def test_a_directory_of_the_lowers_only_lists_what_a_stat_of_each_entry_gives(overlay):
    """A directory with no upper dir (readdir.py takes its merged lowers and
    its path once for all its names): each entry, read in several requests,
    has the number and attributes a stat of it gives; whited-out names are
    not listed."""
    top, bottom = overlay.lowers(2)
    write(bottom, "d/file", "f")
    write(bottom, "d/merged/b", "b")
    write(top, "d/merged/t", "t")
    write(top, "d/own/x", "x")
    write(bottom, "d/gone", "g")
    whiteout(top, "d/gone", "whfile")
    os.link(bottom / "d" / "file", bottom / "d" / "hl")
    os.symlink("file", top / "d" / "link")
    fs = await overlay.mount()
    fh = await fs.opendir("d")
    pieces, offset = [], 0
    while batch := await fs.readdir(fh, offset, room=2):
        pieces += batch
        offset = batch[-1][2]
    await fs.ops.releasedir(fh)
    token = Token()
    await fs.ops.readdir(fh, 0, token)
    fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns")
    listed = {name: [getattr(attr, f) for f in fields] for name, attr, _ in token.entries}
    assert sorted(listed) == [b".", b"..", b"file", b"hl", b"link", b"merged", b"own"]
    assert [(name, ino) for name, ino, _ in pieces] == [(name, attrs[0]) for name, attrs in listed.items()]
    assert listed[b"merged"][2] == 1  # a directory of two layers
    for name, attrs in listed.items():
        if name not in (b".", b".."):
            fs.held[attrs[0]] += 2  # the listing's lookups of it: two listings
            stat = await fs.stat(b"d/" + name)
            assert attrs == [getattr(stat, f) for f in fields], name
    assert listed[b"hl"] == listed[b"file"]


async def test_dot_and_dotdot_come_first_with_their_inode_numbers(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/sub/f", "x")
    fs = await overlay.mount()
    fh = await fs.opendir("d/sub")
    entries = await fs.readdir(fh)
    await fs.ops.releasedir(fh)
    assert [(name, ino) for name, ino, _ in entries[:2]] == [
        (b".", await fs.ino("d/sub")), (b"..", await fs.ino("d"))]
    assert entries[2][0] == b"f" and entries[2][1] == await fs.ino("d/sub/f")


async def test_offsets_stay_valid_while_the_directory_changes(overlay):
    top, bottom = overlay.lowers(2)
    for i in range(40):
        write(top if i % 2 else bottom, f"d/f{i:02}", "x")
    fs = await overlay.mount()
    fh = await fs.opendir("d")
    seen, offset = [], 0
    while True:
        batch = await fs.readdir(fh, offset, room=3)
        if not batch:
            break
        seen += [name for name, _, _ in batch]
        offset = batch[-1][2]
        if len(seen) == 9:  # between two requests, as another process may
            await fs.create(b"d/new")
            await fs.unlink(b"d/" + max(set(await fs.listdir("d")) - set(seen) - {b"new"}))
    await fs.ops.releasedir(fh)
    names = [n for n in seen if n not in (b".", b"..")]
    assert len(names) == len(set(names)), "no name twice"
    assert len(names) == 39, "every name that stayed, and none of the changes"
    assert b"new" not in names


async def test_readers_of_one_directory_each_go_on_in_their_own_listing(overlay):
    """No handle tells readers apart (the kernel sends no OPENDIR): the offsets
    do.  A reader that started before a change and one that started after it,
    read in turns, each get every name of its own listing once (the first
    none that was made after it began; a name removed since is left out)."""
    (bottom,) = overlay.lowers(1)
    for i in range(12):
        write(bottom, f"d/f{i:02}", "x")
    fs = await overlay.mount()
    ino = await fs.ino("d")
    first, second = [], []
    first_at = second_at = 0
    batch = await fs.readdir(ino, first_at, room=4)
    first += batch
    first_at = batch[-1][2]
    await fs.unlink("d/f05")
    await fs.create("d/new")
    while True:
        batch = await fs.readdir(ino, second_at, room=3)
        second += batch
        if batch:
            second_at = batch[-1][2]
        more = await fs.readdir(ino, first_at, room=5)
        first += more
        if more:
            first_at = more[-1][2]
        if not batch and not more:
            break
    names = [f"f{i:02}".encode() for i in range(12)]
    stayed = [n for n in names if n != b"f05"]
    assert sorted(n for n, _, _ in first) == sorted([b".", b"..", *stayed])
    assert sorted(n for n, _, _ in second) == sorted([b".", b"..", b"new", *stayed])


async def test_reading_from_offset_0_again_takes_a_fresh_listing(overlay):
    (bottom,) = overlay.lowers(1)
    write(bottom, "d/a", "x")
    fs = await overlay.mount()
    fh = await fs.opendir("d")
    first = [name for name, _, _ in await fs.readdir(fh)]
    await fs.create("d/b")
    again = [name for name, _, _ in await fs.readdir(fh, 0)]
    await fs.ops.releasedir(fh)
    assert sorted(first) == [b".", b"..", b"a"]
    assert sorted(again) == [b".", b"..", b"a", b"b"]


async def test_an_entry_that_did_not_fit_comes_with_the_next_request(overlay):
    (bottom,) = overlay.lowers(1)
    for name in "abcde":
        write(bottom, f"d/{name}", name)
    fs = await overlay.mount()
    fh = await fs.opendir("d")
    whole = await fs.readdir(fh)
    pieces, offset = [], 0
    while batch := await fs.readdir(fh, offset, room=2):
        pieces += batch
        offset = batch[-1][2]
    await fs.ops.releasedir(fh)
    assert [(name, ino) for name, ino, _ in pieces] == [(name, ino) for name, ino, _ in whole]


async def test_a_listing_entry_has_the_inode_number_a_lookup_gives(overlay):
    top, bottom = overlay.lowers(2)
    write(bottom, "d/low", "x")
    write(top, "d/top", "y")
    os.link(bottom / "d" / "low", bottom / "d" / "low2")
    fs = await overlay.mount()
    await fs.write("d/top", b"copied up")
    fh = await fs.opendir("d")
    listed = {name: ino for name, ino, _ in await fs.readdir(fh) if name not in (b".", b"..")}
    await fs.ops.releasedir(fh)
    await fs.forget_all()
    assert listed == {name: await fs.ino(b"d/" + name) for name in listed}
    assert listed[b"low"] == listed[b"low2"]


async def test_a_big_merged_directory_lists_every_name_once(overlay):
    top, bottom = overlay.lowers(2)
    for i in range(300):
        write(bottom, f"d/n{i}", "")
        if i % 3 == 0:
            write(top, f"d/n{i}", "shadow")
        if i % 7 == 0:
            whiteout(top, f"d/n{i + 1}", "whfile")
    fs = await overlay.mount()
    names = await fs.listdir("d")
    hidden = {b"n%d" % (i + 1) for i in range(0, 300, 7)} - {b"n%d" % i for i in range(0, 300, 3)}
    assert len(names) == len(set(names))
    assert set(names) == {b"n%d" % i for i in range(300)} - hidden
