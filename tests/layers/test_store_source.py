import json
import os

import pytest

from layers.errors import BadArchive, DigestMismatch, UnsafeArchive
from layers.source import open_source

from storetools import docker_archive, file, make_tar, oci_layout, sha256, tar_bytes

L1 = tar_bytes([file("etc/os-release", "ID=test\n")])
L2 = tar_bytes([file("app/run", "#!/bin/sh\n", mode=0o755)])


def read_layers(src):
    out = []
    for blob in src.layers:
        with blob.open() as f:
            out.append(f.read())
    return out


@pytest.mark.parametrize("as_tar", [False, True])
def test_oci_layout(tmp_path, as_tar):
    built = oci_layout(tmp_path / "img", [L1, L2], ref_name="example.org/app:1",
                       as_tar=as_tar, compression=None)
    with open_source(str(built.path)) as sources:
        (src,) = sources
        assert src.names == ["example.org/app:1"]
        assert [str(d) for d in src.diff_ids] == built.diff_ids
        assert [str(b.digest) for b in src.layers] == built.diff_ids
        assert read_layers(src) == [L1, L2]
        assert src.manifest_digest is not None


@pytest.mark.parametrize("as_tar", [False, True])
def test_docker_archive(tmp_path, as_tar):
    built = docker_archive(tmp_path / "img", [L1, L2], repo_tags=["app:2", "bad name"],
                           as_tar=as_tar)
    with open_source(str(built.path)) as sources:
        (src,) = sources
        assert src.names == ["app:2"]
        assert [str(b.diff_id) for b in src.layers] == built.diff_ids
        assert read_layers(src) == [L1, L2]


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_anything_else_is_a_bare_layer(tmp_path, compression):
    path = make_tar(tmp_path / "l.tar", [file("bin/sh", "x")], compression)
    with open_source(str(path)) as sources:
        (src,) = sources
        assert src.config is None and len(src.layers) == 1


def test_bad_manifest_digest_names_both(tmp_path):
    built = oci_layout(tmp_path / "img", [L1])
    index = json.loads((built.path / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    blob = built.path / "blobs/sha256" / mdigest[7:]
    blob.write_bytes(blob.read_bytes() + b" ")
    with pytest.raises(DigestMismatch) as e:
        with open_source(str(built.path)):
            pass
    got = sha256(blob.read_bytes())
    assert str(e.value) == (f"digest mismatch for blobs/sha256/{mdigest[7:]}: "
                            f"expected {mdigest}, got {got}")


def test_endless_index_nesting_is_refused(tmp_path):
    # Content addressing rules out a true loop; a chain past the limit stands in.
    built = oci_layout(tmp_path / "img", [L1])
    blobs = built.path / "blobs/sha256"
    index_type = "application/vnd.oci.image.index.v1+json"
    child = json.loads((built.path / "index.json").read_text())
    for _ in range(12):
        raw = json.dumps(child).encode()
        d = sha256(raw)
        (blobs / d[7:]).write_bytes(raw)
        child = {"schemaVersion": 2,
                 "manifests": [{"mediaType": index_type, "digest": d, "size": len(raw)}]}
    (built.path / "index.json").write_text(json.dumps(child))
    with pytest.raises(BadArchive) as e:
        with open_source(str(built.path)):
            pass
    assert str(e.value) == f"cannot read {built.path}: index nesting too deep (a loop?)"


def test_layer_count_must_match_config(tmp_path):
    built = docker_archive(tmp_path / "img", [L1, L2], as_tar=False)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest[0]["Layers"].pop()
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadArchive) as e:
        with open_source(str(built.path)):
            pass
    assert str(e.value) == (f"cannot read {built.path}: manifest.json lists 1 layers, "
                            "config 2 diff_ids")


def test_docker_layer_path_may_not_leave(tmp_path):
    built = docker_archive(tmp_path / "img", [L1], as_tar=False)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest[0]["Layers"] = ["../../etc/passwd"]
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArchive) as e:
        with open_source(str(built.path)):
            pass
    assert str(e.value) == "refusing archive entry '../../etc/passwd': path contains '..'"


def test_symlinked_blob_in_a_directory_is_not_followed(tmp_path):
    built = oci_layout(tmp_path / "img", [L1], compression=None)
    outside = tmp_path / "outside"
    outside.write_bytes(L1)
    blob = built.path / "blobs/sha256" / built.diff_ids[0][7:]
    blob.unlink()
    os.symlink(outside, blob)
    with open_source(str(built.path)) as sources:
        with pytest.raises(UnsafeArchive):
            read_layers(sources[0])


def test_not_an_image_dir(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(BadArchive) as e:
        with open_source(str(tmp_path / "d")):
            pass
    assert str(e.value) == (f"cannot read {tmp_path}/d: neither an OCI image layout "
                            "nor a docker archive")


def test_missing_file(tmp_path):
    with pytest.raises(BadArchive) as e:
        with open_source(str(tmp_path / "nope.tar")):
            pass
    assert str(e.value) == f"cannot read {tmp_path}/nope.tar: No such file or directory"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_image_archive_is_not_taken_for_a_layer(tmp_path, compression):
    from storetools import compress
    built = docker_archive(tmp_path / "img.tar", [L1])
    packed = tmp_path / "img.tar.z"
    packed.write_bytes(compress(built.path.read_bytes(), compression))
    with pytest.raises(BadArchive) as e:
        with open_source(str(packed)):
            pass
    assert str(e.value) == (f"cannot read {packed}: a {compression}-compressed image "
                            "archive; decompress it first")
