"""check [--verify] [--repair]: records against the disk both ways, layer
contents against their diffIDs, and what a repair does about each."""

import os
import shutil
from pathlib import Path

import pytest

from storetools import directory, file, oci_layout, tar_bytes

BASE = tar_bytes([directory("etc"), file("etc/os-release", "ID=base\n" * 100),
                  file("bin/sh", "sh" * 1000, mode=0o755)])
APP = tar_bytes([file("app/run", "run\n" * 100)])


@pytest.fixture
def env(store_env, tmp_path):
    store_env.ok("import", "-q", str(oci_layout(tmp_path / "a", [BASE, APP]).path),
                 "--name", "app:1")
    store_env.ok("create", "app:1", "--name", "c", "-v", "data:/data")
    return store_env


def layer_of(env, index: int) -> tuple[str, Path]:
    info = env.open().inspect("app:1")
    lid = info["layers"][index]
    return lid[7:], env.root / "layers" / lid[7:] / "diff"


def test_a_clean_store_has_no_problem_and_verifies(env):
    r = env.cli("check", "--verify")
    assert (r.code, r.out) == (0, "")


def test_verify_names_the_layer_and_the_file_with_a_changed_byte(env):
    hex_, diff = layer_of(env, 0)
    path = diff / "bin/sh"
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    path.write_bytes(bytes(data))
    assert env.cli("check").code == 0                 # records and dirs agree
    r = env.cli("check", "--verify")
    assert r.code == 1
    assert r.out == (f"layer {hex_[:12]} is corrupt: bin/sh: contents differ from the "
                     "layer's tar\n")
    r = env.cli("check", "--verify", "--repair")
    assert r.code == 1                                  # the container still uses it
    assert r.out.splitlines()[1:] == [
        f"kept image {env.open().image('app:1').id[:12]}: container(s) c use it; "
        "remove them",
        f"left: layer {hex_[:12]} is corrupt: bin/sh: contents differ from the layer's tar"]
    env.ok("rm", "c")
    r = env.cli("check", "--verify", "--repair")
    assert r.code == 0, r.out
    lines = r.out.splitlines()
    assert lines[1].startswith("removed image ") and lines[1].endswith(
        f"(damaged layer {hex_[:12]})")
    assert f"removed damaged layer {hex_[:12]}" in lines
    assert env.ok("images", "-q").out == ""


def test_records_against_the_disk_both_ways(env):
    store = env.open()
    c = store.container("c")
    hex_, diff = layer_of(env, 1)
    shutil.rmtree(diff)                                         # a record without content
    os.makedirs(env.root / "layers" / ("e" * 64) / "diff")      # content without record
    shutil.rmtree(store.containers.container_dir(c.id))
    os.makedirs(env.root / "containers" / ("d" * 64))
    shutil.rmtree(store.paths.volume_dir("data"))
    os.makedirs(env.root / "volumes" / "stray" / "_data")
    (env.root / "images" / ("f" * 64 + ".json")).write_text("{not json")
    r = env.cli("check")
    assert r.code == 1
    # the layer dir without record went when the store was opened
    assert r.out.splitlines() == [
        f"removed layer dir without record {'e' * 64}",
        f"corrupt record {env.root}/images/{'f' * 64}.json: not JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        f"layer {hex_[:12]} has no content",
        "container c has no dir",
        f"container dir {'d' * 64} has no record",
        "volume data has no data dir",
        "volume dir stray has no record",
    ]
    image_id = store.image("app:1").id
    base_hex = layer_of(env, 0)[0]
    r = env.cli("check", "--repair")
    assert r.code == 0, r.out
    assert r.out.splitlines()[6:] == [
        f"removed corrupt record {env.root}/images/{'f' * 64}.json",
        "removed container c (its dir was gone)",
        f"removed {env.root}/containers/{'d' * 64}",
        f"removed image {image_id[:12]} (damaged layer {hex_[:12]})",
        f"removed damaged layer {hex_[:12]}",
        "recreated the data dir of volume data (empty)",
        "adopted volume dir stray as a named volume",
        f"removed unreferenced layer {base_hex[:12]}",
    ]
    assert env.cli("check").out == ""
    assert {v.name for v in env.open().list_volumes()} == {"data", "stray"}
