import gzip
import io
import json
import os
import tarfile

import pytest

from layers.digest import Digest
from layers.errors import BadArchive, DigestMismatch, UnsafeArchive
from layers.source import legacy_config, open_source

from storetools import (directory, docker_archive, file, make_tar, oci_layout, podman_archive,
                        sha256, tar_bytes)

L1 = tar_bytes([file("etc/os-release", "ID=test\n")])
L2 = tar_bytes([file("app/run", "#!/bin/sh\n", mode=0o755)])


def refusal(path: str, kind=BadArchive) -> str:
    """The message `open_source(path)` refuses with, an error of `kind`."""
    with pytest.raises(kind) as e:
        with open_source(path):
            pass
    return str(e.value)


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
    got = sha256(blob.read_bytes())
    assert refusal(str(built.path), DigestMismatch) == (
        f"digest mismatch for blobs/sha256/{mdigest[7:]}: "
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
    assert refusal(str(built.path)) == f"cannot read {built.path}: index nesting too deep (a loop?)"


def test_layer_count_must_match_config(tmp_path):
    built = docker_archive(tmp_path / "img", [L1, L2], as_tar=False)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest[0]["Layers"].pop()
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    assert refusal(str(built.path)) == (
        f"cannot read {built.path}: manifest.json lists 1 layers, "
        "config 2 diff_ids")


def test_docker_layer_path_may_not_leave(tmp_path):
    built = docker_archive(tmp_path / "img", [L1], as_tar=False)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest[0]["Layers"] = ["../../etc/passwd"]
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    assert refusal(str(built.path), UnsafeArchive) == \
        "refusing archive entry '../../etc/passwd': path contains '..'"


def test_symlinked_blob_in_a_directory_is_not_followed(tmp_path):
    built = oci_layout(tmp_path / "img", [L1], compression=None)
    outside = tmp_path / "outside"
    outside.write_bytes(L1)
    blob = built.path / "blobs/sha256" / built.diff_ids[0][7:]
    blob.unlink()
    os.symlink(outside, blob)
    assert refusal(str(built.path), UnsafeArchive) == (
        f"refusing archive entry 'blobs/sha256/{built.diff_ids[0][7:]}': is a symlink")


def test_not_an_image_dir(tmp_path):
    (tmp_path / "d").mkdir()
    assert refusal(str(tmp_path / "d")) == (
        f"cannot read {tmp_path}/d: neither an OCI image layout "
        "nor a docker archive")


def test_missing_file(tmp_path):
    assert refusal(str(tmp_path / "nope.tar")) == \
        f"cannot read {tmp_path}/nope.tar: No such file or directory"


@pytest.mark.parametrize("maker", [docker_archive, podman_archive])
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_image_archive_is_not_taken_for_a_layer(tmp_path, compression, maker):
    from storetools import compress
    built = maker(tmp_path / "img.tar", [L1])
    packed = tmp_path / "img.tar.z"
    packed.write_bytes(compress(built.path.read_bytes(), compression))
    assert refusal(str(packed)) == (
        f"cannot read {packed}: a {compression}-compressed image "
        "archive; decompress it first")


def test_podman_docker_archive_with_its_manifest_last(tmp_path):
    built = podman_archive(tmp_path / "img.tar", [L1, L2], repo_tags=["localhost/app:1"])
    with open_source(str(built.path)) as sources:
        (src,) = sources
        assert src.names == ["localhost/app:1"]
        assert [str(d) for d in src.diff_ids] == built.diff_ids
        assert read_layers(src) == [L1, L2]


def test_legacy_archive_has_only_repositories_and_layer_dirs(tmp_path):
    built = podman_archive(tmp_path / "img.tar", [L1, L2], repo_tags=["localhost/app:1"],
                           omit=("manifest.json",))
    with open_source(str(built.path)) as sources:
        (src,) = sources
        assert src.config is None and src.names == ["localhost/app:1"]
        assert read_layers(src) == [L1, L2]     # bottom first, through the symlinks
        config = json.loads(src.config_for([Digest(d[7:]) for d in built.diff_ids]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": built.diff_ids}
    assert config["config"]["Cmd"] == ["/bin/sh"]     # the top layer's v1 JSON
    assert "id" not in config and "parent" not in config


def test_an_archive_that_lacks_a_layer_its_manifest_lists_is_refused(tmp_path):
    built = podman_archive(tmp_path / "img.tar", [L1, L2])
    name = built.diff_ids[1][7:] + ".tar"
    lacking = podman_archive(tmp_path / "lacking.tar", [L1, L2], omit=(name,))
    assert refusal(str(lacking.path)) == (
        f"cannot read {lacking.path}: manifest.json lists {name}, "
        "which the archive lacks")


def test_archive_names_without_a_manifest_are_refused_not_taken_for_a_layer(tmp_path):
    built = podman_archive(tmp_path / "img.tar", [L1],
                           omit=("manifest.json", "repositories"))
    assert refusal(str(built.path)) == (
        f"cannot read {built.path}: an image archive without "
        "manifest.json, index.json or repositories")


def test_a_root_filesystem_holding_manifest_json_is_a_layer(tmp_path):
    path = make_tar(tmp_path / "rootfs.tar", [file("manifest.json", "[]"),
                                              file("repositories", "{}"), directory("bin")])
    with open_source(str(path)) as sources:
        (src,) = sources
        assert src.config is None and len(src.layers) == 1


def test_a_link_inside_an_archive_stays_inside(tmp_path):
    # `<id>/layer.tar` pointing far above the archive's root resolves at its root
    built = podman_archive(tmp_path / "img.tar", [L1], repo_tags=["app:1"],
                           omit=("manifest.json",))
    with tarfile.open(built.path) as tf:
        members = [(m, tf.extractfile(m).read() if m.isreg() else None)
                   for m in tf.getmembers()]
    with tarfile.open(tmp_path / "up.tar", "w") as tf:
        for m, data in members:
            if m.issym():
                m.linkname = "../../../../" + m.linkname.removeprefix("../")
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    with open_source(str(tmp_path / "up.tar")) as sources:
        assert read_layers(sources[0]) == [L1]


def test_containers_image_dir_as_podman_saves_docker_dir(tmp_path):
    built = oci_layout(tmp_path / "oci", [L1, L2], compression="gzip")
    index = json.loads((built.path / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"][7:]
    d = tmp_path / "dir"
    d.mkdir()
    for blob in (built.path / "blobs/sha256").iterdir():
        os.link(blob, d / blob.name)
    (d / "manifest.json").write_bytes((built.path / "blobs/sha256" / mdigest).read_bytes())
    (d / "version").write_text("Directory Transport Version: 1.1\n")
    with open_source(str(d)) as sources:
        (src,) = sources
        assert str(src.manifest_digest) == "sha256:" + mdigest
        assert [str(x) for x in src.diff_ids] == built.diff_ids
        assert [gzip.decompress(x) for x in read_layers(src)] == [L1, L2]
