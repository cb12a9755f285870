"""lazylayer.py in-process: a layer's placeholder tree built from a seekable
blob's TOC, then filled from the blob's bytes, against the plain tar extracted
(`archive.extract_layer`) with the same options — rootful and rootless
(override_stat) alike; failures, interruptions, reuse of local files."""

import io
import os
import stat
import threading

import pytest

from layers import estargz, layout, lazylayer
from layers.archive import ExtractOptions, extract_layer
from layers.errors import DigestMismatch

from storetools import TarEntry, directory, file, hardlink, symlink, tar_bytes

ROOT = os.geteuid() == 0
CHUNK = 64 << 10                 # small chunks: many per file, fast
BIG = os.urandom(5 * CHUNK + 17)
CAP = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def layer_tar() -> bytes:
    return tar_bytes([
        directory("etc", mode=0o750, uid=5, gid=6, mtime=1_600_000_000),
        file("etc/passwd", "root:x:0:0\n", mode=0o640, uid=5, gid=6),
        file("big", BIG),
        file("empty"),
        file("setuid", os.urandom(3000), mode=0o4755),
        file("sparse", b"\0" * (3 * CHUNK) + b"x" + b"\0" * CHUNK),
        file("zeros", b"\0" * (2 * CHUNK)),
        hardlink("big-again", "big"),
        symlink("link", "big"),
        TarEntry("fifo", b"6", mode=0o600),
        file("attrs", "a", pax={"SCHILY.xattr.user.color": "blue"}),
        file("ping", "cap", mode=0o755, pax={"SCHILY.xattr.security.capability": CAP}),
        directory("opaque"), file("opaque/.wh..wh..opq"), file(".wh.gone"),
    ])


def seekable(tar: bytes):
    out = io.BytesIO()
    written = estargz.write_seekable(io.BytesIO(tar), out, chunk_size=CHUNK)
    blob = out.getvalue()
    region = blob[estargz.parse_footer(blob[-estargz.FOOTER_SIZE:]):-estargz.FOOTER_SIZE]
    return blob, written, region


def snapshot(root) -> dict:
    """path → what a container sees of it and how the store keeps it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in sorted(os.listxattr(path, follow_symlinks=False))}
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            # a directory's and a whiteout marker's mtime: the time of extraction
            times = None if stat.S_ISDIR(st.st_mode) or name.startswith(".wh.") \
                else st.st_mtime_ns
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                                                times, xattrs, data, link)
    return out


def placeholders(tmp_path):
    """The rootless placeholder tree of `layer_tar()` in tmp_path/diff:
    (blob, index, diff, options)."""
    blob, written, region = seekable(layer_tar())
    options = ExtractOptions(override_stat=True)
    diff = tmp_path / "diff"
    diff.mkdir()
    index = lazylayer.LayerIndex(estargz.parse_toc_region(region, written.toc_digest), "t")
    lazylayer.build_placeholders(index, str(diff), options, "/s")
    return blob, index, diff, options


OPTIONS = [pytest.param(ExtractOptions(privileged=True), id="rootful",
                        marks=pytest.mark.skipif(not ROOT, reason="needs root")),
           pytest.param(ExtractOptions(override_stat=True), id="rootless")]


@pytest.mark.parametrize("options", OPTIONS)
def test_placeholders_filled_are_what_extraction_gives(tmp_path, options):
    tar = layer_tar()
    blob, written, region = seekable(tar)
    want = tmp_path / "want"
    want.mkdir()
    extract_layer(io.BytesIO(tar), str(want), options)
    diff = tmp_path / "lazy" / "diff"
    diff.mkdir(parents=True)
    index = lazylayer.LayerIndex(estargz.parse_toc_region(region, written.toc_digest), "t")
    lazylayer.build_placeholders(index, str(diff), options, "/run/x/fetcher.sock")
    assert os.getxattr(diff, layout.LAZY_XATTR) == b"/run/x/fetcher.sock"
    assert sorted(lazylayer.incomplete_files(str(diff), index)) == \
        ["attrs", "big", "etc/passwd", "ping", "setuid", "sparse", "zeros"]
    before = snapshot(diff)
    assert before.keys() == snapshot(want).keys()
    assert before["big"][5] == {layout.LAZY_XATTR: b"", **snapshot(want)["big"][5]}
    assert os.stat(diff / "big").st_blocks == 0
    got = []
    lazylayer.fill(str(diff), index, lazylayer.incomplete_files(str(diff), index),
                   lambda s, e: blob[s:e], options, on_done=got.append)
    assert sorted(got) == ["attrs", "big", "etc/passwd", "ping", "setuid", "sparse", "zeros"]
    os.removexattr(diff, layout.LAZY_XATTR)          # as finish does, to compare
    assert snapshot(diff) == snapshot(want)
    os.setxattr(diff, layout.LAZY_XATTR, b"x")
    lazylayer.finish(str(diff), index, written.diff_id, str(tmp_path / "lazy" / "split.gz"))
    assert layout.LAZY_XATTR not in os.listxattr(diff)
    assert os.stat(diff / "zeros").st_blocks == 0     # holes stay holes


def test_a_failed_fetch_keeps_what_was_complete_and_marks_the_rest(tmp_path):
    blob, index, diff, options = placeholders(tmp_path)
    lazylayer.fill(str(diff), index, ["etc/passwd"], lambda s, e: blob[s:e], options)

    def gone(start, end):
        raise DigestMismatch("x", "a", "b")           # as a registry's failure would

    with pytest.raises(lazylayer.FetchFailed) as e:
        lazylayer.fill(str(diff), index, ["big", "setuid"], gone, options)
    assert e.value.path == "big" and e.value.start == index.files["big"].chunks[0].blob_start
    assert not lazylayer.is_incomplete(str(diff), "etc/passwd")
    assert lazylayer.is_incomplete(str(diff), "big")
    assert lazylayer.is_incomplete(str(diff), "setuid")
    lazylayer.fill(str(diff), index, ["big"], lambda s, e: blob[s:e], options)
    assert (diff / "big").read_bytes() == BIG


def test_scattered_files_are_received_several_ranges_at_once(tmp_path):
    """A partial pull's missing files lie apart in the blob: one range each,
    and those ranges in flight together, not each waiting for the one
    before (a round trip each)."""
    blob, index, diff, options = placeholders(tmp_path)
    wanted = ["etc/passwd", "setuid", "attrs"]
    assert len(lazylayer.ranges(c for p in wanted for c in index.files[p].chunks)) == 3
    both_asked = threading.Barrier(2, timeout=10)
    calls = []

    def read_range(start, end):
        calls.append(start)
        if len(calls) <= 2:
            both_asked.wait()              # broken if the second is asked only after the first
        return blob[start:end]

    lazylayer.fill(str(diff), index, wanted, read_range, options,
                   in_flight=lazylayer.RANGES_IN_FLIGHT)
    assert not any(lazylayer.is_incomplete(str(diff), p) for p in wanted)
    assert len(calls) == 3


def test_a_range_failing_among_several_in_flight_names_its_file(tmp_path):
    blob, index, diff, options = placeholders(tmp_path)
    bad = index.files["setuid"].chunks[0].blob_start

    def read_range(start, end):
        if start == bad:
            raise DigestMismatch("x", "a", "b")
        return blob[start:end]

    with pytest.raises(lazylayer.FetchFailed) as e:
        lazylayer.fill(str(diff), index, ["etc/passwd", "setuid", "attrs"], read_range, options,
                       in_flight=lazylayer.RANGES_IN_FLIGHT)
    assert e.value.path == "setuid" and e.value.start == bad
    assert not lazylayer.is_incomplete(str(diff), "etc/passwd")
    assert lazylayer.is_incomplete(str(diff), "setuid")
    assert lazylayer.is_incomplete(str(diff), "attrs")    # received, never written


def test_a_tampered_chunk_is_refused_before_a_byte_is_written(tmp_path):
    blob, index, diff, options = placeholders(tmp_path)
    c = index.files["setuid"].chunks[0]
    bad = bytearray(blob)
    bad[(c.blob_start + c.blob_end) // 2] ^= 0xFF
    with pytest.raises(lazylayer.FetchFailed) as e:
        lazylayer.fill(str(diff), index, ["setuid"], lambda s, e: bytes(bad[s:e]), options)
    assert str(e.value).startswith(f"layer t: setuid: bytes {c.blob_start}-{c.blob_end} "
                                   "of the blob: ")
    assert lazylayer.is_incomplete(str(diff), "setuid")
    assert os.stat(diff / "setuid").st_blocks == 0


def test_reuse_clones_only_content_that_hashes_right(tmp_path):
    tar = layer_tar()
    blob, written, region = seekable(tar)
    options = ExtractOptions(override_stat=True)
    old = tmp_path / "old"
    old.mkdir()
    extract_layer(io.BytesIO(tar), str(old), options)
    index = lazylayer.LayerIndex(estargz.parse_toc_region(region, written.toc_digest), "t")
    lazylayer.write_contents(index, str(tmp_path / "contents.json"))
    with open(old / "setuid", "r+b") as f:            # damaged since: not reused
        f.write(b"!")
    diff = tmp_path / "diff"
    diff.mkdir()
    lazylayer.build_placeholders(index, str(diff), options, "/s")
    local = lazylayer.local_contents([(str(old), str(tmp_path / "contents.json")),
                                      (str(tmp_path / "gone"), str(tmp_path / "none.json"))])
    done = lazylayer.reuse(str(diff), index, local, options)
    assert sorted(done) == ["attrs", "big", "etc/passwd", "ping", "sparse", "zeros"]
    assert lazylayer.incomplete_files(str(diff), index) == ["setuid"]
    assert (diff / "big").read_bytes() == BIG


def test_neighbours_are_the_whole_files_stored_next_to_one_in_the_blob():
    small = {f"d/{c}": os.urandom(200 + 50 * i) for i, c in enumerate("abcdefg")}
    tar = tar_bytes([directory("d"), *(file(n, data) for n, data in small.items()),
                     file("d/empty"), file("after", BIG)])
    blob, written, region = seekable(tar)
    index = lazylayer.LayerIndex(estargz.parse_toc_region(region, written.toc_digest), "t")

    def span(p):
        cs = index.files[p].chunks
        return cs[-1].blob_end - cs[0].blob_start

    names = list(small)                       # blob order is tar order here
    everything = index.neighbours("d/d", 1 << 20, lambda p: True)
    assert everything == [n for n in names if n != "d/d"] + ["after"]
    # each side's walk stops at a file it may not take, or one over its bytes
    assert index.neighbours("d/d", 1 << 20, lambda p: p not in ("d/b", "d/f")) == ["d/c", "d/e"]
    limit = span("d/b") + span("d/c")       # the later files are bigger: e fits, e + f not
    assert span("d/e") <= limit < span("d/e") + span("d/f")
    assert index.neighbours("d/d", limit, lambda p: True) == ["d/b", "d/c", "d/e"]
    assert index.neighbours("d/d", span("d/c") - 1, lambda p: True) == []
    # together they are one range: fetched by one request, each chunk checked
    taken = ["d/d", *everything]
    assert len(lazylayer.ranges(c for p in taken for c in index.files[p].chunks)) == 1
    assert index.neighbours("d/empty", 1 << 20, lambda p: True) == []   # no chunk: none
