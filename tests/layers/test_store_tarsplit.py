"""Tar-splits: the exact tar of a layer comes back from its dir, for tars of
every kind an import meets; what cannot come back gets no split; damage is
named, never exported."""

import gzip
import io
import os
import shutil
import subprocess
import tarfile

import pytest

from layers import tarsplit
from layers.archive import ExtractOptions, extract_layer
from layers.errors import LayerCorrupt

from storetools import TarEntry, compress, directory, file, hardlink, symlink, tar_bytes

ROOT = os.geteuid() == 0


def extract(tmp_path, blob: bytes):
    dest = tmp_path / "diff"
    dest.mkdir()
    split = tmp_path / "tar-split.gz"
    res = extract_layer(io.BytesIO(blob), str(dest), ExtractOptions(privileged=ROOT),
                        where="t.tar", split_path=str(split))
    return dest, split, res


def rebuilt(dest, split) -> bytes:
    return b"".join(tarsplit.replay(str(split), str(dest), "l1"))


def gnu_tar(tmp_path, fmt: str) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(0, 2)
        f.write(b"end\n")
    (src / os.fsdecode(b"bad\xffname")).write_text("x")
    os.link(src / "sparse", src / "hl")
    (src / ("d" * 120)).mkdir()
    (src / ("d" * 120) / ("f" * 120)).write_text("long")
    out = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(out), "-C", str(src),
                    "."], check=True)
    return out.read_bytes()


CASES = {
    "plain": lambda tmp: tar_bytes([directory("etc"), file("etc/a", "hello" * 999),
                                    hardlink("etc/b", "etc/a"), symlink("l", "etc/a"),
                                    file("empty"), TarEntry("fifo", tarfile.FIFOTYPE)]),
    "markers-with-data": lambda tmp: tar_bytes([file(".wh.x", "data in a whiteout"),
                                                file("d/.wh..wh..opq", "y"),
                                                file("d/f", os.urandom(3 << 20))]),
    "long-and-odd-names": lambda tmp: tar_bytes([
        file("n" * 200 + "/" + "m" * 200, "long"), file("ü/ö", "utf"),
        file(os.fsdecode(b"raw\xfe"), "raw"),
        file("x", "a", pax={"SCHILY.xattr.user.k": "v"})]),
    "trailing-padding": lambda tmp: tar_bytes([file("a", "x")]) + b"\0" * 10240,
    "gnu-sparse": lambda tmp: gnu_tar(tmp, "gnu"),
    "posix-sparse": lambda tmp: gnu_tar(tmp, "posix"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_the_exact_tar_comes_back(tmp_path, case, compression):
    raw = CASES[case](tmp_path)
    dest, split, res = extract(tmp_path, compress(raw, compression))
    assert res.split and split.exists()
    assert rebuilt(dest, split) == raw
    # the split holds no file contents (but of sparse files and markers)
    assert res.tar_size < 65536 or len(gzip.decompress(split.read_bytes())) < 65536


@pytest.mark.parametrize("entries", [
    [file("a", "1"), file("a", "2")],                  # a later entry replaces a file
    [file("d/a", "1"), file("d", "2")],                # ... or the dir holding one
    [file("a", "1"), directory("a")],
])
def test_a_tar_that_replaces_its_own_files_gets_no_split(tmp_path, entries):
    dest, split, res = extract(tmp_path, tar_bytes(entries))
    assert not res.split and not split.exists()


def test_a_changed_file_is_named(tmp_path):
    raw = tar_bytes([file("etc/a", "a" * 5000), file("etc/b", "b" * 5000)])
    dest, split, _ = extract(tmp_path, raw)
    with open(dest / "etc/b", "r+b") as f:
        f.seek(100)
        f.write(b"X")
    with pytest.raises(LayerCorrupt) as e:
        rebuilt(dest, split)
    assert str(e.value) == "layer l1 is corrupt: etc/b: contents differ from the layer's tar"
    (dest / "etc/b").write_bytes(b"short")
    with pytest.raises(LayerCorrupt) as e:
        rebuilt(dest, split)
    assert str(e.value) == "layer l1 is corrupt: etc/b: shorter than its 5000 bytes"
    os.unlink(dest / "etc/a")
    with pytest.raises(LayerCorrupt) as e:
        rebuilt(dest, split)
    assert str(e.value).startswith("layer l1 is corrupt: etc/a: cannot open (")


def test_a_damaged_split_is_named(tmp_path):
    dest, split, _ = extract(tmp_path, tar_bytes([file("a", "x" * 100)]))
    split.write_bytes(split.read_bytes()[:-12])
    with pytest.raises(LayerCorrupt) as e:
        rebuilt(dest, split)
    assert str(e.value).startswith("layer l1 is corrupt: tar-split.gz: damaged tar-split (")


def test_a_failed_extraction_leaves_no_split(tmp_path):
    raw = tar_bytes([file("a", "x" * 5000)])[:1024]
    with pytest.raises(Exception):
        extract(tmp_path, raw)
    assert not (tmp_path / "tar-split.gz").exists()
    shutil.rmtree(tmp_path / "diff")
