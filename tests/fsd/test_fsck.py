"""support/fsck.py catches real damage: each test breaks one thing in an
otherwise clean upper and work area and expects the one finding it causes."""

from __future__ import annotations

import json
import os
import stat

import pytest

from support import fsck
from support.layergen import make_layers, make_opaque, whiteout, write


@pytest.fixture
def tree(tmp_path):
    """A clean upper and work area over two lowers, as fsd leaves them: d
    copied up with a whiteout of d/g, hard-linked a/b in the bottom layer."""
    top, bottom = make_layers(tmp_path, 2)
    write(bottom, "d/f", "f")
    write(bottom, "d/g", "g")
    write(bottom, "a", "linked")
    os.link(bottom / "a", bottom / "b")
    write(top, "e", "e")
    whiteout(top, "gone-below", "whfile")
    write(bottom, "gone-below", "hidden")
    upper, work = tmp_path / "upper", tmp_path / "work"
    (upper / "d").mkdir(parents=True)
    os.setxattr(upper / "d", "user.overlay.fsd.ino", b"12345")
    whiteout(upper, "d/g", "chardev")
    whiteout(upper, "e", "whfile")
    area = work / "fsd"
    (area / "tmp").mkdir(parents=True)
    (area / "index").mkdir()
    (area / "lock").write_bytes(b"")
    t = Tree([top, bottom], upper, work)
    assert t.problems() == [], "the baseline must be clean"
    return t


class Tree:
    def __init__(self, lowers, upper, work):
        self.lowers, self.upper, self.work = lowers, upper, work
        self.area = work / "fsd"

    def problems(self, settled: bool = True) -> list[str]:
        return fsck.problems(self.lowers, self.upper, self.work, settled)

    def finds(self, text: str, settled: bool = True) -> None:
        found = self.problems(settled)
        assert len(found) == 1 and text in found[0], found


def test_an_orphan_in_tmp(tree):
    write(tree.area, "tmp/7", "half a copy")
    tree.finds("tmp/7 left over")


def test_an_orphan_directory_in_tmp(tree):
    (tree.area / "tmp" / "3").mkdir()
    tree.finds("tmp/3 left over")


def test_an_unknown_entry_in_the_work_area(tree):
    (tree.area / "stray").mkdir()
    tree.finds("unknown entry b'stray'")


def test_the_freeze_protocol_files(tree):
    for name in ("freeze.tmp", "freeze", "frozen.tmp", "frozen"):
        write(tree.area, name, "456\n")
        tree.finds(f"{name!r} left over from a freeze of the upper")
        os.unlink(tree.area / name)
    for name in ("freeze", "frozen"):
        write(tree.area, name, "456\n")
    assert tree.problems(settled=False) == [], "a freeze under way"
    write(tree.area, "freezable", "123\n")
    tree.finds("unknown entry b'freezable'", settled=False)


def test_an_index_entry_after_the_copy_up_ended(tree):
    ino = os.lstat(tree.lowers[1] / "a").st_ino
    write(tree.area, f"index/1-{ino}", "linked")
    tree.finds("outlived its copy-up")


def test_an_index_entry_published_at_a_name_of_its_lower_file_is_fine_after_a_crash(tree):
    ino = os.lstat(tree.lowers[1] / "a").st_ino
    write(tree.upper, "a", "linked")
    os.link(tree.upper / "a", tree.area / "index" / f"1-{ino}")
    assert tree.problems(settled=False) == []


def test_an_index_entry_linked_elsewhere(tree):
    ino = os.lstat(tree.lowers[1] / "a").st_ino
    write(tree.upper, "other", "linked")
    os.link(tree.upper / "other", tree.area / "index" / f"1-{ino}")
    tree.finds("at no name of its lower file", settled=False)


def test_an_index_entry_for_a_file_with_one_link(tree):
    ino = os.lstat(tree.lowers[1] / "d" / "f").st_ino
    write(tree.area, f"index/1-{ino}", "f")
    tree.finds("names no hard-linked lower file", settled=False)


def test_an_index_entry_with_a_foreign_name(tree):
    write(tree.area, "index/junk", "")
    tree.finds("not named <lower>-<inode>", settled=False)


def test_an_index_entry_for_a_layer_that_is_not_there(tree):
    write(tree.area, "index/5-1", "")
    tree.finds("names no lower layer", settled=False)


def test_a_move_journal_left_over(tree):
    record = {"src": b"d".hex(), "dst": b"d2".hex(), "key": 1}
    write(tree.area, "moving", json.dumps(record))
    tree.finds("move journal 'moving' left over")
    assert tree.problems(settled=False) == []


def test_a_half_written_move_journal(tree):
    write(tree.area, "moving", '{"src": "64", "ds')
    tree.finds("move journal unreadable", settled=False)


@pytest.mark.parametrize("fmt", ["chardev", "whfile"])
def test_a_whiteout_of_a_name_no_lower_has(tree, fmt):
    whiteout(tree.upper, "d/nothing", fmt)
    tree.finds("whiteout of b'nothing', which no lower shows there")


def test_a_whiteout_of_a_name_a_lower_already_hides(tree):
    whiteout(tree.upper, "gone-below", "chardev")
    tree.finds("whiteout of b'gone-below'")


def test_a_whiteout_inside_an_opaque_directory(tree):
    make_opaque(tree.upper, "d", "user")
    tree.finds("whiteout of b'g'")


def test_a_whiteout_file_beside_the_entry_it_hides(tree):
    write(tree.upper, "d/f", "replaced")
    whiteout(tree.upper, "d/f", "whfile")
    tree.finds("whiteout beside the real entry b'f'")
    assert tree.problems(settled=False) == [], "what a crash may leave"


def test_a_whiteout_file_with_content(tree):
    write(tree.upper, "d/.wh.f", "not empty")
    tree.finds("whiteout file is not an empty file")


def test_an_opaque_xattr_on_a_file(tree):
    write(tree.upper, "plain", "x")
    os.setxattr(tree.upper / "plain", "user.overlay.opaque", b"y")
    tree.finds("opaque xattr user.overlay.opaque on a non-directory")


def test_an_opaque_marker_that_is_a_directory(tree):
    (tree.upper / "d" / ".wh..wh..opq").mkdir()
    found = tree.problems()
    assert any("opaque marker is not an empty file" in p for p in found), found


def test_an_inode_number_xattr_that_is_no_number(tree):
    os.setxattr(tree.upper / "d", "user.overlay.fsd.ino", b"12x")
    tree.finds("inode number xattr is b'12x'")


def test_a_metacopy_marker_without_a_lower_file(tree):
    write(tree.upper, "new", "")
    os.setxattr(tree.upper / "new", "user.overlay.fsd.metacopy", b"y")
    tree.finds("metacopy marker without a lower regular file")
    write(tree.upper, "d/f", "")
    os.setxattr(tree.upper / "d" / "f", "user.overlay.fsd.metacopy", b"y")
    assert len(tree.problems()) == 1  # over a lower file it is what metacopy=on writes


def test_a_lazy_layers_xattr_copied_up(tree):
    write(tree.upper, "d/f", "f")
    os.setxattr(tree.upper / "d" / "f", "user.strata.lazy", b"")
    tree.finds("a lazy layer's xattr user.strata.lazy copied up")


def test_an_upper_directory_that_cannot_be_listed(tree):
    if os.geteuid() == 0:
        pytest.skip("root lists any directory")
    (tree.upper / "locked").mkdir()
    write(tree.upper, "locked/x", "")
    os.chmod(tree.upper / "locked", 0)
    try:
        tree.finds("upper b'locked': cannot list")
    finally:
        os.chmod(tree.upper / "locked", stat.S_IRWXU)
