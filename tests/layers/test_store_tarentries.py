"""Changesets made from a directory: order, markers, owners, times; and the
layer built from one is what extracting its tar gives."""

import hashlib
import io
import os
import socket
import stat
import tarfile

import pytest

from layers import tarentries, tarsplit
from layers.archive import ExtractOptions, build_layer, extract_layer, write_tar
from storetools import make_tree

ROOT = os.geteuid() == 0


def names(entries):
    return [ti.name for ti, _ in entries]


@pytest.fixture
def upper(tmp_path):
    """An upper as fsd or the kernel leave it, markers in both forms."""
    up = str(tmp_path / "upper")
    make_tree(up, {"b": "b", "a/z": "z", "a/y": "y", "c/keep": "k", "etc/new": "n"})
    open(os.path.join(up, "a", ".wh.x"), "w").close()         # OCI whiteout
    if ROOT:
        os.mknod(os.path.join(up, "a", "w"), stat.S_IFCHR, 0)   # kernel whiteout
    os.setxattr(os.path.join(up, "c"), "user.overlay.opaque", b"y")
    os.setxattr(os.path.join(up, "b"), "user.overlay.origin", b"private")
    os.setxattr(os.path.join(up, "b"), "user.color", b"\xffblue")
    return up


def test_order_whiteouts_and_opaque_markers_before_siblings(upper):
    got = list(tarentries.tree_entries(upper))
    want = ["a", "a/.wh.w", "a/.wh.x", "a/y", "a/z", "b", "c", "c/.wh..wh..opq",
            "c/keep", "etc", "etc/new"]
    if not ROOT:
        want.remove("a/.wh.w")
    assert names(got) == want
    by_name = {ti.name: ti for ti, _ in got}
    assert by_name["b"].pax_headers == {"SCHILY.xattr.user.color":
                                        b"\xffblue".decode("utf-8", "surrogateescape")}
    assert by_name["a/.wh.x"].size == 0 and by_name["a/.wh.x"].isreg()
    assert all(src is None for ti, src in got if not ti.isreg() or ti.size == 0)


def test_bytewise_order_and_plain_trees(tmp_path):
    tree = str(tmp_path / "t")
    make_tree(tree, {"B": "", "a": "", "_": "", os.fsdecode(b"\xff"): "", ".wh.x": ""})
    # a merged tree has no markers: `.wh.x` there is just a name (never in practice)
    assert names(tarentries.tree_entries(tree, markers=False)) == \
        [".wh.x", "B", "_", "a", os.fsdecode(b"\xff")]


def test_owner_mode_and_device_from_override_stat(tmp_path):
    up = str(tmp_path / "up")
    make_tree(up, {"f": "data", "dev": "", "d": None})
    os.setxattr(os.path.join(up, "f"), "user.containers.override_stat", b"1000:50:0640")
    os.setxattr(os.path.join(up, "dev"), "user.containers.override_stat",
                b"0:0:0620:char-4-1")
    os.setxattr(os.path.join(up, "d"), "user.containers.override_stat", b"7:8:0700:dir")
    got = {ti.name: ti for ti, _ in tarentries.tree_entries(up)}
    assert (got["f"].uid, got["f"].gid, got["f"].mode) == (1000, 50, 0o640)
    assert got["f"].pax_headers == {}          # the override itself is private
    assert got["dev"].type == tarfile.CHRTYPE
    assert (got["dev"].devmajor, got["dev"].devminor, got["dev"].mode) == (4, 1, 0o620)
    assert (got["d"].uid, got["d"].gid, got["d"].mode) == (7, 8, 0o700)


def test_hard_links_sockets_and_times(tmp_path):
    up = str(tmp_path / "up")
    make_tree(up, {"a": "x", "new": "n"})
    os.link(os.path.join(up, "a"), os.path.join(up, "b"))
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(up, "sock"))
    s.close()
    os.utime(os.path.join(up, "a"), (1000, 1000))
    got = list(tarentries.tree_entries(up, epoch=2000))
    assert names(got) == ["a", "b", "new"]       # no socket in a tar
    a, b, new = (ti for ti, _ in got)
    assert b.type == tarfile.LNKTYPE and b.linkname == "a"
    assert a.mtime == 1000 and new.mtime == 2000   # clamped, never raised


def test_uppers_that_refer_to_lower_content_are_refused(tmp_path):
    up = str(tmp_path / "up")
    make_tree(up, {"f": "", "d": None})
    try:
        os.setxattr(os.path.join(up, "f"), "user.overlay.fsd.metacopy", b"")
    except OSError:
        pytest.skip("no user xattrs here")
    with pytest.raises(tarentries.UpperNeedsLower) as e:
        list(tarentries.tree_entries(up))
    assert e.value.what == "holds metadata only (metacopy)"
    os.removexattr(os.path.join(up, "f"), "user.overlay.fsd.metacopy")
    os.setxattr(os.path.join(up, "d"), "user.overlay.redirect", b"/old")
    with pytest.raises(tarentries.UpperNeedsLower) as e:
        list(tarentries.tree_entries(up))
    assert e.value.what == "is a renamed directory (redirect_dir)"


def test_changes_entries_for_a_full_copy(tmp_path):
    tree = str(tmp_path / "rootfs")
    make_tree(tree, {"etc/a": "a", "etc/new": "n", "usr/bin/x": "x", "keep": "k"})
    got = names(tarentries.changes_entries(
        tree, [("D", "/etc/gone"), ("A", "/etc/new"), ("C", "/usr/bin/x"), ("D", "/old")]))
    assert got == [".wh.old", "etc", "etc/.wh.gone", "etc/new", "usr", "usr/bin", "usr/bin/x"]


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            times = st.st_mtime_ns if not n.startswith(".wh.") else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, times, data,
                        sorted(os.listxattr(p, follow_symlinks=False)))
    return out


def test_a_built_layer_is_what_extracting_its_tar_gives(tmp_path, upper):
    buf = io.BytesIO()
    diff_id, size = write_tar(tarentries.tree_entries(upper, epoch=1_700_000_000), buf)
    raw = buf.getvalue()
    assert str(diff_id) == "sha256:" + hashlib.sha256(raw).hexdigest() and size == len(raw)
    opts = ExtractOptions(privileged=ROOT)
    built, extracted = tmp_path / "built", tmp_path / "extracted"
    built.mkdir()
    extracted.mkdir()
    res = build_layer(tarentries.tree_entries(upper, epoch=1_700_000_000), str(built), opts,
                      str(tmp_path / "split.gz"))
    extract_layer(io.BytesIO(raw), str(extracted), opts)
    assert (res.diff_id, res.tar_size) == (diff_id, len(raw))
    assert snapshot(built) == snapshot(extracted)
    assert b"".join(tarsplit.replay(str(tmp_path / "split.gz"), str(built), "l")) == raw
