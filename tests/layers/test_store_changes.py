import os

import pytest

from layers import changes

ROOT = os.geteuid() == 0


def mk(base, files: dict):
    for rel, content in files.items():
        path = os.path.join(base, rel)
        if content is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)


@pytest.fixture
def lowers(tmp_path):
    bottom, top = str(tmp_path / "bottom"), str(tmp_path / "top")
    mk(bottom, {"etc/a": "a", "etc/b": "b", "usr/share/doc/x": "x", "usr/share/doc/y": "y",
                "gone/f": "f"})
    mk(top, {"etc/.wh.b": "", "usr/share/doc/.wh..wh..opq": "", "usr/share/doc/new": "n",
             ".wh.gone": ""})
    return [top, bottom]


def test_lookup_and_listing_follow_overlay_rules(lowers):
    assert changes.lookup(lowers, ["etc", "a"]) is not None
    assert changes.lookup(lowers, ["etc", "b"]) is None            # whited out
    assert changes.lookup(lowers, ["usr", "share", "doc", "x"]) is None   # opaque
    assert changes.lookup(lowers, ["gone", "f"]) is None
    assert changes.listing(lowers, ["etc"]) == {"a"}
    assert changes.listing(lowers, ["usr", "share", "doc"]) == {"new"}
    assert changes.listing(lowers, []) == {"etc", "usr"}


def test_whiteout_hides_only_lower_layers(tmp_path):
    layer = str(tmp_path / "l")
    mk(layer, {".wh.x": "", "x": "same layer"})
    assert changes.listing([layer], []) == {"x"}


def test_upper_changes(tmp_path, lowers):
    upper = str(tmp_path / "upper")
    mk(upper, {"etc/a": "changed", "etc/new": "n", "newdir/f": "f", "usr/share/doc/n2": "2"})
    open(os.path.join(upper, "etc", ".wh.a2"), "w").close()    # .wh. form
    if ROOT:
        os.mknod(os.path.join(upper, "etc", "a3"), 0o20000, 0)   # char dev 0/0 form
    os.setxattr(os.path.join(upper, "usr", "share", "doc"), "user.overlay.opaque", b"y")
    got = changes.upper_changes(upper, lowers)
    want = [("C", "/etc/a"), ("D", "/etc/a2")] + ([("D", "/etc/a3")] if ROOT else []) + [
        ("A", "/etc/new"), ("A", "/newdir"), ("A", "/newdir/f"),
        ("C", "/usr/share/doc"), ("A", "/usr/share/doc/n2"),
        ("D", "/usr/share/doc/new")]
    assert got == want


def test_tree_changes(tmp_path, lowers):
    tree = str(tmp_path / "tree")
    mk(tree, {"etc/a": "a", "usr/share/doc/new": "n", "added/f": "x"})
    st = os.stat(os.path.join(lowers[1], "etc", "a"))
    os.utime(os.path.join(tree, "etc", "a"), ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(os.path.join(tree, "usr/share/doc/new"), 0o600)
    got = changes.tree_changes(tree, lowers)
    assert got == [("A", "/added"), ("A", "/added/f"), ("C", "/usr/share/doc/new")]
