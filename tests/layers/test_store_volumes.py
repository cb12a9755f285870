"""Named and anonymous volumes, mount specs recorded in containers, and the
rules between them (vfs store, no mounts)."""

import json
import os
from pathlib import Path

import pytest

from layers.errors import BadReference, NameInUse, UsageError, VolumeInUse, VolumeUnknown
from layers.records import (Container, MountSpec, Volume, decode, encode, parse_tmpfs_spec,
                            parse_volume_spec)

from storetools import file, make_tar


@pytest.mark.parametrize("text, want", [
    ("/data", MountSpec("volume", None, "/data")),
    ("db:/var/lib/db", MountSpec("volume", "db", "/var/lib/db")),
    ("db:/var/lib/db/:ro", MountSpec("volume", "db", "/var/lib/db", ("ro",))),
    ("/srv/x:/x:ro,nosuid", MountSpec("bind", "/srv/x", "/x", ("ro", "nosuid"))),
    ("/srv//x/:/a//b", MountSpec("bind", "/srv/x", "/a/b")),
])
def test_volume_specs(text, want):
    assert parse_volume_spec(text) == want


@pytest.mark.parametrize("text, reason", [
    ("", "mount spec"), ("a:b:c:d", "mount spec"), ("db:", "mount spec"),
    ("db:relative", "mount spec (paths must be absolute)"),
    ("db:/", "mount spec (cannot mount over /)"),
    ("db:/x:rw,ro", "mount spec (ro and rw)"),
    ("db:/x:exotic", "mount spec (unknown option 'exotic')"),
])
def test_bad_volume_specs(text, reason):
    with pytest.raises(BadReference) as e:
        parse_volume_spec(text)
    assert str(e.value) == f"invalid {reason}: {text!r}"
    with pytest.raises(BadReference) as e:
        parse_volume_spec("../x:/x")
    assert str(e.value) == "invalid volume name: '../x'"


def test_tmpfs_specs():
    assert parse_tmpfs_spec("/tmp:size=64m,mode=1777") == \
        MountSpec("tmpfs", None, "/tmp", ("size=64m", "mode=1777"))
    with pytest.raises(BadReference) as e:
        parse_tmpfs_spec("/tmp:size=lots")
    assert str(e.value) == "invalid tmpfs spec (unknown option 'size=lots'): '/tmp:size=lots'"


def test_records_round_trip_and_old_containers_load():
    v = Volume(name="db", created=1.0, labels=(("a", "1"), ("b", "2")), anonymous=True)
    assert decode(Volume, encode(v)) == v
    assert json.loads(encode(v))["labels"] == {"a": "1", "b": "2"}
    c = Container(id="4" * 64, name="c", image="3" * 64, layers=(), driver="vfs",
                  created=1.0, mounts=(MountSpec("volume", "db", "/db", ("ro",)),
                                       MountSpec("tmpfs", None, "/tmp")))
    assert decode(Container, encode(c)) == c
    doc = json.loads(encode(c))
    del doc["mounts"]                       # a record written before volumes existed
    assert decode(Container, json.dumps(doc).encode()).mounts == ()


@pytest.fixture
def store(store_env, tmp_path):
    s = store_env.open()
    s.import_path(str(make_tar(tmp_path / "l.tar", [file("etc/motd", "hi\n")])), name="img")
    return s


def test_volume_lifecycle(store, tmp_path):
    v = store.volume_create("data", {"team": "web"})
    assert v.labels == (("team", "web"),) and not v.anonymous
    data = Path(store.volume_inspect("data")["mountpoint"])
    assert data == Path(store.paths.root, "volumes", "data", "_data") and data.is_dir()
    with pytest.raises(NameInUse) as e:
        store.volume_create("data")
    assert str(e.value) == "name data is already used by a volume"
    (data / "kept").write_text("x")
    unnamed = store.volume_create()
    assert len(unnamed.name) == 64
    assert [x.name for x in store.list_volumes()] == ["data", unnamed.name]
    assert store.volume_rm(unnamed.name) == [f"removed volume {unnamed.name}"]
    with pytest.raises(VolumeUnknown) as e:
        store.volume_rm(unnamed.name)
    assert str(e.value) == f"volume not known: {unnamed.name}"


def test_create_records_mounts_and_makes_volumes(store, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    c = store.create("img", name="c", volumes=["db:/var/lib/db", "/cache", f"{host}:/h:ro"],
                     tmpfs=["/tmp:size=1m"])
    kinds = [(m.type, m.destination) for m in c.mounts]
    assert kinds == [("volume", "/var/lib/db"), ("volume", "/cache"), ("bind", "/h"),
                     ("tmpfs", "/tmp")]
    anon = c.mounts[1].source
    assert store.volume("db").anonymous is False and store.volume(anon).anonymous is True
    assert store.volume_inspect("db")["containers"] == ["c"]
    info = store.inspect("c")["mounts"]
    assert info[0]["path"] == store.volumes.data_dir("db")
    with pytest.raises(UsageError) as e:
        store.create("img", volumes=["/nonexistent/path:/x"])
    assert str(e.value) == "bind source /nonexistent/path does not exist"
    with pytest.raises(UsageError) as e:
        store.create("img", volumes=["a:/x"], tmpfs=["/x"])
    assert str(e.value) == "two mounts at /x"
    assert {v.name for v in store.list_volumes()} == {"db", anon}    # nothing half-made


def test_rm_refuses_a_used_volume_and_data_outlives_containers(store):
    store.create("img", name="c1", volumes=["db:/db"])
    store.create("img", name="c2", volumes=["db:/db"])
    Path(store.volumes.data_dir("db"), "row").write_text("1")
    with pytest.raises(VolumeInUse) as e:
        store.volume_rm("db")
    assert str(e.value) == ("volume db is in use by container(s) c1, c2; "
                            "remove them first or use -f")
    store.rm("c1")
    store.rm("c2", volumes=True)                 # a named volume stays with rm -v
    assert Path(store.volumes.data_dir("db"), "row").read_text() == "1"
    store.create("img", name="c3", volumes=["db:/db"])
    assert store.volume_rm("db", force=True) == ["removed container c3", "removed volume db"]
    assert store.list_containers() == [] and store.list_volumes() == []


def test_rm_v_removes_anonymous_volumes_no_one_else_uses(store):
    c = store.create("img", name="c", volumes=["/a"])
    anon = c.mounts[0].source
    store.create("img", name="d", volumes=[f"{anon}:/shared"])
    store.rm("c", volumes=True)
    assert store.volume(anon)                    # d still uses it
    store.rm("d", volumes=True)
    assert store.list_volumes() == []
    assert os.listdir(store.paths.volumes) == []
