import os

import pytest

from layers import changelist
from storetools import make_tree

ROOT = os.geteuid() == 0


@pytest.fixture
def lowers(tmp_path):
    bottom, top = str(tmp_path / "bottom"), str(tmp_path / "top")
    make_tree(bottom, {"etc/a": "a", "etc/b": "b", "usr/share/doc/x": "x", "usr/share/doc/y": "y",
                       "gone/f": "f"})
    make_tree(top, {"etc/.wh.b": "", "usr/share/doc/.wh..wh..opq": "", "usr/share/doc/new": "n",
                    ".wh.gone": ""})
    return [top, bottom]


def test_lookup_and_listing_follow_overlay_rules(lowers):
    assert changelist.lookup(lowers, ["etc", "a"]) is not None
    assert changelist.lookup(lowers, ["etc", "b"]) is None            # whited out
    assert changelist.lookup(lowers, ["usr", "share", "doc", "x"]) is None   # opaque
    assert changelist.lookup(lowers, ["gone", "f"]) is None
    assert changelist.listing(lowers, ["etc"]) == {"a"}
    assert changelist.listing(lowers, ["usr", "share", "doc"]) == {"new"}
    assert changelist.listing(lowers, []) == {"etc", "usr"}


def test_whiteout_hides_only_lower_layers(tmp_path):
    layer = str(tmp_path / "l")
    make_tree(layer, {".wh.x": "", "x": "same layer"})
    assert changelist.listing([layer], []) == {"x"}


def test_upper_changes(tmp_path, lowers):
    upper = str(tmp_path / "upper")
    make_tree(upper, {"etc/a": "changed", "etc/new": "n", "newdir/f": "f",
                      "usr/share/doc/n2": "2"})
    open(os.path.join(upper, "etc", ".wh.a"), "w").close()     # beside its own copy: kept
    open(os.path.join(upper, ".wh.gone"), "w").close()         # gone already in the image
    open(os.path.join(upper, "etc", ".wh.never"), "w").close()  # never in the image
    if ROOT:
        make_tree(upper, {"usr/share/doc/x": None})
        os.rmdir(os.path.join(upper, "usr/share/doc/x"))
        os.mknod(os.path.join(upper, "usr", "share", "doc", "x"), 0o20000, 0)  # char dev form
    os.setxattr(os.path.join(upper, "usr", "share", "doc"), "user.overlay.opaque", b"y")
    got = changelist.upper_changes(upper, lowers)
    assert got == [
        ("C", "/etc/a"), ("A", "/etc/new"), ("A", "/newdir"), ("A", "/newdir/f"),
        ("C", "/usr/share/doc"), ("A", "/usr/share/doc/n2"), ("D", "/usr/share/doc/new")]


def test_whiteout_in_the_upper_is_a_deletion(tmp_path, lowers):
    upper = str(tmp_path / "upper")
    make_tree(upper, {"etc": None})
    open(os.path.join(upper, "etc", ".wh.a"), "w").close()
    open(os.path.join(upper, ".wh.usr"), "w").close()
    assert changelist.upper_changes(upper, lowers) == [("D", "/etc/a"), ("D", "/usr")]


def test_a_replaced_directory_loses_no_deletion(tmp_path, lowers):
    """rm -rf /usr; mkdir -p /usr/share/doc; echo > /usr/share/doc/x: the new
    /usr is opaque, and everything the image had under it and the upper does
    not hold is gone — also below a directory the upper brings back."""
    upper = str(tmp_path / "upper")
    make_tree(upper, {"usr/share/doc/x": "new x"})
    os.setxattr(os.path.join(upper, "usr"), "user.overlay.opaque", b"y")
    assert changelist.upper_changes(upper, lowers) == [
        ("C", "/usr"), ("D", "/usr/share/doc/new"), ("A", "/usr/share/doc/x")]
    # the same with the OCI opaque marker, and a file where a dir was
    upper2 = str(tmp_path / "upper2")
    make_tree(upper2, {"usr/.wh..wh..opq": "", "usr/share": "now a file"})
    assert changelist.upper_changes(upper2, lowers) == [("C", "/usr"), ("C", "/usr/share")]


def test_owner_and_mode_are_compared_as_the_container_sees_them(tmp_path, lowers):
    """A rootless store keeps owners in user.containers.override_stat."""
    upper = str(tmp_path / "upper")
    make_tree(upper, {"etc": None, "usr": None})
    for layer in (lowers[1], upper):
        os.setxattr(os.path.join(layer, "etc"), "user.containers.override_stat",
                    b"0:0:0755:dir")
    os.chmod(os.path.join(upper, "etc"), 0o700)      # the disk mode does not count
    os.chmod(os.path.join(upper, "usr"), 0o700)      # without the xattr it does
    assert changelist.upper_changes(upper, lowers) == [("C", "/usr")]
    os.setxattr(os.path.join(upper, "etc"), "user.containers.override_stat",
                b"0:0:0700:dir")
    assert changelist.upper_changes(upper, lowers) == [("C", "/etc"), ("C", "/usr")]


def test_tree_changes(tmp_path, lowers):
    tree = str(tmp_path / "tree")
    make_tree(tree, {"etc/a": "a", "usr/share/doc/new": "n", "added/f": "x"})
    st = os.stat(os.path.join(lowers[1], "etc", "a"))
    os.utime(os.path.join(tree, "etc", "a"), ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(os.path.join(tree, "usr/share/doc/new"), 0o600)
    got = changelist.tree_changes(tree, lowers)
    assert got == [("A", "/added"), ("A", "/added/f"), ("C", "/usr/share/doc/new")]
