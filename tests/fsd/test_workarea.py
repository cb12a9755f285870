"""Removing a work-area tree (`discard_tree`): a directory moved out of the
merged view is mostly whiteouts (character devices 0/0), removed by their
directory entries' types without an lstat each unless usage is released."""

from __future__ import annotations

import os
import stat

import pytest

from fsd.layer import UPPER, Layer
from fsd.workarea import discard_tree


def _tree(root) -> int:
    """A tree of every kind of object fsd may leave in a removed directory;
    how many objects (the top included)."""
    top = root / "gone"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "file").write_bytes(b"x")
    (top / "sub" / "deeper" / "file").write_bytes(b"y")
    os.symlink("sub", top / "link")  # a symlink to a directory is removed, not followed
    os.mkfifo(top / "fifo")
    os.mknod(top / "wh", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mknod(top / "sub" / "wh", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (top / ".wh.old").write_bytes(b"")
    return 10


@pytest.mark.parametrize("with_release", [False, True])
def test_discard_tree_removes_every_kind_of_object(tmp_path, with_release):
    made = _tree(tmp_path)
    layer = Layer(str(tmp_path), UPPER)
    released = []
    try:
        discard_tree(layer, b"gone", released.append if with_release else None)
    finally:
        layer.close()
    assert os.listdir(tmp_path) == []
    assert os.path.isdir(tmp_path)  # the symlink's target was not walked out of the tree
    if with_release:
        assert len(released) == made
        assert sum(stat.S_ISCHR(st.st_mode) for st in released) == 2
        assert sum(stat.S_ISDIR(st.st_mode) for st in released) == 3


def test_discard_tree_of_a_missing_name_does_nothing(tmp_path):
    layer = Layer(str(tmp_path), UPPER)
    try:
        discard_tree(layer, b"nothing")
    finally:
        layer.close()
