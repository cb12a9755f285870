"""`layers analyze`: per-layer A/C/D, bytes later layers wasted, efficiency."""

import json

import pytest

from layers import analyze

from storetools import directory, file, oci_layout, tar_bytes

BASE = tar_bytes([
    directory("etc"),
    file("etc/conf", "x" * 1000),
    file("etc/keep", "k" * 10),
    directory("var/cache"),
    file("var/cache/big", "c" * 5000),
    file("var/cache/small", "s" * 500),
    file("tmp/build.log", "l" * 200),
])
MIDDLE = tar_bytes([
    file("etc/conf", "y" * 300),          # overwrites: 1000 wasted
    file("tmp/.wh.build.log"),             # deletes: 200 wasted
    file("opt/pkg", "p" * 2000),
])
TOP = tar_bytes([
    file("var/.wh.cache"),                 # deletes a dir: 5500 wasted
    file("opt/pkg", "q" * 2000),          # overwrites again: 2000 wasted
    file("etc/new", "n" * 100),
])


@pytest.fixture
def image(store_env, tmp_path):
    oci_layout(tmp_path / "img", [BASE, MIDDLE, TOP], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "img"), "--name", "fat:1")
    return store_env


def test_report_per_layer_and_waste(image):
    report = image.open().analyze("fat:1")
    base, middle, top = report.layers
    assert base.changes == [("A", "/etc"), ("A", "/etc/conf"), ("A", "/etc/keep"),
                            ("A", "/tmp"), ("A", "/tmp/build.log"), ("A", "/var"),
                            ("A", "/var/cache"), ("A", "/var/cache/big"),
                            ("A", "/var/cache/small")]
    assert middle.changes == [("C", "/etc/conf"), ("A", "/opt"), ("A", "/opt/pkg"),
                              ("D", "/tmp/build.log")]
    assert top.changes == [("A", "/etc/new"), ("C", "/opt/pkg"), ("D", "/var/cache")]
    assert (base.file_bytes, middle.file_bytes, top.file_bytes) == (6710, 2300, 2100)
    assert (base.wasted_bytes, middle.wasted_bytes, top.wasted_bytes) == (6700, 2000, 0)
    assert report.total_bytes == 11110 and report.wasted_bytes == 8700
    assert report.efficiency == pytest.approx(1 - 8700 / 11110)
    assert [(w.path, w.bytes, w.copies) for w in report.wasted_paths] == [
        ("/var/cache/big", 5000, 1), ("/opt/pkg", 2000, 1), ("/etc/conf", 1000, 1),
        ("/var/cache/small", 500, 1), ("/tmp/build.log", 200, 1)]
    assert all(lr.size > 0 for lr in report.layers)


def test_opaque_dir_wastes_what_it_hides(store_env, tmp_path):
    oci_layout(tmp_path / "img", [
        tar_bytes([file("srv/a", "a" * 400), file("srv/b", "b" * 50)]),
        tar_bytes([file("srv/.wh..wh..opq"), file("srv/b", "B" * 60)]),
        tar_bytes([file("srv/b", "c" * 70)])], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "img"), "--name", "opq:1")
    report = store_env.open().analyze("opq:1")
    assert [lr.wasted_bytes for lr in report.layers] == [450, 60, 0]
    assert report.wasted_paths[0].path == "/srv/a"
    assert [(w.path, w.bytes, w.copies) for w in report.wasted_paths
            if w.path == "/srv/b"] == [("/srv/b", 110, 2)]


def test_an_efficient_image(store_env, tmp_path):
    oci_layout(tmp_path / "img", [tar_bytes([file("a", "1" * 10)]),
                                  tar_bytes([file("b", "2" * 10)])], ref_name="latest")
    store_env.ok("import", "-q", str(tmp_path / "img"), "--name", "lean:1")
    report = store_env.open().analyze("lean:1")
    assert report.wasted_bytes == 0 and report.efficiency == 1.0
    assert report.wasted_paths == []


def test_empty_layers():
    assert analyze.analyze([]).efficiency == 1.0


def test_cli_text_and_json(image):
    doc = json.loads(image.ok("analyze", "fat:1", "--format", "json", "--top", "2").out)
    assert [(lr["added"], lr["changed"], lr["deleted"]) for lr in doc["layers"]] == \
        [(9, 0, 0), (2, 1, 1), (1, 1, 1)]
    assert doc["wasted_bytes"] == 8700 and doc["total_bytes"] == 11110
    assert doc["wasted_paths"] == [{"path": "/var/cache/big", "bytes": 5000, "copies": 1},
                                   {"path": "/opt/pkg", "bytes": 2000, "copies": 1}]
    assert doc["layers"][2]["changes"][2] == {"kind": "D", "path": "/var/cache"}
    lines = image.ok("analyze", "fat:1").lines
    assert lines[0].split() == ["LAYER", "SIZE", "ADDED", "CHANGED", "DELETED", "WASTED"]
    assert len(lines[1:4]) == 3
    assert "efficiency: 21.7%" in lines
    assert "largest wasted paths:" in lines
    assert lines[-5].split()[-1] == "/var/cache/big"
    assert image.cli("analyze", "nope").code == 1
