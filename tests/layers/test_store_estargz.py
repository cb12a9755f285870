"""Seekable (eStargz) layer blobs: every gzip reader gets the plain tar back
byte for byte; the TOC describes every entry and every chunk; the reader
refuses what its digests do not vouch for."""

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import zlib

import pytest

from layers import estargz, tarsplit
from layers.archive import ExtractOptions, extract_layer
from layers.digest import Digest
from layers.errors import BadSeekableLayer, DigestMismatch

from storetools import TarEntry, directory, file, hardlink, symlink, tar_bytes

ROOT = os.geteuid() == 0
SMALL_CHUNK = 64 << 10


def gnu_sparse_tar(tmp_path, fmt: str) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head" * 1000)
        f.seek(1 << 20)
        f.write(os.urandom(200_000))
        f.truncate(3 << 20)             # ends in a hole
    os.link(src / "sparse", src / "hl")
    (src / "plain").write_bytes(os.urandom(100_000))
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(out), "-C", str(src),
                    "."], check=True)
    return out.read_bytes()


def every_kind(tmp_path) -> bytes:
    entries = [
        directory(".", mode=0o755), directory("etc", mode=0o750, uid=12, gid=34),
        file("etc/empty"), file("etc/one", os.urandom(1000), mode=0o4755),
        file("etc/many", os.urandom(5 * SMALL_CHUNK + 123)),
        file("etc/exact", os.urandom(2 * SMALL_CHUNK)),
        file("etc/zeros", bytes(3 * SMALL_CHUNK)),       # sparse on disk, zeros in the tar
        hardlink("etc/hl", "etc/many"), hardlink("/abs-hl", "/etc/one"),
        symlink("l-rel", "etc/one"), symlink("l-abs", "/nowhere/at/all"),
        TarEntry("fifo", tarfile.FIFOTYPE, mode=0o600),
        file("x", "xattrs", pax={"SCHILY.xattr.user.k": "v",
                                 "SCHILY.xattr.user.bin": os.fsdecode(b"\xff\x00\x01")}),
        file("d/.wh.gone"), directory("o"), file("o/.wh..wh..opq"),
        file("n" * 200 + "/" + "m" * 200, "long"), file("ü/ö", "utf"),
        file(os.fsdecode(b"raw\xfe\xff"), "raw"), symlink("t" * 150, "u" * 300),
        file("pax-time", "t", mtime=1_700_000_000.25),
        file("owner", "o", uid=70000, gid=80000, pax={"uname": "somebody",
                                                      "gname": "group"}),
    ]
    if ROOT:
        entries += [TarEntry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
                    TarEntry("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0)]
    return tar_bytes(entries)


CASES = {
    "every-kind": every_kind,
    "gnu-sparse": lambda tmp: gnu_sparse_tar(tmp, "gnu"),
    "posix-sparse": lambda tmp: gnu_sparse_tar(tmp, "posix"),
    "trailing-padding": lambda tmp: tar_bytes([file("a", "x")]) + b"\0" * 10240,
    "markers-with-data": lambda tmp: tar_bytes([file(".wh.x", "data in a whiteout"),
                                                file("d/.wh..wh..opq", "y"),
                                                file("d/f", os.urandom(3000))]),
    "empty-layer": lambda tmp: tar_bytes([]),
}


def seekable(raw: bytes, tmp_path, **kw) -> tuple[bytes, estargz.Written]:
    out = io.BytesIO()
    written = estargz.write_seekable(io.BytesIO(raw), out, scratch=str(tmp_path), **kw)
    return out.getvalue(), written


def open_toc(blob: bytes, toc_digest: Digest) -> estargz.Toc:
    offset = estargz.parse_footer(blob[-estargz.FOOTER_SIZE:])
    return estargz.parse_toc_region(blob[offset:len(blob) - estargz.FOOTER_SIZE], toc_digest)


def inflate_members(blob: bytes) -> bytes:
    """zlib alone, member after member, as Go's and zlib's readers do."""
    out = []
    while blob:
        d = zlib.decompressobj(31)
        out.append(d.decompress(blob))
        assert d.eof
        blob = d.unused_data
    return b"".join(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_gzip_reader_gets_the_plain_tar(tmp_path, case):
    raw = CASES[case](tmp_path)
    blob, w = seekable(raw, tmp_path, chunk_size=SMALL_CHUNK)
    assert gzip.decompress(blob) == raw
    assert inflate_members(blob) == raw
    (tmp_path / "blob.gz").write_bytes(blob)
    gunzip = subprocess.run(["gzip", "-dc", str(tmp_path / "blob.gz")], capture_output=True,
                            check=True)
    assert gunzip.stdout == raw
    assert w.diff_id == Digest.of_bytes(raw) and w.tar_size == len(raw)
    assert w.digest == Digest.of_bytes(blob) and w.size == len(blob)
    assert seekable(raw, tmp_path, chunk_size=SMALL_CHUNK)[0] == blob   # deterministic


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_toc_describes_every_entry_and_chunk(tmp_path, case):
    raw = CASES[case](tmp_path)
    blob, w = seekable(raw, tmp_path, chunk_size=SMALL_CHUNK)
    toc = open_toc(blob, w.toc_digest)
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8",
                      errors="surrogateescape") as tf:
        members = tf.getmembers()
        assert list(toc.entries) == list(dict.fromkeys(toc_name(m.name) for m in members))
        for m in members:
            e = toc.entries[toc_name(m.name)]
            assert (e.mode, e.uid, e.gid, e.user_name, e.group_name) == \
                (m.mode, m.uid, m.gid, m.uname, m.gname)
            assert e.mtime_ns == int(m.mtime * 1e9)
            assert e.xattrs == {k[13:]: v.encode("utf-8", "surrogateescape")
                                for k, v in m.pax_headers.items()
                                if k.startswith("SCHILY.xattr.")}
            if m.issym():
                assert (e.type, e.link_name) == ("symlink", m.linkname)
            elif m.islnk():
                assert (e.type, e.link_name) == ("hardlink", toc_name(m.linkname))
            elif m.ischr() or m.isblk():
                assert (e.type, e.dev_major, e.dev_minor) == \
                    ("char" if m.ischr() else "block", m.devmajor, m.devminor)
            elif m.isreg():
                content = tf.extractfile(m).read()
                assert (e.type, e.size, e.digest) == ("reg", m.size, Digest.of_bytes(content))
                assert rebuilt_content(blob, toc, e) == content
            else:
                assert e.type == {tarfile.DIRTYPE: "dir", tarfile.FIFOTYPE: "fifo"}[m.type]
    if case == "every-kind":
        assert len(toc.chunks(toc.entries["etc/many"])) == 6
        assert len(toc.chunks(toc.entries["etc/one"])) == 1
        assert toc.chunks(toc.entries["etc/empty"]) == []
    if case.endswith("sparse"):
        holes = [(c.offset_in_file, c.size) for c in toc.chunks(toc.entries["sparse"])]
        assert holes[0][0] == 0 and holes[-1][0] + holes[-1][1] < 3 << 20


def toc_name(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def rebuilt_content(blob: bytes, toc: estargz.Toc, e: estargz.TocEntry) -> bytes:
    """A file from its chunks alone, each inflated from exactly its range;
    the gaps (a sparse file's holes) are zeros."""
    data = bytearray(e.size)
    for c in toc.chunks(e):
        assert c.name == e.name and c.blob_start < c.blob_end <= toc.carrier_offset
        data[c.offset_in_file:c.offset_in_file + c.size] = \
            estargz.read_chunk(blob[c.blob_start:c.blob_end], c)
    return bytes(data)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_exact_tar_comes_back_from_the_toc_tar_split(tmp_path, case):
    raw = CASES[case](tmp_path)
    blob, w = seekable(raw, tmp_path)
    toc = open_toc(blob, w.toc_digest)
    dest = tmp_path / "diff"
    dest.mkdir()
    extract_layer(io.BytesIO(raw), str(dest), ExtractOptions(privileged=ROOT))
    (tmp_path / "split.gz").write_bytes(toc.tar_split)
    assert b"".join(tarsplit.replay(str(tmp_path / "split.gz"), str(dest), "l")) == raw


def test_a_toc_with_another_digest_is_refused(tmp_path):
    blob, w = seekable(tar_bytes([file("a", "x")]), tmp_path)
    wrong = Digest.of_bytes(b"another toc")
    with pytest.raises(DigestMismatch) as e:
        open_toc(blob, wrong)
    assert str(e.value) == f"digest mismatch for TOC: expected {wrong}, got {w.toc_digest}"


def test_a_changed_tar_split_is_refused(tmp_path):
    blob, w = seekable(tar_bytes([file("a", "x")]), tmp_path)
    offset = estargz.parse_footer(blob)
    region = blob[offset:-estargz.FOOTER_SIZE]
    at = region.rindex(b"SP") + 4           # the last tar-split piece's data
    region = region[:at] + bytes([region[at] ^ 1]) + region[at + 1:]
    with pytest.raises(DigestMismatch) as e:
        estargz.parse_toc_region(region, w.toc_digest)
    assert str(e.value).startswith("digest mismatch for tar-split: expected sha256:")


def test_a_tampered_chunk_is_refused_naming_file_and_range(tmp_path):
    content = b"A" * (3 * SMALL_CHUNK)
    blob, w = seekable(tar_bytes([file("dir/f", content)]), tmp_path, level=0,
                       chunk_size=SMALL_CHUNK)
    toc = open_toc(blob, w.toc_digest)
    c = toc.chunks(toc.entries["dir/f"])[1]
    member = bytearray(blob[c.blob_start:c.blob_end])
    at = member.index(b"A" * 100) + 50       # level 0: the bytes are stored as they are
    member[at] = ord("B")
    with pytest.raises(DigestMismatch) as e:
        estargz.read_chunk(bytes(member), c)
    # the member ends with the chunk: zlib's own check sees it first
    assert str(e.value) == (f"digest mismatch for dir/f bytes [{SMALL_CHUNK}, "
                            f"{2 * SMALL_CHUNK}): expected {c.digest}, got undecodable gzip "
                            "(Error -3 while decompressing data: incorrect data check)")
    with pytest.raises(DigestMismatch) as e:
        estargz.read_chunk(bytes(member[:-8]), c)      # so that only ours does
    tampered = Digest.of_bytes(b"A" * (at - member.index(b"A")) + b"B"
                               + b"A" * (SMALL_CHUNK - 1 - (at - member.index(b"A"))))
    assert str(e.value) == (f"digest mismatch for dir/f bytes [{SMALL_CHUNK}, "
                            f"{2 * SMALL_CHUNK}): expected {c.digest}, got {tampered}")
    garbled = bytes(member[:20]) + bytes(100)
    with pytest.raises(DigestMismatch) as e:
        estargz.read_chunk(garbled, c)
    assert str(e.value).startswith(f"digest mismatch for dir/f bytes [{SMALL_CHUNK}, ")
    assert estargz.read_chunk(blob[c.blob_start:c.blob_end], c) == b"A" * SMALL_CHUNK


def test_the_footer_is_stargz_snapshotters(tmp_path):
    blob, _ = seekable(tar_bytes([file("a", "x")]), tmp_path)
    offset = estargz.parse_footer(blob)
    assert blob[-51:] == (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x1a\x00SG\x16\x00"
                          + b"%016xSTARGZ" % offset + b"\x01\x00\x00\xff\xff" + bytes(8))
    assert blob[offset:offset + 4] == b"\x1f\x8b\x08\x04"
    with pytest.raises(ValueError):
        estargz.parse_footer(gzip.compress(tar_bytes([file("a", "x")]), mtime=0))


def test_a_big_toc_spans_several_carrier_members(tmp_path):
    raw = tar_bytes([file(os.urandom(40).hex(), os.urandom(8)) for _ in range(1500)])
    blob, w = seekable(raw, tmp_path)
    offset = estargz.parse_footer(blob)
    assert blob[offset:].count(b"\x1f\x8b\x08\x04") > 3
    toc = open_toc(blob, w.toc_digest)
    assert len(toc.entries) == 1500
    assert hashlib.sha256(gzip.decompress(blob)).hexdigest() == w.diff_id.hex


def test_a_tar_that_replaces_its_own_file_cannot_be_made_seekable(tmp_path):
    with pytest.raises(BadSeekableLayer) as e:
        seekable(tar_bytes([file("a", "1"), file("a", "2")]), tmp_path)
    assert str(e.value) == ("seekable layer tar: a later entry replaces a file of its own; "
                            "the tar cannot be rebuilt from its files")


def test_a_region_that_is_no_toc_is_named(tmp_path):
    blob, w = seekable(tar_bytes([file("a", "x")]), tmp_path)
    with pytest.raises(BadSeekableLayer) as e:
        offset = estargz.parse_footer(blob)
        estargz.parse_toc_region(blob[offset:offset + 40], w.toc_digest)
    assert str(e.value) == "seekable layer TOC: damaged carrier member at offset 0 of the TOC"
    with pytest.raises(BadSeekableLayer) as e:
        estargz.parse_toc_region(blob[:100], w.toc_digest)      # the tar's first member
    assert str(e.value) == "seekable layer TOC: no carrier member at offset 0 of the TOC"


def test_a_toc_too_big_is_refused_before_it_is_inflated_whole(tmp_path, monkeypatch):
    raw = tar_bytes([file(f"f{i}", "x") for i in range(20)])
    blob, w = seekable(raw, tmp_path)
    monkeypatch.setattr(estargz, "MAX_TOC", 1000)
    with pytest.raises(BadSeekableLayer) as e:
        open_toc(blob, w.toc_digest)
    assert str(e.value) == "seekable layer TOC: larger than 1000 bytes"
    with pytest.raises(BadSeekableLayer) as e:
        seekable(raw, tmp_path)
    assert str(e.value) == "seekable layer tar: its TOC would be larger than 1000 bytes"


def test_a_directory_listed_twice_keeps_its_place_and_takes_the_later_fields(tmp_path):
    raw = tar_bytes([directory("d", mode=0o700), file("d/f", "x"), directory("d", mode=0o755)])
    blob, w = seekable(raw, tmp_path)
    toc = open_toc(blob, w.toc_digest)
    assert list(toc.entries) == ["d", "d/f"] and toc.entries["d"].mode == 0o755
