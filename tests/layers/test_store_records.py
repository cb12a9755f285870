import json

import pytest

from layers.digest import Digest
from layers.errors import BadReference, CorruptRecord
from layers.records import (Container, Image, Layer, check_container_name, decode,
                            encode, parse_image_name)

D1 = Digest("1" * 64)
D2 = Digest("2" * 64)


def layer(**kw):
    base = dict(id=D2, diff_id=D1, parent=D1, compressed_digest=None, created=1.5,
                tar_size=10240, size=8192)
    base.update(kw)
    return Layer(**base)


def test_round_trip_of_every_kind():
    image = Image(id="3" * 64, names=("a:1", "r.example:5000/x/y:z"), layers=(D1, D2),
                  config='{"a": 1}', manifest_digest=D1, created=2.0)
    container = Container(id="4" * 64, name="c_1", image="3" * 64, layers=(D1,),
                          driver="vfs", created=3.0, incomplete=True, lease="12-ab")
    for record in (layer(), image, container):
        assert decode(type(record), encode(record)) == record


def test_records_carry_a_schema_version():
    doc = json.loads(encode(layer()))
    assert doc["schema"] == 1
    doc["schema"] = 99
    with pytest.raises(CorruptRecord) as e:
        decode(Layer, json.dumps(doc).encode(), "/x.json")
    assert str(e.value) == "corrupt record /x.json: unknown schema 99"


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(parent="sha256:../../etc"), "invalid digest: 'sha256:../../etc'"),
    (lambda d: d.pop("diff_id"), "missing field 'diff_id'"),
    (lambda d: d.update(size="big"), "field 'size' has the wrong type"),
    (lambda d: d.update(incomplete="no"), "field 'incomplete' has the wrong type"),
])
def test_defects_are_corrupt_records(mutate, reason):
    doc = json.loads(encode(layer()))
    mutate(doc)
    with pytest.raises(CorruptRecord) as e:
        decode(Layer, json.dumps(doc).encode(), "/l.json")
    assert str(e.value) == f"corrupt record /l.json: {reason}"


def test_not_json():
    with pytest.raises(CorruptRecord):
        decode(Layer, b"{half", "/l.json")


@pytest.mark.parametrize("text, want", [
    ("alpine", "alpine:latest"), ("alpine:3.18", "alpine:3.18"),
    ("docker.io/library/alpine:3", "docker.io/library/alpine:3"),
    ("localhost:5000/a/b", "localhost:5000/a/b:latest"), ("a_b.c-d:v1.0_x", "a_b.c-d:v1.0_x"),
])
def test_image_names(text, want):
    assert parse_image_name(text) == want


@pytest.mark.parametrize("text", ["", "UPPER", "a:", ":t", "a/../b", "a b", "/abs", "a:t:t",
                                  "a" * 300, "-a"])
def test_bad_image_names(text):
    with pytest.raises(BadReference) as e:
        parse_image_name(text)
    assert str(e.value) == f"invalid image name: {text!r}"


def test_container_names():
    assert check_container_name("web-1.a_b") == "web-1.a_b"
    for bad in ("", "-x", "a/b", "x" * 200, "a" * 64):
        with pytest.raises(BadReference):
            check_container_name(bad)
