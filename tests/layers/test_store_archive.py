import io
import os
import re
import stat
import subprocess
import tarfile

import pytest

from layers import layout, tarsplit
from layers.archive import ExtractOptions, extract_layer
from layers.errors import BadArchive, UnsafeArchive

from storetools import (TarEntry, compress, directory, file, hardlink, hostile_corpus,
                        sha256, symlink, tar_bytes)

ROOT = os.geteuid() == 0


def extract(tmp_path, raw: bytes, split_path: str | None = None, **opts):
    dest = tmp_path / "dest"
    dest.mkdir()
    options = ExtractOptions(**{"privileged": ROOT, **opts})
    return dest, extract_layer(io.BytesIO(raw), str(dest), options, where="t.tar",
                               split_path=split_path)


def sample() -> list[TarEntry]:
    return [
        directory("./"),
        directory("etc", mode=0o750, uid=5, gid=6),
        file("etc/passwd", "root:x:0:0\n", mode=0o640, uid=5, gid=6),
        file("etc/setuid", "x", mode=0o4755),
        hardlink("etc/passwd-link", "etc/passwd"),
        symlink("etc/sh", "/bin/busybox"),
        file("bin/busybox", b"\x7fELF" * 1000, mode=0o755),   # parent implied
        TarEntry("run/fifo", b"6", mode=0o600),
        file("x/attr", "a", pax={"SCHILY.xattr.user.color": "blue",
                                 "SCHILY.xattr.trusted.overlay.opaque": "y"}),
    ]


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_extracts_and_hashes(tmp_path, compression):
    raw = tar_bytes(sample())
    blob = compress(raw, compression)
    dest, res = extract(tmp_path, blob)
    assert str(res.diff_id) == sha256(raw)
    assert str(res.blob_digest) == sha256(blob)
    assert res.tar_size == len(raw) and res.blob_size == len(blob)
    assert res.compression == compression
    assert (dest / "etc/passwd").read_text() == "root:x:0:0\n"
    assert os.readlink(dest / "etc/sh") == "/bin/busybox"
    st = os.stat(dest / "etc/passwd")
    assert st.st_ino == os.stat(dest / "etc/passwd-link").st_ino
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime == 1_700_000_000
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)
    assert stat.S_IMODE(os.stat(dest / "etc").st_mode) == 0o750
    assert os.stat(dest / "etc").st_mtime == 1_700_000_000
    assert os.getxattr(dest / "x/attr", "user.color") == b"blue"
    # an archive never sets overlay-private xattrs
    with pytest.raises(OSError):
        os.getxattr(dest / "x/attr", "trusted.overlay.opaque")
    if ROOT:
        assert (st.st_uid, st.st_gid) == (5, 6)
        assert stat.S_IMODE(os.stat(dest / "etc/setuid").st_mode) == 0o4755


def test_trailing_padding_is_part_of_the_diff_id(tmp_path):
    raw = tar_bytes([file("a", "x")]) + b"\0" * 10240
    _, res = extract(tmp_path, raw)
    assert str(res.diff_id) == sha256(raw)


def markers():
    return tar_bytes([directory("d"), file("d/keep", "k"), file("d/.wh..wh..opq"),
                      file(".wh.gone"), file(".wh.both"), file("both", "new"),
                      file(".wh..wh.plnk")])


def test_oci_form_keeps_whiteout_files(tmp_path):
    dest, _ = extract(tmp_path, markers())
    assert sorted(os.listdir(dest)) == [".wh.both", ".wh.gone", "both", "d"]
    assert sorted(os.listdir(dest / "d")) == [".wh..wh..opq", "keep"]


@pytest.mark.skipif(not ROOT, reason="overlay form needs mknod and trusted xattrs")
def test_overlay_form_converts_markers(tmp_path):
    dest, _ = extract(tmp_path, markers(), form=layout.FORM_OVERLAY)
    assert sorted(os.listdir(dest)) == ["both", "d", "gone"]
    assert layout.is_whiteout_dev(os.lstat(dest / "gone"))
    assert (dest / "both").read_text() == "new"        # this layer's entry wins
    assert os.listdir(dest / "d") == ["keep"]
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"


def test_later_entries_replace_earlier_ones(tmp_path):
    dest, _ = extract(tmp_path, tar_bytes([
        directory("a"), file("a/f", "1"), file("a", "now a file"),
        file("b", "1"), directory("b"), file("b/inner", "2"),
        symlink("c", "x"), file("c", "plain"),
    ]))
    assert (dest / "a").read_text() == "now a file"
    assert (dest / "b/inner").read_text() == "2"
    assert not os.path.islink(dest / "c")


def test_override_stat_keeps_owner_and_mode_in_xattr(tmp_path):
    dest, _ = extract(tmp_path, tar_bytes([
        directory("d", mode=0o500, uid=0, gid=0),
        file("d/f", "x", mode=0o400, uid=1000, gid=1001),
    ]), override_stat=True)
    assert os.getxattr(dest / "d/f", layout.OVERRIDE_STAT_XATTR) == b"1000:1001:0400:file"
    assert os.getxattr(dest / "d", layout.OVERRIDE_STAT_XATTR) == b"0:0:0500:dir"
    # on disk the owner keeps access
    assert stat.S_IMODE(os.stat(dest / "d/f").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o700


def test_force_mask(tmp_path):
    dest, _ = extract(tmp_path, tar_bytes([file("f", "x", mode=0o777)]),
                      override_stat=True, force_mask=0o700)
    assert stat.S_IMODE(os.stat(dest / "f").st_mode) == 0o700
    assert os.getxattr(dest / "f", layout.OVERRIDE_STAT_XATTR) == b"0:0:0777:file"


def test_entry_count_limit(tmp_path):
    raw = tar_bytes([file(f"f{i}") for i in range(5)])
    with pytest.raises(UnsafeArchive) as e:
        extract(tmp_path, raw, max_entries=4)
    assert str(e.value) == "refusing archive entry 'f4': more than 4 entries"


def _check_hostile(tmp_path, h, options):
    canary = tmp_path / "canary"
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises((UnsafeArchive, BadArchive)) as e:
        extract_layer(io.BytesIO(h.data), str(dest), options, where="t.tar")
    want = h.message.replace("{where}", "t.tar")
    if "{detail}" in want:
        assert re.fullmatch(re.escape(want).replace(re.escape("{detail}"), ".+"),
                            str(e.value)), str(e.value)
    else:
        assert str(e.value) == want
    assert os.listdir(canary) == []
    assert not os.path.exists("/tmp/evil")


def hostile_ids():
    return [h.id for h in hostile_corpus("/x")]


@pytest.mark.parametrize("case", hostile_ids())
def test_hostile_archives_are_refused_naming_the_entry(tmp_path, case):
    canary = tmp_path / "canary"
    canary.mkdir()
    h = next(h for h in hostile_corpus(str(canary)) if h.id == case)
    _check_hostile(tmp_path, h, ExtractOptions(privileged=ROOT and not h.needs_unprivileged))


def test_parents_a_tar_implies_are_roots_in_a_rootless_store(tmp_path):
    dest, _ = extract(tmp_path, tar_bytes([file("a/b/f", "x", uid=7, gid=8)]),
                      override_stat=True)
    for d in ("a", "a/b"):
        assert os.getxattr(dest / d, "user.containers.override_stat") == b"0:0:0755:dir"
    assert os.getxattr(dest / "a/b/f", "user.containers.override_stat") == b"7:8:0644:file"


def test_absolute_names_land_under_the_layer_root_as_gnu_tar_puts_them(tmp_path):
    raw = tar_bytes([
        directory("/etc", mode=0o750),
        file("/etc/x", "x", mode=0o640),
        hardlink("/etc/x-link", "/etc/x"),
        symlink("/etc/abs-link", "/etc/x"),
        file("//usr/./bin/tool", "t", mode=0o755),
    ])
    split = tmp_path / "tar-split.gz"
    dest, res = extract(tmp_path, raw, split_path=str(split))
    (tmp_path / "t.tar").write_bytes(raw)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "t.tar"), "-C", str(gnu)], check=True,
                   capture_output=True)
    for rel in ("etc/x", "etc/x-link", "etc/abs-link", "usr/bin/tool"):
        ours, theirs = os.lstat(dest / rel), os.lstat(gnu / rel)
        assert (ours.st_mode, ours.st_size) == (theirs.st_mode, theirs.st_size), rel
    assert os.readlink(dest / "etc/abs-link") == "/etc/x"
    assert os.stat(dest / "etc/x").st_ino == os.stat(dest / "etc/x-link").st_ino
    assert sorted(os.listdir(dest)) == ["etc", "usr"]
    # the layer's tar comes back as it was, leading slashes and all
    assert res.split and b"".join(tarsplit.replay(str(split), str(dest), "t")) == raw
    assert str(res.diff_id) == sha256(raw)


def test_unprivileged_device_nodes_are_files_carrying_override_stat(tmp_path):
    raw = tar_bytes([
        directory("dev"),
        TarEntry("dev/full", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=7),
        TarEntry("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, devmajor=7, devminor=0),
        file("etc/x", "x"),
    ])
    split = tmp_path / "tar-split.gz"
    dest, res = extract(tmp_path, raw, split_path=str(split), privileged=False,
                        override_stat=True)
    assert res.device_files == 2
    for rel, value in (("dev/full", b"0:0:0666:char-1-7"), ("dev/loop0", b"0:6:0660:block-7-0")):
        st = os.lstat(dest / rel)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, rel
        assert os.getxattr(dest / rel, layout.OVERRIDE_STAT_XATTR) == value
    # the layer's tar comes back with the device entries it had
    assert b"".join(tarsplit.replay(str(split), str(dest), "t")) == raw


def test_an_archive_never_marks_a_file_lazy(tmp_path):
    """user.strata.lazy would make fsd ask the fetcher for a file it does not
    know, and the store's own marks are never an archive's to set."""
    raw = tar_bytes([file("f", "data", pax={"SCHILY.xattr.user.strata.lazy": "",
                                            "SCHILY.xattr.user.strata.other": "x",
                                            "SCHILY.xattr.user.kept": "y"})])
    dest, _ = extract(tmp_path, raw)
    assert os.listxattr(dest / "f") == ["user.kept"]
