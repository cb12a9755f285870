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


# -- read_members: tarfile's members, read faster ----------------------------------------

def _tar_of(fmt, infos, pax_headers=None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=pax_headers,
                      encoding="utf-8", errors="surrogateescape") as tf:
        for ti, data in infos:
            ti.size = len(data) if ti.isreg() else ti.size
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return out.getvalue()


def _info(name, kind=tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = kw.pop("mtime", 1_700_000_000)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _reheader(tar: bytes, index: int, edit) -> bytes:
    """The tar with the header at block `index` edited (`edit(bytearray)`),
    its checksum made right again unless `edit` returns False."""
    buf = bytearray(tar)
    block = buf[512 * index:512 * (index + 1)]
    if edit(block) is not False:
        block[148:156] = b" " * 8
        block[148:155] = b"%06o\0" % sum(block)
    buf[512 * index:512 * (index + 1)] = block
    return bytes(buf)


def _members_described(tar: bytes, read) -> tuple:
    """(every member's every field, or the exception) of `tar` read by `read`."""
    from layers.archive import SafeTarInfo
    try:
        tf = tarfile.open(fileobj=io.BytesIO(tar), mode="r:", tarinfo=SafeTarInfo, errorlevel=2)
        members = read(tf)
    except Exception as e:
        return ("raised", type(e), str(e))
    return tuple((type(m), m.get_info(), m.offset, m.offset_data, m.sparse, m.pax_headers,
                  m.chksum) for m in members)


def test_read_members_gives_what_tarfile_gives_for_every_form_of_header():
    from layers.archive import read_members
    basic = [(_info("d", tarfile.DIRTYPE, mode=0o755), b""), (_info("d/f", mode=0o4755, uid=7,
              gid=8, uname="u", gname="g"), b"x" * 1000), (_info("d/e"), b""),
             (_info("d/s", tarfile.SYMTYPE, linkname="f"), b""),
             (_info("d/h", tarfile.LNKTYPE, linkname="d/f"), b""),
             (_info("d/c", tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
             (_info("d/b", tarfile.BLKTYPE, devmajor=8, devminor=1), b""),
             (_info("d/p", tarfile.FIFOTYPE), b""), (_info("d/z"), b"z" * 513)]
    deep = "/".join(["segment-%02d" % i for i in range(12)])             # > 100: a ustar prefix
    tars = {
        "ustar": _tar_of(tarfile.USTAR_FORMAT, basic + [(_info(deep + "/f"), b"deep")]),
        "gnu long names, base-256 uid": _tar_of(tarfile.GNU_FORMAT, basic + [
            (_info("n" * 150), b"long"), (_info("l", tarfile.SYMTYPE, linkname="t" * 150), b""),
            (_info("big-uid", uid=1 << 30), b"u")]),
        "pax": _tar_of(tarfile.PAX_FORMAT, basic + [
            (_info("é-\udcff", pax_headers={"SCHILY.xattr.user.k": "v"}), b"pax"),
            (_info("frac", mtime=1_700_000_000.5), b"t"), (_info("p" * 300), b"long")]),
        "pax global header": _tar_of(tarfile.PAX_FORMAT, basic, pax_headers={"comment": "g"}),
        "empty": b"\0" * 1024,
    }
    ustar = tars["ustar"]          # headers at blocks 0 (d), 1 (d/f), 4 (d/e), 5 ...
    # an old (V7) directory: a regular type, a name ending in "/"
    tars["v7 dir"] = _reheader(ustar, 0, lambda b: b.__setitem__(slice(0, 3), b"d/\0")
                               or b.__setitem__(156, 0))
    tars["bad checksum mid-tar"] = _reheader(ustar, 4, lambda b: b.__setitem__(0, 0x51) or False)
    tars["octal with blanks"] = _reheader(ustar, 4, lambda b: b.__setitem__(
        slice(100, 108), b" 644   \0"))
    tars["number not octal"] = _reheader(ustar, 4, lambda b: b.__setitem__(
        slice(108, 116), b"0000009\0"))
    tars["all-blank number"] = _reheader(ustar, 4, lambda b: b.__setitem__(
        slice(116, 124), b"        "))
    tars["truncated"] = ustar[:512 * 3 + 100]
    tars["unknown type"] = _reheader(ustar, 4, lambda b: b.__setitem__(156, ord("X")))
    for what, tar in tars.items():
        want = _members_described(tar, lambda tf: tf.getmembers())
        assert _members_described(tar, read_members) == want, what
    assert len(_members_described(tars["gnu long names, base-256 uid"], read_members)) == 12
    assert len(_members_described(tars["bad checksum mid-tar"], read_members)) == 2   # tarfile stops
    assert _members_described(tars["ustar"], read_members)[-1][1]["name"] == deep + "/f"
